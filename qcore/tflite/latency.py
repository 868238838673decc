"""Host latency of a .tflite model: creation, first invoke and steady-state invokes, timed apart."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from qcore.qtyping import Latency, QlabError, Target
from qcore.tflite.litert_io import make_interpreter

log = logging.getLogger(__name__)

# the same inputs on every run and every machine, so two timings of one model compare
INPUT_SEED = 0
# LiteRT's benchmark tool draws integers from this range too, so both time the same inputs
_INT_LOW, _INT_HIGH = -128, 127


def _check(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise QlabError(f"{name}={value!r} must be a whole number of at least {low}")
    return int(value)


def random_input(dtype: Any, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Deterministic filler for one input: floats in [-1, 1], integers in [-128, 127] ∩ the dtype."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.uniform(-1.0, 1.0, shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        low, high = max(int(info.min), _INT_LOW), min(int(info.max), _INT_HIGH)
        return rng.integers(low, high + 1, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    return np.zeros(shape, dtype=dt)


def _ms(ns: int) -> float:
    return ns / 1e6


def benchmark(
    model: bytes,
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
    xnnpack: bool = True,
) -> Latency:
    """Times a model with the LiteRT interpreter on this machine.

    init_ms covers interpreter creation and allocate_tensors (XNNPACK rewrites the graph
    then); first_ms is the first invoke alone; `warmup` more invokes are discarded; then
    `runs` invokes are timed one by one with perf_counter_ns. Inputs are seeded random data of
    each input's dtype and shape, written once before the first invoke.

    Args:
        model: the .tflite flatbuffer.
        runs: timed invokes (>= 1).
        warmup: invokes after the first that are not timed (>= 0).
        threads: CPU threads for the interpreter (>= 1).
        xnnpack: False turns the default XNNPACK delegate off (the plain builtin kernels).

    Returns:
        A Latency with target "host", milliseconds throughout; `extra` holds max_ms, the input
        dtypes and shapes and the model size.

    Raises:
        QlabError: naming a bad runs/warmup/threads value, or when the runtime refuses the model.
    """
    runs = _check("runs", runs, 1)
    warmup = _check("warmup", warmup, 0)
    threads = _check("threads", threads, 1)
    if not isinstance(model, bytes | bytearray):
        raise TypeError("benchmark needs the model as bytes")

    start = time.perf_counter_ns()
    it = make_interpreter(bytes(model), threads=threads, xnnpack=xnnpack)
    try:
        it.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise QlabError(f"the TFLite runtime cannot prepare this model: {exc}") from None
    init_ns = time.perf_counter_ns() - start

    rng = np.random.default_rng(INPUT_SEED)
    details = it.get_input_details()
    for d in details:
        shape = tuple(int(s) for s in d["shape"])
        it.set_tensor(d["index"], random_input(d["dtype"], shape, rng))

    try:
        start = time.perf_counter_ns()
        it.invoke()
        first_ns = time.perf_counter_ns() - start
        for _ in range(warmup):
            it.invoke()
        times = np.empty(runs, dtype=np.int64)
        for i in range(runs):
            start = time.perf_counter_ns()
            it.invoke()
            times[i] = time.perf_counter_ns() - start
    except (RuntimeError, ValueError) as exc:
        raise QlabError(f"the TFLite runtime failed while timing: {exc}") from None

    ms = times.astype(np.float64) / 1e6
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    log.info(
        "benchmarked %d runs: p50 %.3f ms (threads=%d, xnnpack=%s)", runs, p50, threads, xnnpack
    )
    return Latency(
        target=Target.HOST.value,
        threads=threads,
        xnnpack=bool(xnnpack),
        runs=runs,
        warmup=warmup,
        init_ms=_ms(init_ns),
        first_ms=_ms(first_ns),
        min_ms=float(ms.min()),
        mean_ms=float(ms.mean()),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        # the sample standard deviation, as the reference benchmark tool reports it
        std_ms=float(ms.std(ddof=1)) if runs > 1 else 0.0,
        extra={
            "max_ms": float(ms.max()),
            "inputs": [
                {"dtype": np.dtype(d["dtype"]).name, "shape": [int(s) for s in d["shape"]]}
                for d in details
            ],
            "model_bytes": len(model),
        },
    )
