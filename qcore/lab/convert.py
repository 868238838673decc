"""Keras → TFLite conversion with the recipe registry, evaluated and stored one transaction per variant."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qcore import defaults
from qcore.inputs.data import check_fits, dataset_sha256
from qcore.inputs.models import file_sha256, predict
from qcore.qtyping import (
    ConvertedVariant,
    ConvertReport,
    Dataset,
    Engine,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    VariantKind,
    VariantStatus,
    no_progress,
)
from qcore.recipes import get_recipe
from qcore.store import Store
from qcore.tflite import metrics
from qcore.tflite.evaluate import evaluate_tflite

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = defaults.CALIBRATION_SAMPLES

# how the converter names an op it cannot quantize or has no kernel for
_OP_PATTERNS = (
    re.compile(r"Quantization not yet supported for op: '?([\w.]+)'?"),
    re.compile(r"'(tfl?\.[\w]+)' op"),
    re.compile(r"op '?(tfl\.[\w]+|[A-Z][A-Z0-9_]+)'? (?:is|has|does)"),
    re.compile(r"failed to legalize operation '([\w.]+)'"),
    re.compile(r"\b([A-Z][A-Z0-9_]{2,})\b.*?(?:not supported|no int8|quantiz)"),
)


def make_converter(model: LoadedModel) -> Any:
    """A TFLiteConverter for the model (Keras 2 and Keras 3 both work with from_keras_model)."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model.keras_model)


def representative(calibration: np.ndarray) -> Any:
    """The seed's representative dataset: one sample per step, in order."""

    def gen() -> Any:
        for i in range(len(calibration)):
            yield [calibration[i : i + 1].astype(np.float32)]

    return gen


def apply_recipe(converter: Any, recipe: Recipe, calibration: np.ndarray) -> None:
    """Sets the converter's options for a recipe.

    Raises:
        QlabError: when the recipe needs calibration data and there is none.
    """
    import tensorflow as tf

    if recipe.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe.supported_types:
        converter.target_spec.supported_types = [tf.as_dtype(t) for t in recipe.supported_types]
    if recipe.representative:
        if len(calibration) == 0:
            raise QlabError(f"recipe {recipe.name} needs calibration samples, but the training split is empty")
        converter.representative_dataset = representative(calibration)
    if recipe.supported_ops:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, name) for name in recipe.supported_ops]
    if recipe.inference_input_type:
        converter.inference_input_type = tf.as_dtype(recipe.inference_input_type)
    if recipe.inference_output_type:
        converter.inference_output_type = tf.as_dtype(recipe.inference_output_type)
    if not recipe.per_channel:
        # the public API has no switch for this; it is the converter's documented experimental flag
        converter._experimental_disable_per_channel = True


def refused_ops(message: str) -> list[str]:
    """The op names a converter error message blames, in order, without repeats."""
    found: list[str] = []
    for pattern in _OP_PATTERNS:
        for m in pattern.finditer(message):
            name = m.group(1)
            if name not in found and name not in ("TFLITE_BUILTINS", "TFLITE_BUILTINS_INT8", "INT8"):
                found.append(name)
    return found


def convert(model: LoadedModel, recipe: Recipe | str, calibration: np.ndarray) -> bytes:
    """Converts a Keras model with one recipe.

    Returns:
        The .tflite flatbuffer.

    Raises:
        QlabError: when the converter refuses; for integer-only recipes it names the op and
            suggests int8-fallback.
    """
    rec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if not rec.tf:
        raise QlabError(f"recipe {rec.name}: the TF converter cannot express it; use --engine aeq")
    converter = make_converter(model)
    apply_recipe(converter, rec, calibration)
    try:
        tflite = bytes(converter.convert())
    except Exception as exc:  # ConverterError, ValueError, RuntimeError from MLIR
        raise _refusal(rec, str(exc)) from None
    if rec.integer_only:
        _check_integer_only(rec, tflite)
    return tflite


def _refusal(rec: Recipe, text: str) -> QlabError:
    ops = refused_ops(text)
    named = ", ".join(ops)
    if ops and ("neither a custom op nor a flex op" in text or "NEEDS_FLEX_OPS" in text):
        return QlabError(
            f"recipe {rec.name}: op {named} has no TFLite builtin kernel at all; no recipe can convert "
            "this model without Select TF ops, which the board runtimes do not ship"
        )
    if rec.integer_only or rec.name == "int16x8":
        what = f"op {named}" if ops else "an op of this model"
        return QlabError(
            f"recipe {rec.name}: the converter has no integer kernel for {what}; "
            "try int8-fallback, which keeps such ops in float"
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown error")
    return QlabError(f"recipe {rec.name}: the converter failed{' on op ' + named if ops else ''}: {first[:300]}")


def _check_integer_only(rec: Recipe, tflite: bytes) -> None:
    """TF 2.21 silently leaves ops without int8 kernels in float between DEQUANTIZE/QUANTIZE,
    even with TFLITE_BUILTINS_INT8 only; an integer-only recipe must not hand that to an NPU."""
    from qcore.tflite.inspection import inspect

    result = inspect(tflite)
    if result.integer_only:
        return
    culprits = [op for op in result.float_ops if op not in ("QUANTIZE", "DEQUANTIZE")] or list(result.float_ops)
    raise QlabError(
        f"recipe {rec.name}: the converter has no integer kernel for op {', '.join(culprits)} and left it "
        "in float; try int8-fallback, which keeps such ops in float on purpose"
    )


def keras_predict(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """The float Keras model's outputs: the reference for agreement."""
    return predict(model, x)


def model_sha256(model: LoadedModel) -> str:
    """The source file's digest, or for an in-memory model, a digest of its config and weights."""
    if model.path and Path(model.path).exists():
        return file_sha256(model.path)
    h = hashlib.sha256(model.name.encode())
    for layer in model.keras_model.layers:  # get_config() fails on some Lambda layers; names are enough
        h.update(f"{type(layer).__name__}:{layer.name}".encode())
    for w in model.keras_model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def register(
    store: Store, model: LoadedModel, dataset: Dataset, reference: np.ndarray | None = None
) -> tuple[int, int]:
    """Records the model and dataset (idempotent), and with `reference` (the float model's test outputs)
    the float accuracy every variant of this pair is compared with.

    Returns:
        (model_id, dataset_id).
    """
    model_id = store.add_model(
        name=model.name,
        format=model.format,
        sha256=model_sha256(model),
        source_path=model.path,
        input_shape=model.input_shape,
        output_shape=model.output_shape,
        keras_major=model.keras_major,
    )
    dataset_id = store.add_dataset(
        name=dataset.name,
        source=dataset.source,
        sha256=dataset_sha256(dataset),
        input_scale=dataset.input_scale,
        input_offset=dataset.input_offset,
        n_train=len(dataset.x_train),
        n_test=len(dataset.x_test),
        num_classes=dataset.num_classes,
    )
    if reference is not None:
        store.set_reference(
            model_id, dataset_id, metrics.accuracy(reference, dataset.y_test),
            metrics.top_k(reference, dataset.y_test), len(dataset.y_test),
        )
    return model_id, dataset_id


def convert_and_evaluate(
    model: LoadedModel,
    dataset: Dataset,
    recipes: list[Recipe],
    *,
    store: Store | None = None,
    out_dir: str | Path | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION,
    progress: Progress = no_progress,
    engine: str = Engine.TF,
    on_variant: Callable[[ConvertedVariant], None] | None = None,
) -> ConvertReport:
    """Converts with every recipe, evaluates each variant, and stores each in one transaction.

    A recipe that fails leaves a `failed` variant with its error; the others still run.

    Args:
        model, dataset: what to convert and evaluate on (checked to fit first).
        recipes: from the registry.
        store: where to record results; None for a dry run.
        out_dir: also write `<out_dir>/<recipe>.tflite`.
        calibration_samples: the first N training samples calibrate integer recipes.
        progress: called after each step.
        engine: "tf" (TFLiteConverter, one conversion per recipe) or "aeq" (AI Edge Quantizer from
            one float32 .tflite, calibrated once); a recipe the engine cannot express fails by name.
        on_variant: called with each recipe's result as soon as it is stored, so a page can show
            the rows that have landed while the others still convert.

    Raises:
        QlabError: when the data does not fit the model, calibration_samples < 1, or an unknown engine.
    """
    engine = check_engine(engine)
    if calibration_samples < 1:
        raise QlabError(f"calibration samples must be at least 1, got {calibration_samples}")
    check_fits(model, dataset)
    steps = len(recipes) + 1
    progress(0.0, "running the float Keras model")
    reference = keras_predict(model, dataset.test_inputs())
    float_acc = metrics.accuracy(reference, dataset.y_test)
    model_id = dataset_id = None
    if store is not None:
        model_id, dataset_id = register(store, model, dataset, reference)
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    calibration = dataset.calibration(calibration_samples)
    if engine == Engine.AEQ:
        from qcore.engines import aeq

        session = aeq.Session(model, calibration)

        def make(rec: Recipe) -> bytes:
            return session.convert(rec)
    else:

        def make(rec: Recipe) -> bytes:
            return convert(model, rec, calibration)

    results: list[ConvertedVariant] = []
    for i, recipe in enumerate(recipes, start=1):
        progress(i / steps, f"converting with {recipe.name} on {engine} ({i}/{len(recipes)})")
        results.append(
            _one_recipe(model, dataset, recipe, make, reference, store, model_id, dataset_id, out,
                        calibration_samples, engine)
        )
        if on_variant is not None:
            on_variant(results[-1])
    progress(1.0, "done")
    return ConvertReport(model.name, float_acc, tuple(results), model_id, dataset_id)


def _one_recipe(
    model: LoadedModel,
    dataset: Dataset,
    recipe: Recipe,
    make: Callable[[Recipe], bytes],
    reference: np.ndarray,
    store: Store | None,
    model_id: int | None,
    dataset_id: int | None,
    out: Path | None,
    calibration_samples: int,
    engine: str,
) -> ConvertedVariant:
    settings = {"recipe": recipe.name, "calibration_samples": calibration_samples, "engine": engine}
    # one variant per (recipe, engine): the TF name stays the plain recipe name, as before
    name = recipe.name if engine == Engine.TF else f"{recipe.name}@{engine}"
    try:
        tflite = make(recipe)
        ev = evaluate_tflite(tflite, dataset, reference)
    except QlabError as exc:
        log.warning("%s", exc)
        variant_id = None
        if store is not None and model_id is not None and dataset_id is not None:
            variant_id = store.save_variant(
                model_id=model_id, dataset_id=dataset_id, name=name, kind=VariantKind.PTQ,
                recipe=recipe.name, settings=settings, status=VariantStatus.FAILED, error=str(exc), engine=engine,
            )
        return ConvertedVariant(recipe.name, VariantStatus.FAILED, error=str(exc), variant_id=variant_id,
                                engine=engine)
    path = ""
    if out is not None:
        target = out / f"{name.replace('@', '-')}.tflite"
        target.write_bytes(tflite)
        path = str(target)
    from qcore.store import sha256_bytes

    variant_id = None
    if store is not None and model_id is not None and dataset_id is not None:
        variant_id = store.save_variant(
            model_id=model_id, dataset_id=dataset_id, name=name, kind=VariantKind.PTQ, recipe=recipe.name,
            settings=settings, tflite=tflite, input_dtype=ev.input_dtype, output_dtype=ev.output_dtype,
            evaluation=ev, engine=engine,
        )
        if not path:
            path = str(store.blob_path(sha256_bytes(tflite)))
    return ConvertedVariant(
        recipe=recipe.name,
        status=VariantStatus.OK,
        path=path,
        sha256=sha256_bytes(tflite),
        size_bytes=len(tflite),
        input_dtype=ev.input_dtype,
        output_dtype=ev.output_dtype,
        evaluation=ev,
        variant_id=variant_id,
        engine=engine,
    )


def check_engine(engine: str) -> str:
    """The engine name if known.

    Raises:
        QlabError: listing the known engines.
    """
    try:
        return Engine(engine)
    except ValueError:
        raise QlabError(f"unknown engine {engine!r}; known engines: {', '.join(e.value for e in Engine)}") from None
