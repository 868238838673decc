"""Tensor-by-tensor comparison of a float .tflite and any quantized .tflite of the same model."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcore.qtyping import (
    Progress,
    QlabError,
    TensorComparison,
    TensorDiff,
    UnmatchedTensor,
    no_progress,
)
from qcore.tflite import litert_io
from qcore.tflite.inspection import output_names
from qcore.tflite.names import layer_name

log = logging.getLogger(__name__)

# tfmot names QAT layers "quant_<name>"; the float model of the same Keras model has "<name>"
_QAT_PREFIX = re.compile(r"(^|/)quant_")


@dataclass
class _Acc:
    """Running sums over samples for one matched tensor pair."""

    float_idx: int
    quant_idx: int
    n: int = 0
    sq_err: float = 0.0
    max_abs: float = 0.0
    f2: float = 0.0
    q2: float = 0.0
    fq: float = 0.0

    def add(self, f: np.ndarray, q: np.ndarray) -> None:
        f64, q64 = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
        err = f64 - q64
        self.n += f64.size
        self.sq_err += float(err @ err)
        if err.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(err))))
        self.f2 += float(f64 @ f64)
        self.q2 += float(q64 @ q64)
        self.fq += float(f64 @ q64)


def _normalise(name: str) -> str:
    return _QAT_PREFIX.sub(r"\1", name)


def _load(model: bytes | str | Path) -> tuple[bytes, str]:
    if isinstance(model, bytes | bytearray):
        return bytes(model), "<bytes>"
    path = Path(model)
    data = litert_io.read_tflite(path)
    return data, str(path)


def _constant_indices(it: Any) -> set[int]:
    produced = {int(i) for op in it._get_ops_details() for i in op["outputs"]}  # noqa: SLF001
    graph_inputs = {int(d["index"]) for d in it.get_input_details()}
    return {int(d["index"]) for d in it.get_tensor_details()} - produced - graph_inputs


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float values of a tensor; per-channel scales broadcast along the quantized dimension."""
    if value.dtype.kind not in "iu":
        return value.astype(np.float32)
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), dtype=np.float64)
    zps = np.asarray(qp.get("zero_points", []), dtype=np.float64)
    if scales.size == 0:
        return value.astype(np.float32)  # an integer tensor that is not quantized (shapes, indices)
    if scales.size == 1:
        return litert_io.dequantize(value, float(scales[0]), int(zps[0]) if zps.size else 0)
    axis = int(qp.get("quantized_dimension", 0))
    shape = [1] * value.ndim
    shape[axis] = scales.size
    zps = zps if zps.size == scales.size else np.zeros_like(scales)
    return ((value.astype(np.float64) - zps.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def _is_quantized(detail: dict[str, Any]) -> bool:
    qp = detail.get("quantization_parameters") or {}
    return len(qp.get("scales", [])) > 0


def _single_input(it: Any, which: str) -> dict[str, Any]:
    ins = it.get_input_details()
    if len(ins) != 1:
        raise QlabError(f"compare-tensors handles single-input models; the {which} model has {len(ins)} inputs")
    return dict(ins[0])


def compare_tensors(
    float_model: bytes | str | Path,
    quant_model: bytes | str | Path,
    x: np.ndarray,
    *,
    progress: Progress = no_progress,
) -> TensorComparison:
    """Runs both models on the same float inputs and compares every tensor they share by name.

    Tensors are matched by exact name, then by name with tfmot's `quant_` layer prefix removed
    (QAT models). Quantized values are dequantized with their scale and zero point, per channel
    where the tensor has several scales. Metrics are over all samples together.

    Args:
        float_model: the float .tflite (bytes or path).
        quant_model: any quantized .tflite of the same Keras model (PTQ, QAT, 16x8, or from elsewhere).
        x: float inputs as the float model expects them (preprocessed), shape [N, ...].
        progress: called once per sample.

    Returns:
        Matched tensors with MSE, max abs error, SNR (dB) and cosine similarity, and every
        tensor of either model that found no partner, with the reason.

    Raises:
        QlabError: for a file that is not a .tflite, a multi-input model, inputs that do not fit,
            or no samples.
    """
    fbytes, fpath = _load(float_model)
    outputs = output_names(fbytes)  # the float model's signature names its outputs as Keras does
    qbytes, qpath = _load(quant_model)
    x = np.asarray(x)
    if len(x) == 0:
        raise QlabError("compare-tensors needs at least one sample")
    fit = litert_io.make_interpreter(fbytes, preserve_all_tensors=True)
    qit = litert_io.make_interpreter(qbytes, preserve_all_tensors=True)
    fin, qin = _single_input(fit, "float"), _single_input(qit, "quantized")
    for which, detail in (("float", fin), ("quantized", qin)):
        want = tuple(int(d) for d in detail["shape"][1:])
        if tuple(x.shape[1:]) != want:
            raise QlabError(
                f"data shape {tuple(x.shape[1:])} does not fit the {which} model's input shape {want}"
            )
    for it in (fit, qit):
        it.resize_tensor_input(_single_input(it, "")["index"], [1, *x.shape[1:]], strict=False)
        it.allocate_tensors()
    fin, qin = _single_input(fit, "float"), _single_input(qit, "quantized")
    fdetails = {int(d["index"]): d for d in fit.get_tensor_details()}
    qdetails = {int(d["index"]): d for d in qit.get_tensor_details()}
    fconst, qconst = _constant_indices(fit), _constant_indices(qit)
    pairs, unmatched = _match(fdetails, qdetails)

    accs = {name: _Acc(fi, qi) for name, (fi, qi) in pairs.items()}
    dead: dict[str, str] = {}
    q_scale, q_zp = qin["quantization"]
    for i, sample in enumerate(x):
        fit.set_tensor(fin["index"], sample[None].astype(fin["dtype"]))
        qit.set_tensor(qin["index"], litert_io.quantize(sample[None], qin["dtype"], q_scale, q_zp))
        fit.invoke()
        qit.invoke()
        for name, acc in accs.items():
            if name in dead or (i > 0 and acc.float_idx in fconst and acc.quant_idx in qconst):
                continue  # constants are the same for every sample
            try:
                f = _dequantize(fit.get_tensor(acc.float_idx), fdetails[acc.float_idx])
                q = _dequantize(qit.get_tensor(acc.quant_idx), qdetails[acc.quant_idx])
            except ValueError as exc:  # the runtime keeps no buffer for some tensors
                dead[name] = f"no data to read: {exc}"
                continue
            if f.shape != q.shape:
                dead[name] = f"shapes differ: float {f.shape}, quantized {q.shape}"
                continue
            acc.add(f, q)
        progress((i + 1) / len(x), f"compared tensors on sample {i + 1}/{len(x)}")

    matched: list[TensorDiff] = []
    for name, acc in accs.items():
        fd, qd = fdetails[acc.float_idx], qdetails[acc.quant_idx]
        if name in dead:
            unmatched.append(UnmatchedTensor(name, "float", dead[name]))
            unmatched.append(UnmatchedTensor(str(qd["name"]), "quant", dead[name]))
            continue
        qscales = (qd.get("quantization_parameters") or {}).get("scales", [])
        matched.append(
            TensorDiff(
                name=name,
                quant_name=str(qd["name"]),
                shape=tuple(int(s) for s in fd["shape"]),
                float_dtype=np.dtype(fd["dtype"]).name,
                quant_dtype=np.dtype(qd["dtype"]).name,
                per_channel=len(qscales) > 1,
                is_constant=acc.float_idx in fconst and acc.quant_idx in qconst,
                mse=acc.sq_err / acc.n if acc.n else float("nan"),
                max_abs_error=acc.max_abs if acc.n else float("nan"),
                snr_db=_snr_db(acc.f2, acc.sq_err),
                cosine=_cosine(acc.fq, acc.f2, acc.q2),
                layer=layer_name(name, "", outputs),
            )
        )
    log.info("compared %d tensors; %d unmatched", len(matched), len(unmatched))
    return TensorComparison(
        float_path=fpath,
        quant_path=qpath,
        n_samples=len(x),
        matched=tuple(matched),
        unmatched=tuple(unmatched),
    )


def _match(
    fdetails: dict[int, dict[str, Any]], qdetails: dict[int, dict[str, Any]]
) -> tuple[dict[str, tuple[int, int]], list[UnmatchedTensor]]:
    """Pairs tensors by exact name, then by QAT-normalised name; lists the rest with a reason."""
    unmatched: list[UnmatchedTensor] = []

    def by_name(details: dict[int, dict[str, Any]], side: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for idx, d in sorted(details.items()):
            name = str(d["name"])
            if name in out:
                unmatched.append(UnmatchedTensor(name, side, f"name used by several tensors; kept index {out[name]}"))
            else:
                out[name] = idx
        return out

    fnames, qnames = by_name(fdetails, "float"), by_name(qdetails, "quant")
    pairs = {n: (fnames[n], qnames[n]) for n in fnames if n in qnames}
    f_left = {n: i for n, i in fnames.items() if n not in pairs}
    q_left = {n: i for n, i in qnames.items() if n not in pairs}
    q_norm: dict[str, str] = {}
    for n in q_left:
        q_norm.setdefault(_normalise(n), n)
    for n in list(f_left):
        qn = q_norm.get(_normalise(n))
        if qn is not None and qn in q_left:
            pairs[n] = (f_left.pop(n), q_left.pop(qn))
    for n, (fi, qi) in list(pairs.items()):
        if np.dtype(fdetails[fi]["dtype"]).kind != "f":
            del pairs[n]
            reason = "integer shape or index data in the float model, not a value to compare"
            unmatched.append(UnmatchedTensor(n, "float", reason))
            unmatched.append(UnmatchedTensor(str(qdetails[qi]["name"]), "quant", reason))
    for n in f_left:
        unmatched.append(UnmatchedTensor(n, "float", "no tensor of this name in the quantized model"))
    for n, i in q_left.items():
        reason = (
            "a quantized copy the float model has no counterpart for"
            if _is_quantized(qdetails[i])
            else "no tensor of this name in the float model"
        )
        unmatched.append(UnmatchedTensor(n, "quant", reason))
    return pairs, unmatched


def _snr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _cosine(fq: float, f2: float, q2: float) -> float:
    if f2 == 0.0 and q2 == 0.0:
        return 1.0  # both all-zero: identical
    if f2 == 0.0 or q2 == 0.0:
        return float("nan")
    return fq / math.sqrt(f2 * q2)


def _argmax_agreement(f: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(np.argmax(f, axis=-1) == np.argmax(q, axis=-1)))


def _output_mse(f: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean((np.asarray(f, np.float64) - np.asarray(q, np.float64)) ** 2))


# model-level metrics of a quantized model's final outputs against the float model's, sample by sample
MODEL_METRICS = {"argmax_agreement": _argmax_agreement, "output_mse": _output_mse}


def output_metrics(quantized: bytes, float_model: bytes, x: np.ndarray) -> dict[str, float]:
    """MODEL_METRICS of a quantized model's first output against the float model's, averaged over `x`."""
    q, _ = litert_io.run_model(quantized, x, batch_size=1)
    f, _ = litert_io.run_model(float_model, x, batch_size=1)
    return {name: float(np.mean([fn(f[i : i + 1], q[i : i + 1]) for i in range(len(x))]))
            for name, fn in MODEL_METRICS.items()}
