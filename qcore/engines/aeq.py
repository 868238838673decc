"""AI Edge Quantizer as qlab's second engine: every recipe it can express from one float32 .tflite."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcore.lab import convert as qconvert
from qcore.qtyping import (
    AeqMode,
    Dataset,
    DebugResult,
    Engine,
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
from qcore.store import Store
from qcore.tflite import litert_io

log = logging.getLogger(__name__)

# AEQ's validation metrics qlab keeps per layer; names are ValidationErrorMetric values
LAYER_METRICS = ("mse", "snr", "cosine_similarity")
# int8 steps across a tensor's range, as in the TF debugger's table (see qcore.explain.debugger.INT8_STEPS)
INT8_STEPS = 255.0
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
    if rec.aeq is None:
        raise QlabError(f"recipe {rec.name}: AI Edge Quantizer cannot express it; use --engine tf")
    return rec


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
    key = (qconvert.model_sha256(model), tuple(sample.shape[1:]), integer_io)
    tflite = _FLOAT_FILES.get(key)
    if tflite is None:
        tflite = qconvert.convert(model, "float32", sample[:1])
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
    fn = tf.function(lambda x: net(x, training=False)).get_concrete_function(spec)
    try:
        return bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn], net).convert())
    except Exception as exc:  # ConverterError, ValueError from tracing
        raise QlabError(f"cannot convert model {model.name!r} at batch 1: {_first_line(exc)}") from None


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

    settings = rec.aeq
    assert settings is not None
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
        raise QlabError(f"recipe {rec.name} (engine aeq): calibration failed: {_first_line(exc)}") from None
    return AeqCalibration(base, rec.name, dict(qsvs), len(calibration))


def quantize(cal: AeqCalibration, *, recipe: Recipe | str | None = None, keep_float: Sequence[str] = (),
             keep_ops: Sequence[str] = (), check_integer_only: bool = True) -> bytes:
    """Quantizes the float base with the calibrated recipe, keeping the named op outputs in float.

    Integer-only recipes get the recipe's int8/uint8 I/O from LiteRT's model-interface tool.

    Args:
        recipe: another recipe with the same activation bits (reuses the calibration); default cal's.
        keep_float: tensor names (op outputs) whose ops stay float.
        check_integer_only: refuse an integer-only recipe's model that still computes in float
            (off for keep-float models, which are float in places on purpose).

    Raises:
        QlabError: naming the recipe when AEQ or the interface tool fails, or float ops remain.
    """
    rec = check_recipe(recipe or cal.recipe)
    assert rec.aeq is not None
    if rec.aeq.mode == AeqMode.NONE:
        return cal.base.model
    q = _quantizer(cal.base, rec, keep_float, keep_ops)
    try:
        with _quiet():
            out = q.quantize(cal.qsvs or None, enable_progress_report=False).quantized_model
    except (ValueError, RuntimeError, KeyError) as exc:
        raise QlabError(f"recipe {rec.name} (engine aeq): the quantizer failed: {_first_line(exc)}") from None
    tflite = bytes(out)
    if rec.inference_input_type or rec.inference_output_type:
        tflite = _integer_io(tflite, rec)
    if rec.integer_only and check_integer_only and not keep_float and not keep_ops:
        _check_integer_only(rec, tflite)
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
            f"{rec.inference_input_type} I/O: {_first_line(exc)}"
        ) from None
    return out


def _check_integer_only(rec: Recipe, tflite: bytes) -> None:
    from qcore.tflite.inspection import inspect

    result = inspect(tflite)
    if result.integer_only:
        return
    culprits = [op for op in result.float_ops if op not in ("QUANTIZE", "DEQUANTIZE")] or list(result.float_ops)
    raise QlabError(
        f"recipe {rec.name} (engine aeq): AI Edge Quantizer left op {', '.join(culprits)} in float; "
        "try int8-fallback, which keeps such ops in float on purpose"
    )


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


class Session:
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
        assert rec.aeq is not None
        io = bool(rec.inference_input_type)
        # static recipes of one activation width share min/max; other modes need none
        key = (io, f"{rec.aeq.mode}:{rec.aeq.activation_bits}" if rec.aeq.mode == AeqMode.STATIC else rec.name)
        if key not in self._cals:
            self._cals[key] = calibrate(self.base(io), rec, self.calibration)
        return self._cals[key]

    def convert(self, recipe: Recipe | str, keep_float: Sequence[str] = (), keep_ops: Sequence[str] = ()) -> bytes:
        """One recipe's .tflite, keeping `keep_float` op outputs and `keep_ops` op types in float."""
        rec = check_recipe(recipe)
        return quantize(self.calibrated(rec), recipe=rec, keep_float=keep_float, keep_ops=keep_ops)

    def op_outputs(self) -> dict[str, str]:
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
        raise QlabError(f"AI Edge Quantizer's validation failed: {_first_line(exc)}") from None
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


def export_model_explorer(validation: Validation, folder: str | os.PathLike[str], model_name: str) -> list[Path]:
    """Writes AEQ's own comparison files: its JSON and one Model Explorer node-data file per metric.

    Open the float .tflite in Model Explorer and load a `*_me_input_<metric>.json` as node data.

    Returns:
        The files written.
    """
    out = Path(folder)
    before = set(out.glob("*")) if out.exists() else set()
    validation.comparison.save(str(out), model_name=model_name)
    return sorted(p for p in out.glob("*") if p not in before or p.name.startswith(model_name))


def engine_label(engine: str) -> str:
    """The engine's name as users read it."""
    labels: dict[str, str] = {Engine.TF: "TF converter", Engine.AEQ: "AI Edge Quantizer"}
    return labels.get(engine, engine)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ---------------------------------------------------------------- the explain loop on AEQ

# the columns an AEQ layer table shows, in the order of the TF debugger's CSV where they overlap
COLUMNS = ("op_name", "tensor_idx", "num_elements", "mean_squared_error", "scale", "zero_point", "tensor_name",
           "snr", "cosine_similarity")


def run_debug(
    model: LoadedModel,
    dataset: Dataset,
    *,
    recipe: Recipe | str = "int8-fallback",
    calibration_samples: int = 100,
    debug_samples: int = 100,
    denylisted_nodes: Sequence[str] = (),
    denylisted_ops: Sequence[str] = (),
    threshold: float = 0.7,
    first_k: int = 0,
    store: Store | None = None,
    selective_out: str | Path | None = None,
    model_explorer_out: str | Path | None = None,
    session: Session | None = None,
    progress: Progress = no_progress,
) -> DebugResult:
    """Per-layer error from AEQ's validation, stored like a debugger run (engine "aeq").

    Calibrates once on the first N training samples, quantizes (keeping any denylist in float),
    and compares every op output with the float model on the first M test samples. Errors
    propagate (both models run whole), unlike the TF debugger's default layer-by-layer mode.

    Args:
        model, dataset: what to debug (checked to fit first).
        recipe: any recipe AEQ can express with activations to compare (static ones).
        denylisted_nodes, denylisted_ops: keep these in float; with either, the selective model is
            built, evaluated and stored as an AEQ variant.
        threshold, first_k: how suspects are chosen (see `debugger.suspects`).
        store: where to record the run; None for a dry run.
        selective_out: also write the selective .tflite here.
        model_explorer_out: also write AEQ's comparison JSON and Model Explorer node-data files here.
        session: an `aeq.Session` to reuse (fixes calibration samples).
        progress: called after each step.

    Raises:
        QlabError: for a recipe AEQ cannot express or that has no quantized activations, unknown
            denylist entries, no samples.
    """
    from qcore.explain import debugger as qdebugger
    from qcore.inputs.data import check_fits
    from qcore.lab.convert import keras_predict, register

    rec = check_recipe(recipe)
    assert rec.aeq is not None
    if rec.aeq.mode != AeqMode.STATIC:
        raise QlabError(f"recipe {rec.name}: per-layer error needs quantized activations; use int8-fallback, "
                        "int8, uint8, a per-tensor variant or int16x8")
    if calibration_samples < 1:
        raise QlabError(f"calibration samples must be at least 1, got {calibration_samples}")
    if debug_samples < 1:
        raise QlabError(f"debug samples must be at least 1, got {debug_samples}")
    if not math.isfinite(threshold):
        raise QlabError(f"threshold must be a finite number, got {threshold}")
    check_fits(model, dataset)
    debug_x = dataset.preprocess(dataset.x_test[:debug_samples])
    if len(debug_x) == 0:
        raise QlabError(f"data {dataset.name!r} has no test samples to debug with")
    progress(0.05, f"calibrating on {calibration_samples} training samples (AI Edge Quantizer)")
    session = session or Session(model, dataset.calibration(calibration_samples))
    known = session.op_outputs()
    for node in denylisted_nodes:
        if node not in known:
            examples = ", ".join(repr(n) for n in list(known)[:8])
            raise QlabError(f"denylisted node {node!r} is not an op output of this model; e.g. {examples}")
    model_ops = sorted(set(known.values()))
    for op in denylisted_ops:
        if op not in model_ops:
            raise QlabError(f"denylisted op {op!r} does not occur in this model; its ops are {', '.join(model_ops)}")
    # the comparison needs the float-I/O model of the recipe: same math, inputs fed as float
    compare_rec = get_recipe("int16x8" if rec.aeq.activation_bits == 16 else "int8-fallback")
    if not rec.per_channel:
        from dataclasses import replace

        compare_rec = replace(compare_rec, per_channel=False)
    progress(0.3, "quantizing")
    quantized = quantize(session.calibrated(compare_rec), recipe=compare_rec, keep_float=denylisted_nodes,
                         keep_ops=denylisted_ops)
    progress(0.5, f"comparing every layer with float on {len(debug_x)} test samples")
    base = session.base()
    validation = validate(base, quantized, debug_x)
    stats = list(validation.stats)
    model_metrics = qdebugger.output_metrics(quantized, base.model, debug_x)
    sus = qdebugger.suspects(stats, threshold, first_k)
    settings: dict[str, Any] = {
        "recipe": rec.name, "calibration_samples": len(session.calibration), "debug_samples": len(debug_x),
        "engine": Engine.AEQ, "metrics": list(LAYER_METRICS), "whole_model": True,
        "denylisted_nodes": list(denylisted_nodes), "denylisted_ops": list(denylisted_ops),
        "threshold": threshold, "first_k": first_k,
    }
    model_id = dataset_id = run_id = None
    reference = keras_predict(model, dataset.test_inputs()) if (store is not None or denylisted_nodes
                                                               or denylisted_ops) else None
    if store is not None:
        model_id, dataset_id = register(store, model, dataset, reference)
        run_id = store.save_debug_run(model_id=model_id, dataset_id=dataset_id, settings=settings,
                                      model_metrics=model_metrics, stats=stats, engine=Engine.AEQ)
    if model_explorer_out is not None:
        export_model_explorer(validation, model_explorer_out, model.name)
    selective = None
    if denylisted_nodes or denylisted_ops:
        progress(0.8, "building the selective model")
        tflite = session.convert(rec, keep_float=denylisted_nodes, keep_ops=denylisted_ops)
        selective = _store_selective(model, dataset, rec, tflite, reference, denylisted_nodes, denylisted_ops,
                                     store, model_id, dataset_id, selective_out, len(session.calibration))
    progress(1.0, "done")
    return DebugResult(model=model.name, settings=settings, columns=COLUMNS, stats=tuple(stats),
                       model_metrics=model_metrics, suspects=tuple(sus), selective=selective, debug_run_id=run_id)


def _store_selective(
    model: LoadedModel, dataset: Dataset, rec: Recipe, tflite: bytes, reference: np.ndarray | None,
    nodes: Sequence[str], ops: Sequence[str], store: Store | None, model_id: int | None,
    dataset_id: int | None, out: str | Path | None, calibration_samples: int,
) -> SelectiveResult:
    from qcore.explain.debugger import _free_name, float_ops, selective_name
    from qcore.store import sha256_bytes
    from qcore.tflite.evaluate import evaluate_tflite

    ev = evaluate_tflite(tflite, dataset, reference)
    kept = float_ops(tflite)
    ignored = [n for n in nodes if n not in kept]
    path = ""
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(tflite)
        path = str(out)
    variant_id = None
    if store is not None and model_id is not None and dataset_id is not None:
        settings = {"denylisted_nodes": list(nodes), "denylisted_ops": list(ops), "recipe": rec.name,
                    "calibration_samples": calibration_samples, "ignored_nodes": ignored, "engine": "aeq"}
        # named like the TF debugger's selective variants, with the engine beside it
        name = _free_name(store, model_id, dataset_id, selective_name(rec.name, nodes, ops) + "@aeq", settings)
        variant_id = store.save_variant(
            model_id=model_id, dataset_id=dataset_id, name=name,
            kind=VariantKind.SELECTIVE, recipe=rec.name, settings=settings,
            tflite=tflite, input_dtype=ev.input_dtype, output_dtype=ev.output_dtype, evaluation=ev,
            engine=Engine.AEQ,
        )
        path = path or str(store.blob_path(sha256_bytes(tflite)))
    return SelectiveResult(denylisted_nodes=tuple(nodes), denylisted_ops=tuple(ops), evaluation=ev,
                           size_bytes=len(tflite), path=path, sha256=sha256_bytes(tflite), variant_id=variant_id,
                           ignored_nodes=tuple(ignored))
