"""Batched evaluation vs the TFLite tutorial's one-sample-at-a-time loop, on 10,000 samples through the demo model.

Prints both throughputs and their ratio (target: batched at least 10x faster) and asserts identical predictions.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import qcore  # noqa: E402,F401
from qcore.engines.tf import convert  # noqa: E402
from qcore.inputs.data import digits_dataset  # noqa: E402
from qcore.inputs.models import demo_model  # noqa: E402
from qcore.tflite.litert_io import run_model  # noqa: E402

N = 10_000
REPEATS = 3


def seed_loop(model: bytes, x: np.ndarray) -> np.ndarray:
    """The tutorial's evaluation loop: one set_tensor/invoke per sample, same quantization rule."""
    it = Interpreter(model_content=model)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = inp["quantization"]
    preds = np.zeros(len(x), dtype=np.int64)
    info = np.iinfo(inp["dtype"])
    for i, sample in enumerate(x):
        q = np.clip(np.rint(sample / scale + zp), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        preds[i] = int(np.argmax(it.get_tensor(out["index"])[0]))
    return preds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = demo_model(Path(tmp))
        ds = digits_dataset()
        tflite = convert(model, "int8", ds.calibration(100))
    reps = -(-N // len(ds.x_test))
    x = np.concatenate([ds.test_inputs()] * reps)[:N]
    loop_t, batch_t = [], []
    for _ in range(REPEATS):  # alternate so both see the same machine state
        t = time.perf_counter()
        p_loop = seed_loop(tflite, x)
        loop_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        out, batched = run_model(tflite, x)
        batch_t.append(time.perf_counter() - t)
        p_batch = np.argmax(out, axis=1)
        assert batched
        assert np.array_equal(p_loop, p_batch), "batched and one-at-a-time predictions differ"
    loop_s, batch_s = statistics.median(loop_t), statistics.median(batch_t)
    print(f"samples: {N}, int8 demo model, 1 thread, median of {REPEATS}")
    print(f"seed loop (1 sample/invoke): {loop_s:.3f} s  ({N / loop_s:,.0f} samples/s)")
    print(f"qcore batched (256/invoke):  {batch_s:.3f} s  ({N / batch_s:,.0f} samples/s)")
    print("predictions identical: yes")
    ratio = loop_s / batch_s
    print(f"ratio: batched is {ratio:.1f}x faster (target >= 10x) -> {'PASS' if ratio >= 10 else 'MISS'}")


if __name__ == "__main__":
    main()
