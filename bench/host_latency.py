"""qlab's host benchmark against LiteRT's own benchmark tool: same model, same threads, medians and ratio.

Usage: .venv/bin/python bench/host_latency.py [--runs 500] [--rounds 5] [--threads 1] [--model x.tflite]

The reference is `ai_edge_litert/tools/benchmark_litert_model.py` (CompiledModel API, CPU
accelerator, i.e. XNNPACK). It rounds its results to 0.01 ms, too coarse for the demo model's
microsecond invokes, so it runs in-process here with its module clock swapped for one that
records every `perf_counter()` call; its own timing loop is untouched, only the rounding is
skipped. The two harnesses alternate (ABBA...) so drift and thermal state hit both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qcore  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from qcore.tflite.latency import benchmark  # noqa: E402

# within this ratio of the reference, qlab's numbers are the runtime's numbers
TARGET = 0.10


class _RecordingClock:
    """Stands in for the tool's `time` module and keeps every perf_counter() reading."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def perf_counter(self) -> float:
        t = time.perf_counter()
        self.stamps.append(t)
        return t

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def _argv(args: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = args
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences file descriptor 2: the runtime's C++ logs every missing NPU plugin on each load."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def reference_median(path: Path, *, runs: int, warmup: int, threads: int) -> float:
    """The reference tool's median invoke in ms, read from its own clock calls."""
    from ai_edge_litert.tools import benchmark_litert_model as tool

    argv = ["benchmark_litert_model", f"--model={path}", f"--num_runs={runs}"]
    argv += [f"--warmup_runs={warmup}", f"--num_threads={threads}"]
    with _argv(argv):
        args = tool.parse_args()
    clock = _RecordingClock()
    saved = tool.time
    tool.time = clock  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr():
            tool.run_benchmark(args)
    finally:
        tool.time = saved
    # run_benchmark reads the clock twice around the environment, twice around loading, and
    # twice around every warm-up and timed run, in that order
    expected = 4 + 2 * (warmup + runs)
    if len(clock.stamps) != expected:
        raise RuntimeError(
            f"the tool read its clock {len(clock.stamps)} times, expected {expected}"
        )
    timed = clock.stamps[-2 * runs :]
    return statistics.median((b - a) * 1e3 for a, b in zip(timed[::2], timed[1::2], strict=True))


def demo_int8() -> bytes:
    """The demo CNN (trained once, cached under data/demo) converted with the int8 recipe."""
    from qcore.engines.tf import convert
    from qcore.inputs.data import digits_dataset
    from qcore.inputs.models import demo_model

    return convert(demo_model(), "int8", digits_dataset().calibration(100))


def cnn32_int8() -> bytes:
    """A heavier CNN (32×32×3, five convolutions, random weights) so kernels, not calls, dominate."""
    import tf_keras

    from qcore.engines.tf import convert
    from qcore.qtyping import LoadedModel

    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    keras_model = tf_keras.Sequential(
        [
            layers.InputLayer(input_shape=(32, 32, 3)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10),
        ]
    )
    model = LoadedModel("cnn32", "", "demo", keras_model, (None, 32, 32, 3), (None, 10), 2)
    calibration = np.random.default_rng(0).uniform(0, 1, (32, 32, 32, 3)).astype(np.float32)
    return convert(model, "int8", calibration)


def compare(name: str, model: bytes, *, runs: int, warmup: int, rounds: int, threads: int) -> float:
    """Prints both medians per round and overall; returns qlab / reference."""
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        for r in range(rounds):
            # ABBA: whoever went second last round goes first this round
            order = ("qlab", "tool") if r % 2 == 0 else ("tool", "qlab")
            for who in order:
                if who == "qlab":
                    lat = benchmark(model, runs=runs, warmup=warmup, threads=threads, xnnpack=True)
                    ours.append(lat.p50_ms)
                else:
                    theirs.append(reference_median(path, runs=runs, warmup=warmup, threads=threads))
            print(
                f"  round {r + 1}: qlab {ours[-1] * 1e3:9.2f} us   tool {theirs[-1] * 1e3:9.2f} us"
            )
    plain = benchmark(model, runs=runs, warmup=warmup, threads=threads, xnnpack=False).p50_ms
    q, t = statistics.median(ours), statistics.median(theirs)
    ratio = q / t
    verdict = "within" if abs(ratio - 1) <= TARGET else "OUTSIDE"
    print(
        f"{name}: {len(model)} bytes, {threads} thread(s), {runs} runs x {rounds} rounds\n"
        f"  median of medians: qlab {q * 1e3:.2f} us, tool {t * 1e3:.2f} us, "
        f"ratio qlab/tool {ratio:.3f} ({verdict} {TARGET:.0%}), gap {(t - q) * 1e3:+.2f} us per invoke\n"
        f"  (qlab without XNNPACK: {plain * 1e3:.2f} us)"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--model", type=Path, help="a .tflite to time instead of the two built-in ones"
    )
    args = parser.parse_args(argv)
    # LiteRT's and the tool's INFO lines would bury the table
    logging.getLogger("benchmark_litert_model").setLevel(logging.WARNING)

    if args.model:
        models = {args.model.name: args.model.read_bytes()}
    else:
        models = {"demo int8": demo_int8(), "cnn32 int8": cnn32_int8()}
    for name, model in models.items():
        compare(
            name,
            model,
            runs=args.runs,
            warmup=args.warmup,
            rounds=args.rounds,
            threads=args.threads,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
