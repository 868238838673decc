"""TFLite's QuantizationDebugger run on a Keras model: per-layer statistics, suspects, selective quantization."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcore import defaults
from qcore.inputs.data import check_fits
from qcore.lab import convert as qconvert
from qcore.lab.keras_bridge import check_scope_names
from qcore.qtyping import (
    Dataset,
    DebugResult,
    LayerStat,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    SelectiveResult,
    VariantKind,
    no_progress,
)
from qcore.recipes import get_recipe
from qcore.store import Store, sha256_bytes
from qcore.tflite import litert_io
from qcore.tflite.evaluate import evaluate_tflite

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = defaults.CALIBRATION_SAMPLES
DEFAULT_DEBUG_SAMPLES = defaults.DEBUG_SAMPLES
DEFAULT_RECIPE = defaults.DEBUG_RECIPE
# 004_*: rmse/scale of a well-quantized tensor is 1/sqrt(12) ≈ 0.289; well above it is suspect
DEFAULT_THRESHOLD = 0.7
# 004_*'s "range": an int8 tensor spans 255 steps of its scale
INT8_STEPS = 255.0
# the debugger names its statistics columns like this, in this order, before any extra metric
BASE_COLUMNS = ("op_name", "tensor_idx", "num_elements", "stddev", "mean_error", "max_abs_error",
                "mean_squared_error")


@dataclass(frozen=True)
class LayerMetric:
    """An extra per-layer metric the user can pick.

    `kind` is "diff" (a function of float - dequantized values, the debugger's
    layer_debug_metrics) or "direct" (of float values, quantized values, scale, zero point:
    layer_direct_compare_metrics).
    """

    name: str
    kind: str
    fn: Callable[..., float]
    summary: str


def _mean_abs_error(diff: np.ndarray) -> float:
    return float(np.mean(np.abs(diff)))


def _correlation(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
    fv = np.asarray(f, dtype=np.float64).ravel()
    qv = (np.asarray(q, dtype=np.float64).ravel() - float(zero_point)) * float(scale)
    if fv.size < 2 or np.std(fv) == 0.0 or np.std(qv) == 0.0:
        return float("nan")  # correlation of a constant is undefined; the debugger averages with nanmean
    return float(np.corrcoef(fv, qv)[0, 1])


LAYER_METRICS: dict[str, LayerMetric] = {
    m.name: m
    for m in (
        LayerMetric("mean_abs_error", "diff", _mean_abs_error, "mean |float - dequantized| of the layer output"),
        LayerMetric("correlation", "direct", _correlation, "Pearson correlation of float and dequantized output"),
    )
}


def _argmax_agreement(f: Sequence[np.ndarray], q: Sequence[np.ndarray]) -> float:
    return float(np.mean(np.argmax(f[0], axis=-1) == np.argmax(q[0], axis=-1)))


def _output_mse(f: Sequence[np.ndarray], q: Sequence[np.ndarray]) -> float:
    return float(np.mean((np.asarray(f[0], np.float64) - np.asarray(q[0], np.float64)) ** 2))


# model-level metrics, always on: the quantized debug model's final outputs against the float model's
MODEL_METRICS: dict[str, Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float]] = {
    "argmax_agreement": _argmax_agreement,
    "output_mse": _output_mse,
}


@dataclass(frozen=True)
class Calibrated:
    """A model calibrated once, ready to be quantized with any denylist (seed 004, last section)."""

    model: bytes
    disable_per_channel: bool
    recipe: str
    op_outputs: dict[str, str]  # tensor name → op name, for the ops a denylist can name


def check_recipe(recipe: Recipe | str) -> Recipe:
    """The recipe the debugger can run: int8 activations with calibration data.

    Raises:
        QlabError: for 16x8 (the debugger silently treats it as int8), float and dynamic recipes,
            or an unknown name.
    """
    try:
        rec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    except ValueError as exc:
        raise QlabError(str(exc)) from None
    if any("INT16" in ops for ops in rec.supported_ops):
        raise QlabError(
            f"recipe {rec.name}: the quantization debugger only supports int8 activations and would silently "
            "debug an int8 model instead of 16x8; compare a 16x8 .tflite with the float one with "
            "`qlab compare-tensors`"
        )
    if not (rec.optimize and rec.representative):
        raise QlabError(
            f"recipe {rec.name}: the quantization debugger needs full-integer quantization with calibration "
            "data; use int8-fallback, int8, uint8 or a per-tensor variant"
        )
    return rec


def calibrate(model: LoadedModel, dataset: Dataset, *, recipe: Recipe | str = DEFAULT_RECIPE,
              calibration_samples: int = DEFAULT_CALIBRATION) -> Calibrated:
    """Runs the converter's calibration only (no quantization yet) on the first N training samples.

    Raises:
        QlabError: for a recipe the debugger cannot take, a layer name TensorFlow cannot scope,
            no calibration data, or a converter failure.
    """
    rec = check_recipe(recipe)
    if calibration_samples < 1:
        raise QlabError(f"calibration samples must be at least 1, got {calibration_samples}")
    check_scope_names(model.keras_model)
    calibration = dataset.calibration(calibration_samples)
    converter = qconvert.make_converter(model)
    qconvert.apply_recipe(converter, rec, calibration)
    # what QuantizationDebugger(converter=...) sets: calibrate, and leave quantizing to mlir_quantize
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001
    try:
        calibrated = bytes(converter.convert())
    except Exception as exc:  # ConverterError, ValueError from tracing
        raise QlabError(f"cannot calibrate model {model.name!r}: {_first_line(exc)}") from None
    it = litert_io.make_interpreter(calibrated)
    # only float outputs can be quantized, so only they can be denylisted (not shape arithmetic)
    names = {int(t["index"]): str(t["name"]) for t in it.get_tensor_details() if np.dtype(t["dtype"]).kind == "f"}
    op_outputs = {names[int(i)]: str(op["op_name"]) for op in it._get_ops_details()  # noqa: SLF001
                  for i in op["outputs"] if int(i) in names}
    return Calibrated(calibrated, bool(getattr(converter, "_experimental_disable_per_channel", False)),
                      rec.name, op_outputs)


def check_denylists(cal: Calibrated, nodes: Sequence[str], ops: Sequence[str]) -> None:
    """The converter ignores names it does not know; qlab refuses them instead.

    Raises:
        QlabError: naming the unknown node or op and listing what the model has.
    """
    for node in nodes:
        if node not in cal.op_outputs:
            known = ", ".join(repr(n) for n in list(cal.op_outputs)[:8])
            raise QlabError(
                f"denylisted node {node!r} is not an op output of this model; nodes are the debugger's "
                f"tensor_name values, e.g. {known}"
            )
    model_ops = sorted(set(cal.op_outputs.values()))
    for op in ops:
        if op not in model_ops:
            raise QlabError(f"denylisted op {op!r} does not occur in this model; its ops are {', '.join(model_ops)}")


def quantize_calibrated(cal: Calibrated, *, denylisted_nodes: Sequence[str] = (),
                        denylisted_ops: Sequence[str] = (), debug: bool = False,
                        whole_model: bool = False) -> bytes:
    """Quantizes a calibrated model, keeping the denylisted nodes/ops in float.

    Args:
        debug: add the debugger's NumericVerify ops.
        whole_model: with debug, run float and quantized paths apart (errors propagate) instead
            of layer by layer.
    """
    from tensorflow.lite.python import convert as tfl_convert

    try:
        return bytes(tfl_convert.mlir_quantize(
            cal.model,
            disable_per_channel=cal.disable_per_channel,
            enable_numeric_verify=debug,
            enable_whole_model_verify=whole_model,
            denylisted_ops=list(denylisted_ops) or None,
            denylisted_nodes=list(denylisted_nodes) or None,
        ))
    except Exception as exc:
        raise QlabError(f"the quantizer failed: {_first_line(exc)}") from None


def float_ops(model: bytes) -> set[str]:
    """Names of op outputs that are computed in float (QUANTIZE/DEQUANTIZE excluded)."""
    it = litert_io.make_interpreter(model)
    details = {int(t["index"]): t for t in it.get_tensor_details()}
    out: set[str] = set()
    for op in it._get_ops_details():  # noqa: SLF001
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for i in op["outputs"]:
            d = details.get(int(i))
            if d is not None and np.dtype(d["dtype"]).kind == "f":
                out.add(str(d["name"]))
    return out


def suspects(stats: Sequence[LayerStat], threshold: float = DEFAULT_THRESHOLD, first_k: int = 0) -> list[str]:
    """Tensor names worth keeping in float: rmse/scale above the threshold, plus the first K layers (004_*).

    Returns:
        Names in layer order, without repeats.
    """
    chosen = {s.tensor_name for s in stats if s.rmse_scale > threshold}
    chosen.update(s.tensor_name for s in list(stats)[: max(0, first_k)])
    out: list[str] = []
    for s in stats:
        if s.tensor_name in chosen and s.tensor_name not in out:
            out.append(s.tensor_name)
    return out


def _layer_stat(row: dict[str, str], extra_names: Sequence[str]) -> LayerStat:
    def num(key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", None) else float("nan")

    scale, mse = num("scale"), num("mean_squared_error")
    return LayerStat(
        op_name=row["op_name"],
        tensor_idx=int(row["tensor_idx"]),
        tensor_name=row["tensor_name"],
        num_elements=num("num_elements"),
        stddev=num("stddev"),
        mean_error=num("mean_error"),
        max_abs_error=num("max_abs_error"),
        mean_squared_error=mse,
        scale=scale,
        zero_point=num("zero_point"),
        range=INT8_STEPS * scale,
        rmse_scale=math.sqrt(mse) / scale if scale > 0 and mse >= 0 else float("nan"),
        extra={k: num(k) for k in extra_names},
    )


def stats_csv(result: DebugResult) -> str:
    """The debugger's own CSV (its columns, its order) plus `range` and `rmse_scale`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*result.columns, "range", "rmse_scale"])
    for s in result.stats:
        values = {"op_name": s.op_name, "tensor_idx": s.tensor_idx, "num_elements": s.num_elements,
                  "stddev": s.stddev, "mean_error": s.mean_error, "max_abs_error": s.max_abs_error,
                  "mean_squared_error": s.mean_squared_error, "scale": s.scale, "zero_point": s.zero_point,
                  "tensor_name": s.tensor_name, **s.extra}
        writer.writerow([_fmt(c, values.get(c, "")) for c in result.columns]
                        + [_fmt("range", s.range), _fmt("rmse_scale", s.rmse_scale)])
    return buf.getvalue()


def _fmt(column: str, value: Any) -> str:
    # zero points are integers in the debugger's dump; everything else round-trips through repr
    if column == "zero_point" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def run_debugger(
    model: LoadedModel,
    dataset: Dataset,
    *,
    recipe: Recipe | str = DEFAULT_RECIPE,
    calibration_samples: int = DEFAULT_CALIBRATION,
    debug_samples: int = DEFAULT_DEBUG_SAMPLES,
    extra_metrics: Sequence[str] = (),
    whole_model: bool = False,
    denylisted_nodes: Sequence[str] = (),
    denylisted_ops: Sequence[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    first_k: int = 0,
    store: Store | None = None,
    selective_out: str | Path | None = None,
    calibrated: Calibrated | None = None,
    progress: Progress = no_progress,
    engine: str = "tf",
    model_explorer_out: str | Path | None = None,
) -> DebugResult:
    """Runs TFLite's QuantizationDebugger and, with a denylist, builds the selective model.

    With `engine="aeq"` the per-layer error comes from AI Edge Quantizer's validation instead
    (`qcore.engines.aeq.run_debug`: MSE, SNR, cosine per op output, same table, labelled "aeq");
    `extra_metrics`, `whole_model` and `calibrated` are TF-only, `model_explorer_out` AEQ-only.

    Calibration uses the first N training samples; the debug set is the first M test samples,
    one sample per step. Every per-layer row is kept (and stored), with `range = 255*scale` and
    `rmse_scale = sqrt(mse)/scale`.

    Args:
        model, dataset: what to debug (checked to fit first).
        recipe: an int8 recipe; 16x8 is refused.
        extra_metrics: names from LAYER_METRICS.
        whole_model: verify the whole model (float and quantized paths apart) instead of layer by layer.
        denylisted_nodes, denylisted_ops: keep these in float in both the debug model and the
            selective model; with either set, the selective model is built, evaluated and stored.
        threshold, first_k: how suspects are chosen (see `suspects`).
        store: where to record the run (and the selective variant); None for a dry run.
        selective_out: also write the selective .tflite here.
        calibrated: a `calibrate` result to reuse (it fixes recipe and calibration samples).
        progress: called after each step.

    Returns:
        The statistics, model metrics, suspects and the selective model if one was built.

    Raises:
        QlabError: for 16x8 or non-int8 recipes, unknown metrics or denylist entries, layer names
            TensorFlow cannot scope, a model that has no layer the debugger can verify, no samples.
    """
    if engine == "aeq":
        from qcore.engines import aeq

        if extra_metrics or whole_model:
            raise QlabError("--metrics and --whole-model are options of TF's debugger; AEQ's validation always "
                            "compares whole models and reports MSE, SNR and cosine")
        return aeq.run_debug(
            model, dataset, recipe=recipe, calibration_samples=calibration_samples, debug_samples=debug_samples,
            denylisted_nodes=denylisted_nodes, denylisted_ops=denylisted_ops, threshold=threshold,
            first_k=first_k, store=store, selective_out=selective_out, model_explorer_out=model_explorer_out,
            progress=progress,
        )
    if engine != "tf":
        raise QlabError(f"unknown engine {engine!r}; known engines: tf, aeq")
    if model_explorer_out is not None:
        raise QlabError("Model Explorer export comes from AI Edge Quantizer's comparison; use --engine aeq")
    unknown = [m for m in extra_metrics if m not in LAYER_METRICS]
    if unknown:
        raise QlabError(f"unknown layer metric {unknown[0]!r}; known: {', '.join(LAYER_METRICS)}")
    if debug_samples < 1:
        raise QlabError(f"debug samples must be at least 1, got {debug_samples}")
    if not math.isfinite(threshold):
        raise QlabError(f"threshold must be a finite number, got {threshold}")
    check_fits(model, dataset)
    debug_x = dataset.preprocess(dataset.x_test[:debug_samples])
    if len(debug_x) == 0:
        raise QlabError(f"data {dataset.name!r} has no test samples to debug with")

    progress(0.05, f"calibrating on {calibration_samples} training samples")
    cal = calibrated or calibrate(model, dataset, recipe=recipe, calibration_samples=calibration_samples)
    check_denylists(cal, denylisted_nodes, denylisted_ops)
    progress(0.2, "building the debug model")
    debug_model = quantize_calibrated(cal, denylisted_nodes=denylisted_nodes, denylisted_ops=denylisted_ops,
                                      debug=True, whole_model=whole_model)
    float_model = qconvert.convert(model, "float32", debug_x[:1])
    result_columns, stats, model_metrics = _run(
        debug_model, float_model, debug_x, extra_metrics, model.name, progress, model_metrics=not whole_model
    )
    if whole_model:
        # the whole-model debug graph returns the float path's outputs, so the debugger's own model
        # metrics would compare float with float; measure the real quantized model instead
        quantized = quantize_calibrated(cal, denylisted_nodes=denylisted_nodes, denylisted_ops=denylisted_ops)
        model_metrics = output_metrics(quantized, float_model, debug_x)

    found = suspects(stats, threshold, first_k)
    settings: dict[str, Any] = {
        "recipe": cal.recipe, "calibration_samples": calibration_samples, "debug_samples": len(debug_x),
        "extra_metrics": list(extra_metrics), "whole_model": whole_model, "threshold": threshold,
        "first_k": first_k, "engine": "tf", "denylisted_nodes": list(denylisted_nodes), "denylisted_ops": list(denylisted_ops),
    }
    model_id = dataset_id = None
    if store is not None:
        model_id, dataset_id = qconvert.register(store, model, dataset)
    selective = None
    if denylisted_nodes or denylisted_ops:
        progress(0.85, "building and evaluating the selective model")
        selective = _selective(model, dataset, cal, denylisted_nodes, denylisted_ops, store, model_id,
                               dataset_id, selective_out, calibration_samples)
    run_id = None
    if store is not None and model_id is not None and dataset_id is not None:
        run_id = store.save_debug_run(model_id=model_id, dataset_id=dataset_id, settings=settings,
                                      model_metrics=model_metrics, stats=stats)
    progress(1.0, f"debugged {len(stats)} layers; {len(found)} suspects")
    return DebugResult(
        model=model.name,
        settings=settings,
        columns=result_columns,
        stats=tuple(stats),
        model_metrics=model_metrics,
        suspects=tuple(found),
        selective=selective,
        debug_run_id=run_id,
    )


def _run(
    debug_model: bytes,
    float_model: bytes,
    debug_x: np.ndarray,
    extra_metrics: Sequence[str],
    model_name: str,
    progress: Progress,
    *,
    model_metrics: bool = True,
) -> tuple[tuple[str, ...], list[LayerStat], dict[str, float]]:
    import tensorflow as tf

    diff = {m: LAYER_METRICS[m].fn for m in extra_metrics if LAYER_METRICS[m].kind == "diff"}
    direct = {m: LAYER_METRICS[m].fn for m in extra_metrics if LAYER_METRICS[m].kind == "direct"}
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics=diff or None,
        model_debug_metrics=MODEL_METRICS if model_metrics else None,
        layer_direct_compare_metrics=direct or None,
    )

    def debug_dataset() -> Any:
        for i in range(len(debug_x)):
            yield [debug_x[i : i + 1].astype(np.float32)]

    try:
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model,
            float_model_content=float_model if model_metrics else None,
            debug_dataset=debug_dataset,
            debug_options=options,
        )
    except ValueError as exc:
        if "debug mode" in str(exc):
            raise QlabError(
                f"the debugger cannot put model {model_name!r} in debug mode: no quantized layer is left to "
                "verify (is every op denylisted, or does the model have no op with an int8 kernel?)"
            ) from None
        raise QlabError(f"the debugger refused model {model_name!r}: {_first_line(exc)}") from None
    progress(0.3, f"running the debug model on {len(debug_x)} test samples")
    try:
        debugger.run()
    except (ValueError, RuntimeError) as exc:
        raise QlabError(f"the debugger failed on model {model_name!r}: {_first_line(exc)}") from None
    # the debugger's own dump is the source of truth: same columns, same order, same tensor names
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    reader = csv.DictReader(io.StringIO(dump.getvalue()))
    columns = tuple(reader.fieldnames or ())
    extra_names = [c for c in columns if c not in (*BASE_COLUMNS, "scale", "zero_point", "tensor_name")]
    stats = [_layer_stat(row, extra_names) for row in reader]
    found = {k: float(v) for k, v in (debugger.model_statistics or {}).items()}
    return columns, stats, found


def output_metrics(quantized: bytes, float_model: bytes, x: np.ndarray) -> dict[str, float]:
    """MODEL_METRICS of a quantized model's outputs against the float model's, sample by sample."""
    q, _ = litert_io.run_model(quantized, x, batch_size=1)
    f, _ = litert_io.run_model(float_model, x, batch_size=1)
    return {name: float(np.mean([fn([f[i : i + 1]], [q[i : i + 1]]) for i in range(len(x))]))
            for name, fn in MODEL_METRICS.items()}


def _selective(
    model: LoadedModel,
    dataset: Dataset,
    cal: Calibrated,
    nodes: Sequence[str],
    ops: Sequence[str],
    store: Store | None,
    model_id: int | None,
    dataset_id: int | None,
    out: str | Path | None,
    calibration_samples: int,
) -> SelectiveResult:
    tflite = quantize_calibrated(cal, denylisted_nodes=nodes, denylisted_ops=ops)
    reference = qconvert.keras_predict(model, dataset.test_inputs())
    ev = evaluate_tflite(tflite, dataset, reference)
    kept_float = float_ops(tflite)
    ignored = [n for n in nodes if n not in kept_float]
    if ignored:
        log.warning("the quantizer kept %s quantized (ops that share their neighbours' scale)", ignored)
    sha = sha256_bytes(tflite)
    path = ""
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(tflite)
        path = str(out)
    variant_id = None
    if store is not None and model_id is not None and dataset_id is not None:
        settings = {"denylisted_nodes": list(nodes), "denylisted_ops": list(ops), "recipe": cal.recipe,
                    "calibration_samples": calibration_samples, "ignored_nodes": ignored}
        name = _free_name(store, model_id, dataset_id, selective_name(cal.recipe, nodes, ops), settings)
        variant_id = store.save_variant(
            model_id=model_id, dataset_id=dataset_id, name=name, kind=VariantKind.SELECTIVE, recipe=cal.recipe,
            settings=settings, tflite=tflite, input_dtype=ev.input_dtype, output_dtype=ev.output_dtype,
            evaluation=ev,
        )
        path = path or str(store.blob_path(sha))
    return SelectiveResult(
        denylisted_nodes=tuple(nodes),
        denylisted_ops=tuple(ops),
        evaluation=ev,
        size_bytes=len(tflite),
        path=path,
        sha256=sha,
        variant_id=variant_id,
        ignored_nodes=tuple(ignored),
    )


def selective_name(recipe: str, nodes: Sequence[str], ops: Sequence[str]) -> str:
    """What a variant with layers kept in float is called: "int8 + 4 float layers (+ float ADD)"."""
    parts = [recipe]
    if nodes:
        parts.append(f"{len(nodes)} float layer{'s' if len(nodes) != 1 else ''}")
    if ops:
        parts.append("float " + ", ".join(sorted(ops)))
    return " + ".join(parts)


def _free_name(store: Store, model_id: int, dataset_id: int, name: str, settings: dict[str, Any]) -> str:
    """`name`, unless a variant of that name keeps other layers float: then `name` with a short tag.

    The store decides (`Store.free_variant_name`), so a worker's journal asks the owner at write time.
    """
    return str(store.free_variant_name(model_id, dataset_id, name, settings))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
