"""Bring your own .tflite: a file made elsewhere becomes a variant of a tflite-only model.

The import has two halves so that a worker can compute and the store's owner can write:
`analyze` reads, inspects, runs and scores the file (no store), and `save` records the
result (model, optional dataset, the variant, the float reference as a variant of its own).
A float reference `.tflite`, when given, plays the role a Keras model plays for converted
variants: its accuracy is the model's float accuracy and its outputs are what agreement (or,
for outputs that are not class scores, MSE and cosine) is measured against.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qcore.qtyping import (
    Dataset,
    Evaluation,
    Inspection,
    Progress,
    QlabError,
    Scoring,
    TfliteImport,
    VariantKind,
    no_progress,
)

if TYPE_CHECKING:
    from qcore.jobs.contract import ImportTfliteParams
    from qcore.store import Store

log = logging.getLogger(__name__)

# a TFLite flatbuffer carries this file identifier at bytes 4..8; checked here without loading
# LiteRT, so a web process can refuse a wrong upload before it queues a job
TFLITE_IDENTIFIER = b"TFL3"
# models.format of a model known only by its .tflite files (also what imported report bundles use)
TFLITE_ONLY_FORMAT = "tflite"
# the float reference's variant name is its file's stem plus this
REFERENCE_SUFFIX = " (reference)"


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
    from qcore.tflite import litert_io
    from qcore.tflite.evaluate import evaluate_against_reference, evaluate_outputs, scoring_for

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
    return TfliteImport(
        model=name.strip() or (Path(ref_label).stem if reference is not None and reference_label else stem),
        variant=stem,
        sha256=_sha(model),
        size_bytes=len(model),
        input_shape=in_shape,
        output_shapes=out_shapes,
        input_dtype=_dtype(info, info.inputs[0]),
        output_dtype=_dtype(info, info.outputs[0]),
        verdict=info.verdict,
        custom_ops=custom,
        runnable=not refusal,
        refusal=refusal,
        scoring=scoring.value,
        evaluation=evaluation,
        reference_sha256=_sha(reference) if reference is not None else "",
        reference_evaluation=ref_evaluation,
        notes=tuple(notes),
    )


def _why_not_runnable(data: bytes, label: str) -> str:
    from qcore.tflite.litert_io import check_runnable

    try:
        check_runnable(data, label)
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
    from qcore.store import sha256_bytes

    return sha256_bytes(data)


def save(
    store: Store,
    result: TfliteImport,
    model: bytes,
    *,
    reference: bytes | None = None,
    reference_label: str = "",
    dataset: Dataset | None = None,
    dataset_id: int | None = None,
) -> TfliteImport:
    """Records an analysed import: the tflite-only model, the dataset, the variant and its reference.

    The model is identified by its float reference's bytes when there is one (so several
    quantized files of one network share a model), else by the file's own. Saving the same file
    again updates its variant; a new evaluation is added beside the old ones.

    Args:
        dataset_id: the stored dataset `dataset` came from; registered from `dataset` when None.

    Returns:
        `result` with model_id, dataset_id, variant_id and reference_variant_id set.
    """
    from qcore.inputs.data import dataset_sha256

    # only the store's write methods and blob_path are used, so a worker's journal can stand in for it;
    # the anchor's blob is written by save_variant below
    anchor_sha = result.reference_sha256 or result.sha256
    model_id = store.add_model(
        name=result.model, format=TFLITE_ONLY_FORMAT, sha256=anchor_sha, source_path=str(store.blob_path(anchor_sha)),
        input_shape=result.input_shape, output_shape=result.output_shapes[0] if result.output_shapes else (),
        keras_major=None,
    )
    if dataset is not None and dataset_id is None:
        dataset_id = store.add_dataset(
            name=dataset.name, source=dataset.source or dataset.name, sha256=dataset_sha256(dataset),
            input_scale=dataset.input_scale, input_offset=dataset.input_offset, n_train=len(dataset.x_train),
            n_test=len(dataset.x_test), num_classes=dataset.num_classes,
        )
    ref_ev = result.reference_evaluation
    if dataset_id is not None and ref_ev is not None:
        store.set_reference(model_id, dataset_id, ref_ev.accuracy, ref_ev.top5, ref_ev.n_samples)
    common = {"scoring": result.scoring, "output_shapes": [list(s) for s in result.output_shapes]}
    ref_variant_id = None
    if reference is not None and result.reference_sha256 != result.sha256:
        ref_in, ref_out = _io(reference)
        ref_variant_id = store.save_variant(
            model_id=model_id, dataset_id=dataset_id,
            name=(Path(reference_label).stem or "float") + REFERENCE_SUFFIX, kind=VariantKind.IMPORTED.value,
            settings=common | {"source": reference_label, "role": "reference"}, tflite=reference,
            input_dtype=ref_in, output_dtype=ref_out,
            evaluation=ref_ev,
        )
    variant_id = store.save_variant(
        model_id=model_id, dataset_id=dataset_id, name=result.variant, kind=VariantKind.IMPORTED.value,
        settings=common | {"source": result.variant, "reference_sha256": result.reference_sha256 or None,
                           "custom_ops": list(result.custom_ops), "runnable": result.runnable,
                           "notes": list(result.notes)},
        tflite=model, input_dtype=result.input_dtype, output_dtype=result.output_dtype,
        evaluation=result.evaluation, parent_variant_id=ref_variant_id,
    )
    return replace(result, model_id=model_id, dataset_id=dataset_id, variant_id=variant_id,
                   reference_variant_id=ref_variant_id if ref_variant_id is not None else
                   (variant_id if reference is not None else None))


def _io(data: bytes) -> tuple[str, str]:
    info = inspect_bytes(data, "reference")
    return _dtype(info, info.inputs[0]), _dtype(info, info.outputs[0])


def import_tflite(
    store: Store,
    model: bytes,
    *,
    label: str,
    name: str = "",
    reference: bytes | None = None,
    reference_label: str = "",
    dataset: Dataset | None = None,
    dataset_id: int | None = None,
    progress: Progress = no_progress,
) -> TfliteImport:
    """`analyze` then `save`, in one process (the CLI's path).

    Raises:
        QlabError: as `analyze`.
    """
    result = analyze(model, label=label, name=name, reference=reference, reference_label=reference_label,
                     dataset=dataset, progress=progress)
    for note in result.notes:
        log.info("%s: %s", label, note)
    return save(store, result, model, reference=reference, reference_label=reference_label, dataset=dataset,
                dataset_id=dataset_id)


def run_import(
    store: Store,
    params: ImportTfliteParams,
    model: bytes,
    *,
    reference: bytes | None = None,
    dataset: Dataset | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """The `import_tflite` job: analyze, save, and the job's JSON result (NaN as null).

    Args:
        store: the Store, or a worker's journal that records the writes for the owner.
        params: the job's params; `model` and `reference` are the bytes of its files.
        dataset: the data of `params.dataset_id`, loaded by the caller, or None.
    """
    result = analyze(model, label=params.filename, name=params.name, reference=reference,
                     reference_label=params.reference_filename, dataset=dataset, progress=progress)
    saved = save(store, result, model, reference=reference, reference_label=params.reference_filename,
                 dataset=dataset, dataset_id=params.dataset_id)
    ev = saved.evaluation
    return {
        "model_id": saved.model_id, "variant_id": saved.variant_id, "reference_variant_id": saved.reference_variant_id,
        "model": saved.model, "variant": saved.variant, "scoring": saved.scoring, "verdict": saved.verdict,
        "runnable": saved.runnable, "custom_ops": list(saved.custom_ops), "notes": list(saved.notes),
        "accuracy": _finite(ev.accuracy) if ev is not None and ev.scoring == Scoring.CLASSES else None,
        "agreement": _finite(ev.agreement) if ev is not None else None,
        "output_metrics": {k: _finite(v) for k, v in ev.output_metrics.items()} if ev is not None else {},
    }


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a metric that could not be computed is null."""
    return None if value is None or not math.isfinite(value) else float(value)
