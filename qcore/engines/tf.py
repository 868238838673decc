"""TensorFlow's TFLiteConverter as an engine: one conversion per recipe, QuantizationDebugger, denylists."""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcore import defaults
from qcore.engines.base import INT8_STEPS, NO_OPTIONS, DebugOptions, LayerErrorMetric, LayerErrors
from qcore.inputs.keras_bridge import check_scope_names
from qcore.qtyping import LayerStat, LoadedModel, QlabError, Recipe, first_line
from qcore.recipes import get_recipe
from qcore.tflite import litert_io
from qcore.tflite.compare import MODEL_METRICS, output_metrics
from qcore.tflite.inspection import check_integer_only, output_names
from qcore.tflite.names import named_stats

log = logging.getLogger(__name__)

NAME = "tf"
# recipes the TF converter has no settings for, and what to use instead
_CANNOT = {"weight-only": "the TF converter cannot express it; use --engine aeq"}

# how the converter names an op it cannot quantize or has no kernel for
_OP_PATTERNS = (
    re.compile(r"Quantization not yet supported for op: '?([\w.]+)'?"),
    re.compile(r"'(tfl?\.[\w]+)' op"),
    re.compile(r"op '?(tfl\.[\w]+|[A-Z][A-Z0-9_]+)'? (?:is|has|does)"),
    re.compile(r"failed to legalize operation '([\w.]+)'"),
    re.compile(r"\b([A-Z][A-Z0-9_]{2,})\b.*?(?:not supported|no int8|quantiz)"),
)
# the debugger names its statistics columns like this, in this order, before any extra metric
BASE_COLUMNS = ("op_name", "tensor_idx", "num_elements", "stddev", "mean_error", "max_abs_error",
                "mean_squared_error")

METRIC = LayerErrorMetric(
    name="rmse/scale (layer by layer)",
    words="TFLite's QuantizationDebugger feeds every quantized layer the float model's input and compares "
          "its output with float's, in steps of the layer's scale: rounding alone gives 1/√12 ≈ 0.289.",
    reference=1.0 / math.sqrt(12.0),
    reference_words="0.289 = rounding only",
    threshold=defaults.SUSPECT_THRESHOLD,
    propagates=False,
    engine="TF debugger",
)


@dataclass(frozen=True)
class LayerMetric:
    """An extra per-layer metric of the TF debugger.

    `kind` is "diff" (a function of float - dequantized values, the debugger's layer_debug_metrics)
    or "direct" (of float values, quantized values, scale, zero point: layer_direct_compare_metrics).
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


# ---------------------------------------------------------------- one recipe, one conversion
def make_converter(model: LoadedModel) -> Any:
    """A TFLiteConverter for the model (Keras 2 and Keras 3 both work with from_keras_model)."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model.keras_model)


def representative(calibration: np.ndarray) -> Any:
    """The representative dataset: one sample per step, in order."""

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
    if rec.name in _CANNOT:
        raise QlabError(f"recipe {rec.name}: {_CANNOT[rec.name]}")
    converter = make_converter(model)
    apply_recipe(converter, rec, calibration)
    try:
        tflite = bytes(converter.convert())
    except Exception as exc:  # ConverterError, ValueError, RuntimeError from MLIR
        raise _refusal(rec, str(exc)) from None
    if rec.integer_only:
        check_integer_only(tflite, f"recipe {rec.name}")
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


# ---------------------------------------------------------------- calibrate once, quantize with denylists
@dataclass(frozen=True)
class Calibrated:
    """A model calibrated once, ready to be quantized with any denylist."""

    model: bytes
    disable_per_channel: bool
    recipe: str
    op_outputs: dict[str, str]  # tensor name → op name, for the ops a denylist can name


def check_debug_recipe(recipe: Recipe | str) -> Recipe:
    """The recipe the debugger and denylists can take: int8 activations with calibration data.

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


def calibrate(model: LoadedModel, recipe: Recipe | str, calibration: np.ndarray) -> Calibrated:
    """Runs the converter's calibration only (no quantization yet).

    Raises:
        QlabError: for a recipe the debugger cannot take, a layer name TensorFlow cannot scope,
            no calibration data, or a converter failure.
    """
    rec = check_debug_recipe(recipe)
    if len(calibration) < 1:
        raise QlabError(f"calibration samples must be at least 1, got {len(calibration)}")
    check_scope_names(model.keras_model)
    converter = make_converter(model)
    apply_recipe(converter, rec, calibration)
    # what QuantizationDebugger(converter=...) sets: calibrate, and leave quantizing to mlir_quantize
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001
    try:
        calibrated = bytes(converter.convert())
    except Exception as exc:  # ConverterError, ValueError from tracing
        raise QlabError(f"cannot calibrate model {model.name!r}: {first_line(exc)}") from None
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
        raise QlabError(f"the quantizer failed: {first_line(exc)}") from None


# ---------------------------------------------------------------- the QuantizationDebugger
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


def run_debugger(debug_model: bytes, float_model: bytes, x: np.ndarray, extra_metrics: Sequence[str],
                 model_name: str, *, model_metrics: bool = True
                 ) -> tuple[tuple[str, ...], list[LayerStat], dict[str, float]]:
    """TFLite's QuantizationDebugger on a NumericVerify model; its own CSV dump is the source of truth.

    Raises:
        QlabError: when the debugger cannot put the model in debug mode or fails.
    """
    import tensorflow as tf

    diff = {m: LAYER_METRICS[m].fn for m in extra_metrics if LAYER_METRICS[m].kind == "diff"}
    direct = {m: LAYER_METRICS[m].fn for m in extra_metrics if LAYER_METRICS[m].kind == "direct"}
    # the debugger hands model metrics the list of output arrays; qlab's metrics take the first output
    model_fns = {k: (lambda f, q, fn=fn: fn(f[0], q[0])) for k, fn in MODEL_METRICS.items()}
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics=diff or None,
        model_debug_metrics=model_fns if model_metrics else None,
        layer_direct_compare_metrics=direct or None,
    )

    def debug_dataset() -> Any:
        for i in range(len(x)):
            yield [x[i : i + 1].astype(np.float32)]

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
        raise QlabError(f"the debugger refused model {model_name!r}: {first_line(exc)}") from None
    try:
        debugger.run()
    except (ValueError, RuntimeError) as exc:
        raise QlabError(f"the debugger failed on model {model_name!r}: {first_line(exc)}") from None
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    reader = csv.DictReader(io.StringIO(dump.getvalue()))
    columns = tuple(reader.fieldnames or ())
    extra_names = [c for c in columns if c not in (*BASE_COLUMNS, "scale", "zero_point", "tensor_name")]
    stats = [_layer_stat(row, extra_names) for row in reader]
    found = {k: float(v) for k, v in (debugger.model_statistics or {}).items()}
    return columns, stats, found


# ---------------------------------------------------------------- the engine
class TfSession:
    """One model on the TF converter: full conversions per recipe; calibrated once per recipe for denylists."""

    def __init__(self, model: LoadedModel, calibration: np.ndarray) -> None:
        self.model = model
        self.calibration = calibration
        self._calibrated: dict[str, Calibrated] = {}
        self._float: bytes | None = None

    @property
    def calibration_samples(self) -> int:
        return len(self.calibration)

    def calibrated(self, recipe: Recipe) -> Calibrated:
        """The model calibrated for `recipe` (once per session)."""
        if recipe.name not in self._calibrated:
            self._calibrated[recipe.name] = calibrate(self.model, recipe, self.calibration)
        return self._calibrated[recipe.name]

    def convert(self, recipe: Recipe, keep_float: Sequence[str] = (), keep_ops: Sequence[str] = ()) -> bytes:
        if not keep_float and not keep_ops:
            return convert(self.model, recipe, self.calibration)
        cal = self.calibrated(recipe)
        check_denylists(cal, keep_float, keep_ops)
        return quantize_calibrated(cal, denylisted_nodes=keep_float, denylisted_ops=keep_ops)

    def float_outputs(self, recipe: Recipe) -> dict[str, str]:
        return dict(self.calibrated(recipe).op_outputs)

    def float_model(self, x: np.ndarray) -> bytes:
        """The float32 .tflite the debugger compares with (made once)."""
        if self._float is None:
            self._float = convert(self.model, "float32", x[:1])
        return self._float

    def layer_errors(self, recipe: Recipe, x: np.ndarray, *, keep_float: Sequence[str] = (),
                     keep_ops: Sequence[str] = (), options: DebugOptions = NO_OPTIONS) -> LayerErrors:
        unknown = [m for m in options.extra_metrics if m not in LAYER_METRICS]
        if unknown:
            raise QlabError(f"unknown layer metric {unknown[0]!r}; known: {', '.join(LAYER_METRICS)}")
        cal = self.calibrated(recipe)
        check_denylists(cal, keep_float, keep_ops)
        debug_model = quantize_calibrated(cal, denylisted_nodes=keep_float, denylisted_ops=keep_ops, debug=True,
                                          whole_model=options.whole_model)
        float_model = self.float_model(x)
        columns, stats, model_metrics = run_debugger(debug_model, float_model, x, options.extra_metrics,
                                                     self.model.name, model_metrics=not options.whole_model)
        if options.whole_model:
            # the whole-model debug graph returns the float path's outputs, so the debugger's own model
            # metrics would compare float with float; measure the real quantized model instead
            quantized = quantize_calibrated(cal, denylisted_nodes=keep_float, denylisted_ops=keep_ops)
            model_metrics = output_metrics(quantized, float_model, x)
        # the float model's signature names its outputs as Keras does; the debug model's keeps the same keys
        outputs = {**output_names(debug_model), **output_names(float_model)}
        return LayerErrors(columns=columns, stats=named_stats(stats, outputs), model_metrics=model_metrics,
                           settings={"extra_metrics": list(options.extra_metrics),
                                     "whole_model": options.whole_model})


@dataclass(frozen=True)
class TfEngine:
    """The TF converter: what users deploy with."""

    name: str = NAME
    label: str = "TF converter"
    blurb: str = "what you deploy"
    suffix: str = ""
    metric: LayerErrorMetric = METRIC
    model_explorer: bool = False
    debug_options: frozenset[str] = frozenset({"extra_metrics", "whole_model"})

    def refusal(self, recipe: Recipe) -> str:
        return _CANNOT.get(recipe.name, "")

    def session(self, model: LoadedModel, calibration: np.ndarray) -> TfSession:
        return TfSession(model, calibration)


ENGINE = TfEngine()
