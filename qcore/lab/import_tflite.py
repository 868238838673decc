"""Bring your own .tflite: a file made elsewhere becomes a variant of a tflite-only model.

`analyze` reads, inspects, runs and scores the file and returns a value (the model record, the
variant, the float reference as a variant of its own); the owner's `qcore.lab.publish` records it.
A float reference `.tflite`, when given, plays the role a Keras model plays for converted
variants: its accuracy is the model's float accuracy and its outputs are what agreement (or,
for outputs that are not class scores, MSE and cosine) is measured against.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from qcore.qtyping import (
    Dataset,
    Evaluation,
    Inspection,
    ModelRecord,
    Progress,
    QlabError,
    Reference,
    Scoring,
    TfliteImport,
    VariantKind,
    no_progress,
)
from qcore.tflite import litert_io
from qcore.tflite.evaluate import evaluate_against_reference, evaluate_outputs, scoring_for
from qcore.tflite.variant import built

log = logging.getLogger(__name__)

# a TFLite flatbuffer carries this file identifier at bytes 4..8; checked here without loading
# LiteRT, so a web process can refuse a wrong upload before it queues a job
TFLITE_IDENTIFIER = b"TFL3"
# models.format of a model known only by its .tflite files (also what imported report bundles use)
TFLITE_ONLY_FORMAT = "tflite"
# the float reference's variant name is its file's stem plus this
REFERENCE_SUFFIX = " (reference)"
# an imported file was made by no engine of qlab's; its variants say so
IMPORTED_ENGINE = "imported"


def check_tflite_bytes(data: bytes, label: str) -> None:
    """The cheap checks of an uploaded .tflite: not empty, the TFL3 identifier. No LiteRT needed.

    Raises:
        QlabError: naming `label` (the file) and what is wrong.
    """
    if not data:
        raise QlabError(f"{label}: the file is empty")
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise QlabError(f"{label}: not a TFLite model (no TFL3 identifier at bytes 4-8)")


def inspect_bytes(data: bytes, label: str) -> Inspection:
    """Parses a .tflite (pure Python, never the runtime) with errors that name `label`.

    Raises:
        QlabError: "<label>: not a TFLite model: <reason>" for anything that does not parse.
    """
    from qcore.tflite.inspection import inspect

    check_tflite_bytes(data, label)
    try:
        return inspect(data)
    except QlabError as exc:
        text = str(exc)
        raise QlabError(f"{label}{text[len('model'):]}" if text.startswith("model:") else f"{label}: {text}") from None


def _shape(info: Inspection, index: int) -> tuple[int | None, ...]:
    t = next(t for t in info.tensors if t.index == index)
    # the batch dimension is whatever the file was exported with; qlab resizes it
    return (None, *t.shape[1:]) if t.shape else ()


def _dtype(info: Inspection, index: int) -> str:
    return next(t.dtype for t in info.tensors if t.index == index)


def input_shape(data: bytes, label: str = "model") -> tuple[int | None, ...]:
    """The first input's shape with the batch dimension as None (sizes images of a dataset)."""
    info = inspect_bytes(data, label)
    if not info.inputs:
        raise QlabError(f"{label}: the model has no inputs")
    return _shape(info, info.inputs[0])


def analyze(
    model: bytes,
    *,
    label: str,
    name: str = "",
    reference: bytes | None = None,
    reference_label: str = "",
    dataset: Dataset | None = None,
    progress: Progress = no_progress,
) -> TfliteImport:
    """Inspects a .tflite, and with data runs and scores it (and its float reference). Writes nothing.

    Args:
        model: the .tflite's bytes.
        label: the file name users know it by (errors name it; its stem names the variant).
        name: the model's name (default: the reference's stem, else the file's).
        reference: a float .tflite of the same network, or None.
        dataset: labelled data with its input preprocessing, or None (then nothing is evaluated).
        progress: called after each step.

    Returns:
        A TfliteImport without store ids. Custom ops that LiteRT here cannot resolve make the file
        inspect-only: `refusal` says why, and nothing is evaluated.

    Raises:
        QlabError: naming the file for anything that is not a TFLite model, a reference whose
            input differs from the model's, or data that does not fit the model.
    """
    progress(0.0, f"inspecting {label}")
    info = inspect_bytes(model, label)
    if not info.inputs or not info.outputs:
        raise QlabError(f"{label}: the model has no {'inputs' if not info.inputs else 'outputs'}")
    in_shape = _shape(info, info.inputs[0])
    out_shapes = tuple(_shape(info, i) for i in info.outputs)
    custom = litert_io.custom_ops(model)
    refusal = _why_not_runnable(model, label)
    notes: list[str] = []
    if refusal:
        notes.append(refusal)

    ref_label = reference_label or "reference"
    ref_refusal = ""
    if reference is not None:
        ref_info = inspect_bytes(reference, ref_label)
        ref_in = _shape(ref_info, ref_info.inputs[0]) if ref_info.inputs else ()
        if ref_in[1:] != in_shape[1:] or len(ref_info.inputs) != len(info.inputs):
            raise QlabError(f"{ref_label}: the reference's input {list(ref_in[1:])} differs from {label}'s "
                            f"{list(in_shape[1:])}; a reference must be the same network in float")
        ref_outs = tuple(_shape(ref_info, i)[1:] for i in ref_info.outputs)
        if ref_outs != tuple(s[1:] for s in out_shapes):
            raise QlabError(f"{ref_label}: the reference's outputs {[list(s) for s in ref_outs]} differ from "
                            f"{label}'s {[list(s[1:]) for s in out_shapes]}; a reference must be the same network "
                            "in float")
        ref_refusal = _why_not_runnable(reference, ref_label)
        if ref_refusal:
            notes.append(ref_refusal)

    scoring = scoring_for(out_shapes, dataset.num_classes if dataset is not None else None)
    evaluation: Evaluation | None = None
    ref_evaluation: Evaluation | None = None
    if dataset is None:
        notes.append("no data given: not evaluated; choose a dataset and its input preprocessing to measure it")
    elif len(info.inputs) != 1:
        notes.append(f"not evaluated: qlab evaluates single-input models; this one has {len(info.inputs)} inputs")
    elif not refusal:
        x, y = dataset.test_inputs(), np.asarray(dataset.y_test)
        progress(0.2, f"running {len(x)} test samples through {label}")
        outputs, batched = litert_io.run_outputs(model, x)
        ref_outputs = None
        if reference is not None and not ref_refusal:
            progress(0.55, f"running {len(x)} test samples through {ref_label}")
            ref_outputs, _ = litert_io.run_outputs(reference, x)
        note = "" if batched else "the model could not be resized to a batch; evaluated one sample at a time"
        in_dtype, out_dtype = _dtype(info, info.inputs[0]), _dtype(info, info.outputs[0])
        progress(0.9, "scoring")
        if scoring == Scoring.CLASSES:
            evaluation = evaluate_outputs(
                outputs[0], y, num_classes=dataset.num_classes,
                reference=ref_outputs[0] if ref_outputs is not None else None, batched=batched, note=note,
                size_bytes=len(model), input_dtype=in_dtype, output_dtype=out_dtype,
            )
            if ref_outputs is not None and reference is not None:
                ref_evaluation = evaluate_outputs(ref_outputs[0], y, num_classes=dataset.num_classes,
                                                  size_bytes=len(reference), note="float reference")
        elif ref_outputs is not None:
            evaluation = evaluate_against_reference(
                outputs, ref_outputs, batched=batched, note=note or "scored against the float reference's outputs",
                size_bytes=len(model), input_dtype=in_dtype, output_dtype=out_dtype,
            )
        else:
            notes.append(f"{_why_outputs(out_shapes, dataset)}, and there is no runnable float reference to "
                         "compare them with: not scored (give --reference / a reference .tflite)")
        if scoring == Scoring.OUTPUTS and evaluation is not None:
            notes.append(f"{_why_outputs(out_shapes, dataset)}: scored by MSE and cosine against the reference, "
                         "not by top-1")
    progress(1.0, "analysed")
    stem = Path(label).stem or "model"
    anchor = reference if reference is not None else model
    record = ModelRecord(
        name=name.strip() or (Path(ref_label).stem if reference is not None and reference_label else stem),
        format=TFLITE_ONLY_FORMAT, sha256=_sha(anchor), input_shape=in_shape,
        output_shape=out_shapes[0] if out_shapes else (), keras_major=None,
    )
    common = {"scoring": scoring.value, "output_shapes": [list(s) for s in out_shapes]}
    reference_variant = None
    if reference is not None and _sha(reference) != _sha(model):
        reference_variant = built((Path(reference_label).stem or "float") + REFERENCE_SUFFIX, VariantKind.IMPORTED,
                                  None, IMPORTED_ENGINE, reference, evaluation=ref_evaluation,
                                  settings=common | {"source": reference_label, "role": "reference"})
    variant = built(stem, VariantKind.IMPORTED, None, IMPORTED_ENGINE, model, evaluation=evaluation,
                    settings=common | {"source": stem, "reference_sha256": _sha(reference) if reference else None,
                                       "custom_ops": list(custom), "runnable": not refusal, "notes": list(notes)})
    return TfliteImport(
        model=record, variant=variant, reference_variant=reference_variant, input_shape=in_shape,
        output_shapes=out_shapes, verdict=info.verdict, custom_ops=custom, runnable=not refusal, refusal=refusal,
        scoring=scoring.value, notes=tuple(notes),
        reference=Reference(ref_evaluation.accuracy, ref_evaluation.top5, ref_evaluation.n_samples)
        if ref_evaluation is not None else None,
    )


def _why_not_runnable(data: bytes, label: str) -> str:
    try:
        litert_io.check_runnable(data, label)
    except QlabError as exc:
        return str(exc)
    return ""


def _why_outputs(out_shapes: tuple[tuple[int | None, ...], ...], dataset: Dataset) -> str:
    if len(out_shapes) != 1:
        return f"the model has {len(out_shapes)} outputs, not one of class scores"
    shape = out_shapes[0]
    if len(shape) == 2 and shape[-1] is not None and shape[-1] >= 2:
        return f"the labels name {dataset.num_classes} classes but the output has {shape[-1]} values"
    return f"the output of shape {list(shape[1:])} is not one score per class"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
