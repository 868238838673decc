"""What the board agent costs: its cpu p50 against the same interpreter timed in-process, a job's
round trip beyond the timed runs, and the agent's resident memory.

Targets: p50 ratio within 10% (0.90..1.10), idle RSS under 60 MB.
Run: .venv/bin/python bench/agent_overhead.py [--runs N] [--reps N] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import qcore  # noqa: E402,F401  (Keras 2 for tf_keras, before TensorFlow loads)

TOKEN = "bench-token"
# the board has little memory to spare: the agent process itself must stay small
RSS_TARGET_MB = 60.0
RATIO_TOLERANCE = 0.10


def build_model() -> bytes:
    """A small int8 CNN on 160x160x3 (random weights): milliseconds per invoke, like a board model."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Input((160, 160, 3))]
    for filters in (32, 64, 128, 256):
        layers += [keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu"),
                   keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    conv.representative_dataset = lambda: ([rng.random((1, 160, 160, 3), dtype=np.float32)] for _ in range(8))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def direct_p50(model: bytes, runs: int, warmup: int, threads: int) -> float:
    """The same loop as the agent's runner, in this process: XNNPACK, set input once, time invoke()."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.random.default_rng(0).integers(-128, 128, d["shape"]).astype(d["dtype"]))
    it.invoke()
    for _ in range(warmup):
        it.invoke()
    times = np.empty(runs)
    clock = time.perf_counter_ns
    for i in range(runs):
        start = clock()
        it.invoke()
        times[i] = clock() - start
    return float(np.percentile(times / 1e6, 50))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start_agent(workdir: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLAB_AGENT_")}
    env["QLAB_AGENT_TOKEN"] = TOKEN
    proc = subprocess.Popen([sys.executable, "-m", "board_agent", "--port", "0", "--workdir", workdir,
                             "--log-level", "WARNING"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or []], daemon=True).start()
    line = lines.get(timeout=60)
    return proc, line.split()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5, help="alternating direct/agent repetitions (median taken)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from qcore.boards.client import BoardClient

    model = build_model()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_agent(tmp)
        try:
            time.sleep(0.5)
            idle_start = rss_mb(proc.pid)
            client = BoardClient(url, TOKEN, name="loopback")
            direct, agent, overhead = [], [], []
            for _ in range(args.reps):
                direct.append(direct_p50(model, args.runs, args.warmup, args.threads))
                t0 = time.perf_counter()
                job = client.submit_benchmark(model, target="cpu", runs=args.runs, warmup=args.warmup,
                                              threads=args.threads)
                result = client.wait(job, poll=0.01)
                wall_ms = (time.perf_counter() - t0) * 1e3
                agent.append(result["p50_ms"])
                overhead.append(wall_ms - result["mean_ms"] * result["runs"])
            idle_after = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)

    d50, a50 = statistics.median(direct), statistics.median(agent)
    ratio = a50 / d50
    print(f"model: int8 CNN 160x160x3, {len(model)} B; {args.runs} runs, {args.warmup} warmup, "
          f"{args.threads} thread(s), median of {args.reps} alternating reps")
    print(f"p50 direct in-process : {d50:.4f} ms   (reps: {', '.join(f'{x:.4f}' for x in direct)})")
    print(f"p50 via agent (cpu)   : {a50:.4f} ms   (reps: {', '.join(f'{x:.4f}' for x in agent)})")
    ok_ratio = abs(ratio - 1) <= RATIO_TOLERANCE
    print(f"ratio agent/direct    : {ratio:.3f}   target 1 +/- {RATIO_TOLERANCE:.2f}: {'PASS' if ok_ratio else 'FAIL'}")
    print(f"round trip beyond the timed runs (spawn, load, first run, warmup, HTTP, polling): "
          f"{statistics.median(overhead):.0f} ms median (reps: {', '.join(f'{x:.0f}' for x in overhead)})")
    ok_rss = max(idle_start, idle_after) < RSS_TARGET_MB
    print(f"agent RSS idle        : {idle_start:.1f} MB at start, {idle_after:.1f} MB after {args.reps} jobs   "
          f"target < {RSS_TARGET_MB:.0f} MB: {'PASS' if ok_rss else 'FAIL'}")
    return 0 if ok_ratio and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
