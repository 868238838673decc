"""AI Edge Quantizer as qlab's second engine: every recipe it can express from one float32 .tflite."""

from __future__ import annotations

import contextlib
import enum
import io
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qcore.engines import tf as tf_engine
from qcore.engines.base import INT8_STEPS, NO_OPTIONS, DebugOptions, LayerErrorMetric, LayerErrors
from qcore.inputs.models import model_sha256
from qcore.qtyping import LayerStat, LoadedModel, QlabError, Recipe, first_line
from qcore.recipes import get_recipe
from qcore.tflite import litert_io
from qcore.tflite.compare import output_metrics
from qcore.tflite.inspection import check_integer_only, output_names
from qcore.tflite.names import named_stats

log = logging.getLogger(__name__)

NAME = "aeq"
# AEQ's validation metrics qlab keeps per layer; names are ValidationErrorMetric values
LAYER_METRICS = ("mse", "snr", "cosine_similarity")
# the columns an AEQ layer table shows, in the order of the TF debugger's CSV where they overlap
COLUMNS = ("op_name", "tensor_idx", "num_elements", "mean_squared_error", "scale", "zero_point", "tensor_name",
           "snr", "cosine_similarity")

METRIC = LayerErrorMetric(
    name="rmse/scale (whole model)",
    words="AI Edge Quantizer runs the float and the quantized model whole and compares every op output, in "
          "steps of the output's scale: errors of earlier layers add up, so every layer reads far above "
          "rounding alone (0.289) and only a layer well above this model's own median stands out.",
    reference=1.0 / math.sqrt(12.0),
    reference_words="the model's median layer (errors propagate)",
    # whole-model figures of a healthy network run 10-35 on MobileNetV2: without the model's figures at
    # hand, only a layer far beyond that is worth naming
    threshold=100.0,
    propagates=True,
    engine="AI Edge Quantizer",
)


class AeqMode(enum.StrEnum):
    """How AI Edge Quantizer expresses a recipe."""

    NONE = "none"  # the float32 .tflite as it is
    STATIC = "static"  # weights and activations quantized with calibration data
    DYNAMIC = "dynamic"  # int8 weights, activations quantized at run time
    WEIGHT_ONLY = "weight_only"  # int8 weights dequantized before float math
    FLOAT16 = "float16"  # weights cast to float16


@dataclass(frozen=True)
class AeqSettings:
    """AI Edge Quantizer's settings for one recipe; per-tensor weights follow the recipe's own flag."""

    mode: AeqMode
    activation_bits: int = 8  # STATIC only: 8 or 16
    weight_bits: int = 8


_INT8 = AeqSettings(AeqMode.STATIC)
# recipe name → how AEQ makes it; a recipe missing here is one AEQ cannot express
SETTINGS: dict[str, AeqSettings] = {
    "float32": AeqSettings(AeqMode.NONE),
    "float16": AeqSettings(AeqMode.FLOAT16, weight_bits=16),
    "dynamic": AeqSettings(AeqMode.DYNAMIC),
    "int8-fallback": _INT8,
    "int8": _INT8,
    "uint8": _INT8,
    "int16x8": AeqSettings(AeqMode.STATIC, activation_bits=16),
    "weight-only": AeqSettings(AeqMode.WEIGHT_ONLY),
    "int8-per-tensor": _INT8,
    "uint8-per-tensor": _INT8,
}
# AEQ's calibrator and validator default to 16 threads; this machine is shared, the figures are per engine
THREADS = 2


@dataclass(frozen=True)
class FloatBase:
    """The float32 .tflite every AEQ recipe starts from, and how to feed it."""

    model: bytes
    signature: str
    input_name: str


@dataclass(frozen=True)
class AeqCalibration:
    """AEQ's calibration result (min/max per tensor), reusable for any keep-float list of a recipe."""

    base: FloatBase
    recipe: str
    qsvs: dict[str, Any]
    samples: int


def check_recipe(recipe: Recipe | str) -> Recipe:
    """The recipe if AI Edge Quantizer can express it.

    Raises:
        QlabError: naming a recipe AEQ cannot express, or an unknown name.
    """
    try:
        rec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    except ValueError as exc:
        raise QlabError(str(exc)) from None
    if rec.name not in SETTINGS:
        raise QlabError(f"recipe {rec.name}: AI Edge Quantizer cannot express it; use --engine tf")
    return rec


def settings_of(rec: Recipe) -> AeqSettings:
    """AEQ's settings of a recipe it can express (see `check_recipe`)."""
    return SETTINGS[check_recipe(rec).name]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """AEQ prints tqdm bars and size reports to stdout/stderr; --json must print one document only."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def float_base(model: LoadedModel, sample: np.ndarray, *, integer_io: bool = False) -> FloatBase:
    """Converts the Keras model to float32 .tflite once (per process); every AEQ recipe starts from this file.

    Args:
        sample: one preprocessed input (the float32 recipe needs no calibration; it checks the shape).
        integer_io: the base is for an int8/uint8-I/O recipe. When the model computes shapes from its
            input (a Keras Reshape on a dynamic batch reads SHAPE of the input), LiteRT's interface
            tool would remove the float input that SHAPE reads, so the base is made at batch 1,
            where those shapes are constants.

    Raises:
        QlabError: when the converter refuses the model.
    """
    key = (model_sha256(model), tuple(sample.shape[1:]), integer_io)
    tflite = _FLOAT_FILES.get(key)
    if tflite is None:
        tflite = tf_engine.convert(model, "float32", sample[:1])
        if integer_io and _input_feeds_shape(tflite):
            tflite = _batch_one(model, sample)
        if len(_FLOAT_FILES) >= _FLOAT_CACHE_SIZE:
            _FLOAT_FILES.pop(next(iter(_FLOAT_FILES)))
        _FLOAT_FILES[key] = tflite
    return base_from_tflite(tflite)


# the Keras → float32 conversion is the TF converter's slow part (seconds to minutes); AEQ only needs the file,
# so a process (the CLI, a dashboard worker) makes it once per model and reuses it for every later run
_FLOAT_CACHE_SIZE = 8
_FLOAT_FILES: dict[tuple[str, tuple[int, ...], bool], bytes] = {}


def _input_feeds_shape(tflite: bytes) -> bool:
    it = litert_io.make_interpreter(tflite)
    inputs = {int(d["index"]) for d in it.get_input_details()}
    return any(op["op_name"] == "SHAPE" and inputs & {int(i) for i in op["inputs"]}
               for op in it._get_ops_details())  # noqa: SLF001


def _batch_one(model: LoadedModel, sample: np.ndarray) -> bytes:
    import tensorflow as tf

    net = model.keras_model
    spec = tf.TensorSpec([1, *sample.shape[1:]], tf.float32)
    names = [str(n) for n in getattr(net, "output_names", None) or []]

    def call(x: Any) -> Any:
        # outputs keyed by the Keras output names, so the signature names them as a SavedModel would
        # ("logits", not the concrete function's "output_0") and pages name the output layer by them
        out = net(x, training=False)
        outs = list(out) if isinstance(out, list | tuple) else [out]
        return dict(zip(names, outs, strict=True)) if len(names) == len(outs) == 1 else out

    fn = tf.function(call).get_concrete_function(spec)
    try:
        return bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn], net).convert())
    except Exception as exc:  # ConverterError, ValueError from tracing
        raise QlabError(f"cannot convert model {model.name!r} at batch 1: {first_line(exc)}") from None


def base_from_tflite(tflite: bytes) -> FloatBase:
    """A float32 .tflite made elsewhere as an AEQ starting point.

    Raises:
        QlabError: for a model without a signature or with more than one input.
    """
    it = litert_io.make_interpreter(tflite)
    sigs = it.get_signature_list()
    if not sigs:
        raise QlabError("the float .tflite has no signature; AI Edge Quantizer feeds models through signatures")
    key = next(iter(sigs))
    inputs = list(sigs[key]["inputs"])
    if len(inputs) != 1:
        raise QlabError(f"signature {key!r} has {len(inputs)} inputs; qlab's engines take single-input models")
    return FloatBase(tflite, key, inputs[0])


def _samples(base: FloatBase, x: np.ndarray) -> dict[str, list[dict[str, np.ndarray]]]:
    return {base.signature: [{base.input_name: x[i : i + 1].astype(np.float32)} for i in range(len(x))]}


def _keep_regex(name: str) -> str:
    # AEQ matches an op by its scope: its output tensor names joined with ";" and a trailing ";"
    return "^" + re.escape(name) + ";"


def _quantizer(base: FloatBase, rec: Recipe, keep_float: Sequence[str] = (), keep_ops: Sequence[str] = ()) -> Any:
    from ai_edge_quantizer import qtyping as aqt
    from ai_edge_quantizer import quantizer as aq
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    settings = settings_of(rec)
    q = aq.Quantizer(bytearray(base.model))
    granularity = aqt.QuantGranularity.CHANNELWISE if rec.per_channel else aqt.QuantGranularity.TENSORWISE
    every = aqt.TFLOperationName.ALL_SUPPORTED
    if settings.mode == AeqMode.STATIC:
        q.add_static_config(".*", every, settings.activation_bits, settings.weight_bits, granularity)
        # float graph I/O with QUANTIZE/DEQUANTIZE at the edges, as the TF converter makes it;
        # int8/uint8 I/O is then LiteRT's model-interface tool's job (see `_integer_io`)
        for edge in (aqt.TFLOperationName.INPUT, aqt.TFLOperationName.OUTPUT):
            q.update_quantization_recipe(".*", edge, None, AlgorithmName.NO_QUANTIZE)
    elif settings.mode == AeqMode.DYNAMIC:
        q.add_dynamic_config(".*", every, settings.weight_bits, granularity)
    elif settings.mode == AeqMode.WEIGHT_ONLY:
        q.add_weight_only_config(".*", every, settings.weight_bits, granularity)
    elif settings.mode == AeqMode.FLOAT16:
        q.add_weight_only_config(".*", every, 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    for name in keep_float:
        q.update_quantization_recipe(_keep_regex(name), every, None, AlgorithmName.NO_QUANTIZE)
    for op in keep_ops:
        try:
            op_name = aqt.TFLOperationName(op)
        except ValueError:
            raise QlabError(f"op {op!r} is not one AI Edge Quantizer quantizes, so it is float already") from None
        q.update_quantization_recipe(".*", op_name, None, AlgorithmName.NO_QUANTIZE)
    return q


def calibrate(base: FloatBase, recipe: Recipe | str, calibration: np.ndarray) -> AeqCalibration:
    """Runs AEQ's calibration once (nothing for recipes without activations to calibrate).

    Raises:
        QlabError: for a recipe AEQ cannot express, no calibration data, or a calibrator failure.
    """
    rec = check_recipe(recipe)
    q = _quantizer(base, rec)
    if not q.need_calibration:
        return AeqCalibration(base, rec.name, {}, 0)
    if len(calibration) == 0:
        raise QlabError(f"recipe {rec.name} needs calibration samples, but the training split is empty")
    try:
        with _quiet():
            qsvs = q.calibrate(_samples(base, calibration), num_threads=THREADS)
    except (ValueError, RuntimeError) as exc:
        raise QlabError(f"recipe {rec.name} (engine aeq): calibration failed: {first_line(exc)}") from None
    return AeqCalibration(base, rec.name, dict(qsvs), len(calibration))


def quantize(cal: AeqCalibration, *, recipe: Recipe | str | None = None, keep_float: Sequence[str] = (),
             keep_ops: Sequence[str] = (), integer_only_check: bool = True) -> bytes:
    """Quantizes the float base with the calibrated recipe, keeping the named op outputs in float.

    Integer-only recipes get the recipe's int8/uint8 I/O from LiteRT's model-interface tool.

    Args:
        recipe: another recipe with the same activation bits (reuses the calibration); default cal's.
        keep_float: tensor names (op outputs) whose ops stay float.
        integer_only_check: refuse an integer-only recipe's model that still computes in float
            (off for keep-float models, which are float in places on purpose).

    Raises:
        QlabError: naming the recipe when AEQ or the interface tool fails, or float ops remain.
    """
    rec = check_recipe(recipe or cal.recipe)
    if settings_of(rec).mode == AeqMode.NONE:
        return cal.base.model
    q = _quantizer(cal.base, rec, keep_float, keep_ops)
    try:
        with _quiet():
            out = q.quantize(cal.qsvs or None, enable_progress_report=False).quantized_model
    except (ValueError, RuntimeError, KeyError) as exc:
        raise QlabError(f"recipe {rec.name} (engine aeq): the quantizer failed: {first_line(exc)}") from None
    tflite = bytes(out)
    if rec.inference_input_type or rec.inference_output_type:
        tflite = _integer_io(tflite, rec)
    if rec.integer_only and integer_only_check and not keep_float and not keep_ops:
        check_integer_only(tflite, f"recipe {rec.name} (engine aeq)", "AI Edge Quantizer")
    return tflite


def _integer_io(tflite: bytes, rec: Recipe) -> bytes:
    """int8/uint8 model I/O with LiteRT's model-interface tool (TF's modify_model_io_type)."""
    import tensorflow as tf
    from ai_edge_litert.tools import flatbuffer_utils
    from tensorflow.lite.python.util import modify_model_io_type

    # AEQ stores buffers of 1 KiB and more after the flatbuffer (offset/size), which the interface tool
    # misreads ("Constant buffer specified an out of range offset"); reading with LiteRT's flatbuffer
    # utilities pulls that data back inline, and writing gives the layout the tool expects
    normalized = bytes(flatbuffer_utils.convert_object_to_bytearray(
        flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))))
    try:
        out = bytes(modify_model_io_type(normalized, tf.as_dtype(rec.inference_input_type or "float32"),
                                         tf.as_dtype(rec.inference_output_type or "float32")))
        it = litert_io.make_interpreter(out)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise QlabError(
            f"recipe {rec.name} (engine aeq): LiteRT's model-interface tool cannot give this model "
            f"{rec.inference_input_type} I/O: {first_line(exc)}"
        ) from None
    return out


def convert(model: LoadedModel, recipe: Recipe | str, calibration: np.ndarray,
            base: FloatBase | None = None) -> bytes:
    """One recipe with AEQ, from the model's float32 .tflite (made here unless `base` is given).

    Raises:
        QlabError: naming a recipe AEQ cannot express, or any failure on the way.
    """
    rec = check_recipe(recipe)
    if base is None:
        base = float_base(model, calibration[:1], integer_io=bool(rec.inference_input_type))
    return quantize(calibrate(base, rec, calibration))


class AeqSession:
    """One model's AEQ work: the float base made once (and at batch 1 if an integer-I/O recipe needs
    it), calibration run once per base and activation width, shared by every recipe."""

    def __init__(self, model: LoadedModel, calibration: np.ndarray) -> None:
        self.model = model
        self.calibration = calibration
        self._bases: dict[bool, FloatBase] = {}
        self._cals: dict[tuple[bool, str], AeqCalibration] = {}

    def base(self, integer_io: bool = False) -> FloatBase:
        if integer_io not in self._bases:
            if integer_io and False in self._bases and not _input_feeds_shape(self._bases[False].model):
                self._bases[True] = self._bases[False]
            else:
                self._bases[integer_io] = float_base(self.model, self.calibration[:1], integer_io=integer_io)
        return self._bases[integer_io]

    def calibrated(self, recipe: Recipe | str) -> AeqCalibration:
        rec = check_recipe(recipe)
        settings = settings_of(rec)
        io = bool(rec.inference_input_type)
        # static recipes of one activation width share min/max; other modes need none
        key = (io, f"{settings.mode}:{settings.activation_bits}" if settings.mode == AeqMode.STATIC else rec.name)
        if key not in self._cals:
            self._cals[key] = calibrate(self.base(io), rec, self.calibration)
        return self._cals[key]

    def convert(self, recipe: Recipe | str, keep_float: Sequence[str] = (), keep_ops: Sequence[str] = ()) -> bytes:
        """One recipe's .tflite, keeping `keep_float` op outputs and `keep_ops` op types in float."""
        rec = check_recipe(recipe)
        if keep_float or keep_ops:
            self.check_denylists(keep_float, keep_ops)
        return quantize(self.calibrated(rec), recipe=rec, keep_float=keep_float, keep_ops=keep_ops)

    def check_denylists(self, nodes: Sequence[str], ops: Sequence[str]) -> None:
        """AEQ ignores names it does not know; qlab refuses them instead.

        Raises:
            QlabError: naming the unknown node or op.
        """
        known = self.float_outputs()
        for node in nodes:
            if node not in known:
                examples = ", ".join(repr(n) for n in list(known)[:8])
                raise QlabError(f"denylisted node {node!r} is not an op output of this model; e.g. {examples}")
        model_ops = sorted(set(known.values()))
        for op in ops:
            if op not in model_ops:
                raise QlabError(f"denylisted op {op!r} does not occur in this model; its ops are "
                                f"{', '.join(model_ops)}")

    def layer_errors(self, recipe: Recipe, x: np.ndarray, *, keep_float: Sequence[str] = (),
                     keep_ops: Sequence[str] = (), options: DebugOptions = NO_OPTIONS) -> LayerErrors:
        """Per-layer MSE, SNR and cosine of every op output against the float model (errors propagate).

        Raises:
            QlabError: for a recipe without quantized activations, TF-debugger-only options, unknown
                denylist entries, no samples.
        """
        if options.extra_metrics or options.whole_model:
            raise QlabError("--metrics and --whole-model are options of TF's debugger; AEQ's validation always "
                            "compares whole models and reports MSE, SNR and cosine")
        rec = check_recipe(recipe)
        settings = settings_of(rec)
        if settings.mode != AeqMode.STATIC:
            raise QlabError(f"recipe {rec.name}: per-layer error needs quantized activations; use int8-fallback, "
                            "int8, uint8, a per-tensor variant or int16x8")
        self.check_denylists(keep_float, keep_ops)
        # the comparison needs the float-I/O model of the recipe: same math, inputs fed as float
        compare_rec = get_recipe("int16x8" if settings.activation_bits == 16 else "int8-fallback")
        if not rec.per_channel:
            compare_rec = replace(compare_rec, per_channel=False)
        quantized = quantize(self.calibrated(compare_rec), recipe=compare_rec, keep_float=keep_float,
                             keep_ops=keep_ops)
        base = self.base()
        validation = validate(base, quantized, x)
        # the rows carry the float base's tensor names; its signature names the outputs as Keras does
        return LayerErrors(columns=COLUMNS, stats=named_stats(validation.stats, output_names(base.model)),
                           model_metrics=output_metrics(quantized, base.model, x),
                           settings={"metrics": list(LAYER_METRICS), "whole_model": True},
                           comparison=validation.comparison)

    @property
    def calibration_samples(self) -> int:
        return len(self.calibration)

    def float_outputs(self, recipe: Recipe | None = None) -> dict[str, str]:
        """Tensor name → op name for every float op output of the base: what keep-float can name."""
        it = litert_io.make_interpreter(self.base().model)
        names = {int(t["index"]): str(t["name"]) for t in it.get_tensor_details()
                 if np.dtype(t["dtype"]).kind == "f"}
        return {names[int(i)]: str(op["op_name"]) for op in it._get_ops_details()  # noqa: SLF001
                for i in op["outputs"] if int(i) in names}


# ---------------------------------------------------------------- per-layer error from AEQ's validation


@dataclass(frozen=True)
class Validation:
    """AEQ's per-tensor comparison of a quantized model with its float base, as qlab's layer rows."""

    stats: tuple[LayerStat, ...]
    comparison: Any  # ai_edge_quantizer.model_validator.ComparisonResult, for Model Explorer export


def validate(base: FloatBase, quantized: bytes, x: np.ndarray) -> Validation:
    """Per-layer MSE, SNR and cosine similarity of every op output against the float model.

    Rows are in the quantized model's op order; `rmse_scale = sqrt(mse)/scale` uses the quantized
    output's scale, so it reads like the TF debugger's column (NaN for outputs left in float).

    Raises:
        QlabError: for no samples, or a validator failure.
    """
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    if len(x) == 0:
        raise QlabError("no samples to validate with")
    metrics = [ValidationErrorMetric(m) for m in LAYER_METRICS]
    try:
        with _quiet():
            comparison = _compare(base, quantized, x, metrics)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise QlabError(f"AI Edge Quantizer's validation failed: {first_line(exc)}") from None
    result = comparison.get_signature_comparison_result(base.signature)
    per_tensor = {**result.intermediate_tensors, **result.output_tensors}
    it = litert_io.make_interpreter(quantized)
    details = {int(t["index"]): t for t in it.get_tensor_details()}
    float_idx = {str(t["name"]): int(t["index"])
                 for t in litert_io.make_interpreter(base.model).get_tensor_details()}
    stats: list[LayerStat] = []
    seen: set[str] = set()
    for op in it._get_ops_details():  # noqa: SLF001
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for i in op["outputs"]:
            d = details.get(int(i))
            if d is None:
                continue
            name = str(d["name"])
            values = per_tensor.get(name)
            # shape arithmetic (SHAPE, STRIDED_SLICE on int32) is exact in both models: not a layer to rank
            unquantized_int = np.dtype(d["dtype"]).kind in "iu" and float(d["quantization"][0]) == 0.0
            if values is None or name in seen or unquantized_int:
                continue
            seen.add(name)
            stats.append(_layer_stat(str(op["op_name"]), float_idx.get(name, int(i)), name, d, values))
    return Validation(tuple(stats), comparison)


def _compare(base: FloatBase, quantized: bytes, x: np.ndarray, metrics: Sequence[Any]) -> Any:
    """AEQ's `model_validator.compare_model`, with one interpreter per model for all samples.

    compare_model builds both interpreters again for every sample, which costs more than the
    inference on a real network; the tensors, metric functions and aggregation (mean over samples)
    are AEQ's own, and the result is AEQ's ComparisonResult (so its Model Explorer export works).
    """
    from ai_edge_quantizer.model_validator import ComparisonResult
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tiu
    from ai_edge_quantizer.utils import validation_utils

    fns = [validation_utils.get_validation_func(m) for m in metrics]
    ref = tiu.create_tfl_interpreter(bytes(base.model), num_threads=THREADS, preserve_all_tensors=True)
    tgt = tiu.create_tfl_interpreter(bytes(quantized), num_threads=THREADS, preserve_all_tensors=True)
    ref_sg = tiu.get_signature_main_subgraph_index(ref, base.signature)
    tgt_sg = tiu.get_signature_main_subgraph_index(tgt, base.signature)
    ref_details = tiu.get_tensor_name_to_details_map(ref, ref_sg)
    tgt_details = tiu.get_tensor_name_to_details_map(tgt, tgt_sg)
    names = [n for n, d in ref_details.items()
             if d["dtype"] != np.object_ and np.all(d["shape"]) and n in tgt_details]
    values: dict[str, list[list[float]]] = {n: [] for n in names}
    for i in range(len(x)):
        sample = {base.input_name: x[i : i + 1].astype(np.float32)}
        tiu.invoke_interpreter_signature(ref, sample, base.signature)
        tiu.invoke_interpreter_signature(tgt, sample, base.signature)
        for n in names:
            r = tiu.get_tensor_data(ref, ref_details[n], ref_sg)
            t = tiu.get_tensor_data(tgt, tgt_details[n], tgt_sg)
            values[n].append([float(fn(t, r)) for fn in fns])
    aggregated = {n: {m.value: float(np.mean([v[k] for v in vs])) for k, m in enumerate(metrics)}
                  for n, vs in values.items()}
    comparison = ComparisonResult(bytearray(base.model), bytearray(quantized))
    comparison.add_new_signature_results(list(metrics), aggregated, base.signature)
    return comparison


def _layer_stat(op_name: str, idx: int, name: str, detail: dict[str, Any], values: dict[str, float]) -> LayerStat:
    mse = float(values.get("mse", math.nan))
    scale, zp = detail.get("quantization", (0.0, 0))
    scale = float(scale)
    quantized = np.dtype(detail["dtype"]).kind in "iu" and scale > 0
    return LayerStat(
        op_name=op_name,
        tensor_idx=idx,
        tensor_name=name,
        num_elements=float(np.prod(detail["shape"][1:])) if len(detail["shape"]) else 1.0,
        stddev=math.nan,
        mean_error=math.nan,
        max_abs_error=math.nan,
        mean_squared_error=mse,
        scale=scale if quantized else math.nan,
        zero_point=float(zp) if quantized else math.nan,
        range=INT8_STEPS * scale if quantized else math.nan,
        rmse_scale=math.sqrt(mse) / scale if quantized and mse >= 0 else math.nan,
        extra={"snr": float(values.get("snr", math.nan)),
               "cosine_similarity": float(values.get("cosine_similarity", math.nan))},
    )


def export_model_explorer(comparison: Any, folder: str | os.PathLike[str], model_name: str) -> list[Path]:
    """Writes AEQ's own comparison files: its JSON and one Model Explorer node-data file per metric.

    Open the float .tflite in Model Explorer and load a `*_me_input_<metric>.json` as node data.

    Returns:
        The files written.
    """
    out = Path(folder)
    before = set(out.glob("*")) if out.exists() else set()
    comparison.save(str(out), model_name=model_name)
    return sorted(p for p in out.glob("*") if p not in before or p.name.startswith(model_name))




@dataclass(frozen=True)
class AeqEngine:
    """AI Edge Quantizer: every recipe from one float32 .tflite, calibrated once per activation width."""

    name: str = NAME
    label: str = "AI Edge Quantizer"
    blurb: str = "calibrates once for every recipe"
    suffix: str = "@aeq"
    metric: LayerErrorMetric = METRIC
    model_explorer: bool = True
    debug_options: frozenset[str] = frozenset()

    def refusal(self, recipe: Recipe) -> str:
        return "" if recipe.name in SETTINGS else "AI Edge Quantizer cannot express it; use --engine tf"

    def session(self, model: LoadedModel, calibration: np.ndarray) -> AeqSession:
        return AeqSession(model, calibration)


ENGINE = AeqEngine()
