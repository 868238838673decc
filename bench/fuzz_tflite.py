"""Fuzzes the .tflite readers with seeded mutations of real models and prints the counts.

Every mutated file goes through `qcore.tflite.inspection.inspect`, `qcore.tflite.inspection.npu_verdict`
and the agent's `board_agent.uploads.check_tflite`, in this process: each must either read the
file or refuse it with its own error (QlabError / UploadError). Anything else is a crash of the
calling process and is counted (and the first few are printed with the seed to replay them).

Then a sample of the mutants the agent accepts is run by the agent's real runner child
(`python -m board_agent.runner`, the process the agent spawns per job): a native crash inside
LiteRT there is counted as a killed child, and this process carries on.

    python bench/fuzz_tflite.py [--n 10000] [--seed 0] [--runtime-sample 40]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import qcore  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from board_agent.uploads import UploadError, check_tflite  # noqa: E402
from qcore.qtyping import QlabError  # noqa: E402
from qcore.tflite.inspection import inspect, npu_verdict  # noqa: E402

# a reader that takes longer than this on one mutant is counted as a hang
PER_FILE_TIMEOUT_S = 5
_INTERESTING_32 = (0, 1, 2, 4, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                   0xFFFFFFFE, 0x10000, 0x100000)


def seed_models() -> dict[str, bytes]:
    """A couple of tiny real models converted here: float32 CNN, int8 CNN, int8 dense with softmax."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    cnn = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(10)])
    dense = keras.Sequential([keras.layers.Input((16,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3), keras.layers.Softmax()])
    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {"cnn_float32": tf.lite.TFLiteConverter.from_keras_model(cnn).convert()}
    for name, model, shape in (("cnn_int8", cnn, (1, 8, 8, 1)), ("dense_int8", dense, (1, 16))):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda s=shape: ([rng.random(s, dtype=np.float32)] for _ in range(8))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
        out[name] = conv.convert()
    return out


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """One to eight random edits; the TFL3 identifier is usually kept so the readers go deep."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        n = len(buf)
        if n < 16:
            break
        if kind < 0.30:  # flip bits
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif kind < 0.55:  # an interesting 32-bit value at an aligned offset (offsets, lengths, indices)
            i = rng.randrange(0, n - 4) & ~3
            struct.pack_into("<I", buf, i, rng.choice(_INTERESTING_32) if rng.random() < 0.7 else
                             rng.getrandbits(32))
        elif kind < 0.65:  # a small delta to a 32-bit field
            i = rng.randrange(0, n - 4) & ~3
            v = struct.unpack_from("<i", buf, i)[0] + rng.choice((-8, -4, -1, 1, 4, 8, 64))
            struct.pack_into("<i", buf, i, max(-2**31, min(2**31 - 1, v)))
        elif kind < 0.72:  # a 16-bit vtable entry
            i = rng.randrange(0, n - 2) & ~1
            struct.pack_into("<H", buf, i, rng.choice((0, 2, 4, 0xFF, 0xFFFF, rng.getrandbits(16))))
        elif kind < 0.80:  # truncate
            del buf[rng.randrange(8, n):]
        elif kind < 0.87:  # delete or duplicate a chunk
            i = rng.randrange(8, n)
            j = min(n, i + rng.randint(1, 256))
            if rng.random() < 0.5:
                del buf[i:j]
            else:
                buf[i:i] = buf[i:j]
        elif kind < 0.94:  # splice in part of another model
            other = rng.choice(others)
            i, j = rng.randrange(8, n), rng.randrange(8, len(other))
            k = rng.randint(4, 512)
            buf[i:i + k] = other[j:j + k]
        else:  # random bytes
            i = rng.randrange(8, n)
            k = rng.randint(1, 64)
            buf[i:i + k] = bytes(rng.getrandbits(8) for _ in range(k))
    if rng.random() < 0.9 and len(buf) >= 8:
        buf[4:8] = b"TFL3"
    return bytes(buf)


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


def check(fn: Callable[[bytes], Any], data: bytes, refusals: tuple[type[BaseException], ...]) -> str:
    """'ok', 'refused', 'hang' or 'crash:<ExceptionType>' for one reader on one file."""
    signal.alarm(PER_FILE_TIMEOUT_S)
    try:
        fn(data)
        return "ok"
    except refusals:
        return "refused"
    except _Hang:
        return "hang"
    except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer counts
        return f"crash:{type(exc).__name__}"
    finally:
        signal.alarm(0)


READERS: dict[str, tuple[Callable[[bytes], Any], tuple[type[BaseException], ...]]] = {
    "qcore.inspect": (inspect, (QlabError,)),
    "qcore.npu_verdict": (npu_verdict, (QlabError,)),
    "agent.check_tflite": (check_tflite, (UploadError,)),
}


def fuzz(models: dict[str, bytes], n: int, seed: int, *, show: int = 5) -> tuple[dict[str, Counter[str]],
                                                                                list[bytes], list[str]]:
    """Runs `n` mutants through every reader in this process.

    Returns:
        (counts per reader, the mutants the agent accepted, crash reports).
    """
    rng = random.Random(seed)
    sources = list(models.values())
    counts: dict[str, Counter[str]] = {name: Counter() for name in READERS}
    accepted: list[bytes] = []
    crashes: list[str] = []
    signal.signal(signal.SIGALRM, _alarm)
    for i in range(n):
        data = mutate(rng, rng.choice(sources), sources)
        for name, (fn, refusals) in READERS.items():
            outcome = check(fn, data, refusals)
            counts[name][outcome.split(":")[0]] += 1
            if outcome.startswith(("crash", "hang")):
                if len(crashes) < show:
                    try:
                        fn(data)
                    except Exception:  # noqa: BLE001
                        crashes.append(f"#{i} {name}: {traceback.format_exc(limit=3)}")
            if name == "agent.check_tflite" and outcome == "ok":
                accepted.append(data)
    return counts, accepted, crashes


def run_in_agent_child(datas: list[bytes], timeout: float = 30.0) -> Counter[str]:
    """Runs mutants the agent accepted through its real runner child; counts how each child ended."""
    out: Counter[str] = Counter()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryDirectory(prefix="qlab-fuzz-") as tmp:
        for i, data in enumerate(datas):
            model = Path(tmp) / f"{i}.tflite"
            model.write_bytes(data)
            spec_path, result = Path(tmp) / f"{i}.spec.json", Path(tmp) / f"{i}.result.json"
            spec_path.write_text(json.dumps({"mode": "benchmark", "model": str(model), "target": "cpu",
                                             "threads": 1, "runs": 2, "warmup": 0, "result": str(result)}))
            try:
                proc = subprocess.run([sys.executable, "-m", "board_agent.runner", str(spec_path)], env=env,
                                      cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, timeout=timeout, start_new_session=True)
            except subprocess.TimeoutExpired:
                out["child timed out (killed)"] += 1
                continue
            if proc.returncode < 0:
                out[f"child killed by {signal.Signals(-proc.returncode).name}"] += 1
            elif proc.returncode == 0:
                out["ran"] += 1
            else:
                out["refused by the runtime"] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="mutated files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runtime-sample", type=int, default=40,
                   help="accepted mutants run by the agent's runner child (about a second each)")
    args = p.parse_args(argv)
    models = seed_models()
    print(f"seed models: {', '.join(f'{k} ({len(v)} B)' for k, v in models.items())}")
    t0 = time.perf_counter()
    counts, accepted, crashes = fuzz(models, args.n, args.seed)
    took = time.perf_counter() - t0
    print(f"{args.n} mutants (seed {args.seed}) in {took:.1f} s, in this process:")
    for name, c in counts.items():
        print(f"  {name:20s} ok {c['ok']:6d}  refused {c['refused']:6d}  crash {c['crash']:4d}  hang {c['hang']:4d}")
    for report in crashes:
        print(report)
    sample = accepted[: args.runtime_sample]
    if sample:
        ends = run_in_agent_child(sample)
        print(f"{len(sample)} mutants the agent accepts, each run by the agent's runner child: "
              + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))
        print("this process survived every child")
    total_crashes = sum(c["crash"] + c["hang"] for c in counts.values())
    print(f"crashes of the calling process: {total_crashes}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
