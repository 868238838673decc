"""qlab on a real-sized model: MobileNetV2 alpha 1.0 at 224x224 (weights=None, random init, 1000 classes).

Prints, measured side by side in one run:
- conversion time per TF recipe;
- `run_debugger` (calibrate, debug, model metrics, derived metrics, store) against the raw
  QuantizationDebugger calls of bench/debugger_overhead.py (target: ratio <= 1.10);
- evaluation throughput (`evaluate_tflite`) against raw batched LiteRT invokes on the same
  batches (target: ratio >= 0.9);
- host p50 latency per recipe (int8-per-tensor beside int8) under 1, 2 and 4 threads, where
  the machine has the cores (more threads than cores are skipped and said so).

Random weights time like trained ones; accuracy means nothing here. Sample counts are small so
the run fits a 2-core machine: CALIBRATION random images calibrate, DEBUG feed the debugger,
EVAL make the evaluation set.
Usage: python bench/mobilenet_v2.py [--recipes all] [--runs 20] [--threads 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcore  # noqa: E402,F401  (Keras 2 for tf_keras, before TensorFlow loads)
from qcore.engines import resolve_recipes  # noqa: E402
from qcore.engines.tf import convert  # noqa: E402
from qcore.explain.debugger import run_debugger  # noqa: E402
from qcore.lab.publish import publish  # noqa: E402
from qcore.qtyping import Dataset, LoadedModel, QlabError  # noqa: E402
from qcore.store import Store  # noqa: E402
from qcore.tflite.evaluate import evaluate_tflite  # noqa: E402
from qcore.tflite.latency import benchmark  # noqa: E402

SIZE = 224
CLASSES = 1000
# a handful of calibration images: enough for every activation to get a range, and minutes, not hours
CALIBRATION = 8
DEBUG = 4
EVAL = 64
# the debugger side by side twice (ABAB), so drift on a shared machine hits both
DEBUG_REPEATS = 2
EVAL_REPEATS = 3


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def build() -> tuple[LoadedModel, Dataset]:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=1.0, weights=None, classes=CLASSES)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (CALIBRATION + EVAL, SIZE, SIZE, 3)).astype(np.float32)
    y = rng.integers(0, CLASSES, CALIBRATION + EVAL)
    ds = Dataset("random224", x[:CALIBRATION], y[:CALIBRATION], x[CALIBRATION:], y[CALIBRATION:],
                 class_names=tuple(str(i) for i in range(CLASSES)))
    return LoadedModel("mobilenetv2_1.0_224", "", "demo", net, (None, SIZE, SIZE, 3), (None, CLASSES), 2), ds


def raw_batched(model: bytes, x: np.ndarray, batch: int) -> np.ndarray:
    """Raw LiteRT: resize to the batch, quantize the inputs, invoke per batch, argmax."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [batch, SIZE, SIZE, 3], strict=False)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = inp["quantization"]
    if scale:
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.rint(x / scale + zp), info.min, info.max).astype(inp["dtype"])
    preds = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        it.set_tensor(inp["index"], chunk)
        it.invoke()
        preds.append(np.argmax(it.get_tensor(out["index"]), axis=1)[: len(x) - start])
    return np.concatenate(preds)


def compare_debugger(model: LoadedModel, ds: Dataset, calibration: np.ndarray) -> None:
    """run_debugger against the raw QuantizationDebugger calls, after one discarded raw warm-up run."""
    from debugger_overhead import raw_debugger  # the same raw calls as the demo-sized bench

    raw_t, qlab_t = [], []
    debug_x = ds.test_inputs()[:DEBUG]
    raw_debugger(model.keras_model, calibration, debug_x)  # warm TF's tracing caches for both sides
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(DEBUG_REPEATS):
            seconds, _ = timed(lambda: raw_debugger(model.keras_model, calibration, debug_x))
            raw_t.append(seconds)
            with Store(Path(tmp) / f"q{i}.duckdb") as store:
                seconds, result = timed(lambda s=store: publish(s, run_debugger(
                    model, ds, calibration_samples=CALIBRATION, debug_samples=DEBUG), made_from=(model, ds)))
            qlab_t.append(seconds)
    raw_s, qlab_s = statistics.median(raw_t), statistics.median(qlab_t)
    r = qlab_s / raw_s
    print(f"\ndebugger ({len(result.stats)} layers, {CALIBRATION} calibration / {DEBUG} debug samples, median of "
          f"{DEBUG_REPEATS}, alternating):\n  raw QuantizationDebugger calls + dump: {raw_s:7.1f} s\n"
          f"  qlab debug (+metrics, suspects, store): {qlab_s:7.1f} s\n"
          f"  ratio: {r:.3f} (target <= 1.10) -> {'PASS' if r <= 1.10 else 'MISS'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="all", help="TF recipes to convert and time (default all)")
    ap.add_argument("--runs", type=int, default=20, help="timed invokes per latency figure (default 20)")
    ap.add_argument("--threads", default="1,2,4", help="thread counts for host latency (default 1,2,4)")
    ap.add_argument("--skip-debugger", action="store_true", help="leave out the debugger comparison")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")]
    print(f"MobileNetV2 alpha 1.0, {SIZE}x{SIZE}x3, {CLASSES} classes, weights=None (random init); "
          f"{CALIBRATION} calibration / {DEBUG} debug / {EVAL} eval random images; {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    model, ds = build()
    calibration = ds.calibration(CALIBRATION)

    # ---- conversion per recipe
    tflites: dict[str, bytes] = {}
    print("\nconversion (TFLiteConverter, incl. calibration):", flush=True)
    for recipe in resolve_recipes(args.recipes, "tf"):
        try:
            seconds, tflites[recipe.name] = timed(lambda r=recipe: convert(model, r, calibration))
            print(f"  {recipe.name:<17} {seconds:7.1f} s  {len(tflites[recipe.name]) / 1e6:6.2f} MB", flush=True)
        except Exception as exc:  # a refused recipe is a figure too
            print(f"  {recipe.name:<17} refused: {str(exc).splitlines()[0][:120]}", flush=True)

    # ---- debugger vs raw QuantizationDebugger
    if not args.skip_debugger:
        compare_debugger(model, ds, calibration)

    # ---- evaluation throughput vs raw batched invokes
    if "int8" in tflites:
        x = ds.test_inputs()
        batch = min(256, len(x))  # what evaluate_tflite uses: litert_io.DEFAULT_BATCH capped at the set
        raw_e, qlab_e = [], []
        for _ in range(EVAL_REPEATS):
            seconds, raw_pred = timed(lambda: raw_batched(tflites["int8"], x, batch))
            raw_e.append(seconds)
            seconds, ev = timed(lambda: evaluate_tflite(tflites["int8"], ds))
            qlab_e.append(seconds)
        raw_s, qlab_s = statistics.median(raw_e), statistics.median(qlab_e)
        r = (len(x) / qlab_s) / (len(x) / raw_s)
        print(f"\nevaluation of int8 on {len(x)} images, batch {batch}, 1 thread, median of {EVAL_REPEATS}:\n"
              f"  raw batched LiteRT invokes: {len(x) / raw_s:7.1f} images/s\n"
              f"  qlab evaluate_tflite:       {len(x) / qlab_s:7.1f} images/s (accuracy, confusion, agreement)\n"
              f"  ratio: {r:.3f} (target >= 0.9) -> {'PASS' if r >= 0.9 else 'MISS'}", flush=True)
        assert ev.n_samples == len(raw_pred)

    # ---- host p50 per recipe and thread count
    usable = [t for t in threads if t <= cores]
    skipped = [t for t in threads if t > cores]
    order = sorted(tflites, key=lambda n: (n != "int8", n != "int8-per-tensor", n))  # int8 and per-tensor first
    print(f"\nhost p50 latency, ms (XNNPACK, {args.runs} runs after 3 warm-up; median of the runs):")
    print(f"  {'recipe':<17}" + "".join(f"{f'{t} thr':>10}" for t in usable))
    for name in order:
        cells = []
        try:
            for t in usable:
                lat = benchmark(tflites[name], runs=args.runs, warmup=3, threads=t)
                cells.append(f"{lat.p50_ms:10.2f}")
        except QlabError as exc:  # LiteRT refusing a model is a result too
            cells = [f"  refused by LiteRT: {str(exc).splitlines()[0][-110:]}"]
        print(f"  {name:<17}" + "".join(cells), flush=True)
    if skipped:
        print(f"  skipped {', '.join(f'{t} threads' for t in skipped)}: this machine has {cores} cores")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (a shared machine: the figures are noisy)")


if __name__ == "__main__":
    main()
