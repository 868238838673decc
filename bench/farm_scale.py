"""The board farm's scaling: the same matrix (variants x the cpu target) on 1 agent and on 3 agents.

Each agent is a real `python -m board_agent` process on 127.0.0.1; the matrix runs through
`qcore.boards.runs.matrix` ("any free board" of the pool) into a temporary DuckDB. Prints the wall
time of each, their ratio, the machine's core count and each agent's share of the CPU time.

Target: ratio >= 0.8 x min(3, cores) (>= 1.6 on a 2-core machine).
Run: .venv/bin/python bench/farm_scale.py [--variants N] [--runs N]

Each cell is a job in a fresh runner child (Python + LiteRT start-up, ~0.3 s of CPU), so cells of a
few hundred invokes of a tiny model measure process start-up more than the farm; the default of
1000 invokes per cell keeps the model's own work the larger part, as on a board.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import qcore  # noqa: E402,F401  (Keras 2 for tf_keras, before TensorFlow loads)
from tests.board_agent.harness import TOKEN, AgentProcess, agent_process  # noqa: E402

TARGET_FRACTION = 0.8
POOL = "tag=bench"


def build_models(n: int) -> list[bytes]:
    """n small int8 CNNs on 96x96x3 (random weights, widths differ): a few ms per invoke on one thread."""
    import tensorflow as tf
    import tf_keras as keras

    out = []
    for i in range(n):
        keras.utils.set_random_seed(i)
        layers = [keras.layers.Input((96, 96, 3))]
        for filters in (16 + 8 * i, 32 + 8 * i, 64):
            layers += [keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu"),
                       keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")]
        layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
        conv = tf.lite.TFLiteConverter.from_keras_model(keras.Sequential(layers))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        rng = np.random.default_rng(i)
        conv.representative_dataset = lambda rng=rng: ([rng.random((1, 96, 96, 3), dtype=np.float32)]
                                                       for _ in range(4))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        out.append(bytes(conv.convert()))
    return out


def store_variants(store: object, models: list[bytes]) -> list[int]:
    """The models as variants of one synthetic model/dataset row pair, as an import would store them."""
    from qcore.store import Store, sha256_bytes

    assert isinstance(store, Store)
    model_id = store.add_model(name="farm-bench", format="tflite", sha256=sha256_bytes(b"farm-bench"),
                               source_path="bench", input_shape=[None, 96, 96, 3], output_shape=[None, 10],
                               keras_major=None)
    dataset_id = store.add_dataset(name="none", source="bench", sha256="0" * 64, input_scale=1.0, input_offset=0.0,
                                   n_train=0, n_test=1, num_classes=10)
    return [store.save_variant(model_id=model_id, dataset_id=dataset_id, name=f"cnn-{i}", kind="imported",
                               recipe=None, tflite=m) for i, m in enumerate(models)]


def run(agents: list[AgentProcess], models: list[bytes], runs: int, work: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of the matrix on `agents` and each agent's CPU seconds during it."""
    from qcore.boards.runs import matrix
    from qcore.store import Store

    with Store(work / f"farm-{len(agents)}.duckdb") as store:
        vids = store_variants(store, models)
        for a in agents:
            store.add_board(a.name, a.url, TOKEN)
            store.set_board_labels(a.name, [("tag", "bench")])
        cpu0 = {a.name: a.cpu_seconds() for a in agents}
        t0 = time.perf_counter()
        result = matrix(store, vids, ["cpu"], pool=POOL, placement="any", runs=runs, warmup=2)
        wall = time.perf_counter() - t0
        cpu = {a.name: a.cpu_seconds() - cpu0[a.name] for a in agents}
        if result.failed:
            raise SystemExit(f"{len(result.failed)} cell(s) failed: {result.failed[0].reason}")
    return wall, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", type=int, default=12, help="cells of the matrix (one cpu cell per variant)")
    p.add_argument("--runs", type=int, default=1000, help="timed invokes per cell")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"building {args.variants} int8 models ...", flush=True)
    models = build_models(args.variants)
    with tempfile.TemporaryDirectory(prefix="qlab-farm-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        agents = [stack.enter_context(agent_process(work / f"agent-{i}", f"bench-{i}", queue=1))
                  for i in range(3)]
        one, cpu_one = run(agents[:1], models, args.runs, work)
        three, cpu_three = run(agents, models, args.runs, work)
    ratio = one / three
    target = TARGET_FRACTION * min(3, cores)
    total = sum(cpu_three.values()) or 1.0
    print(f"cores: {cores}   matrix: {args.variants} variants x cpu, {args.runs} runs per cell")
    print(f"1 agent : {one:7.2f} s wall   (agent CPU {cpu_one['bench-0']:.1f} s)")
    print(f"3 agents: {three:7.2f} s wall   CPU share: "
          + ", ".join(f"{k} {v / total:.0%} ({v:.1f} s)" for k, v in cpu_three.items()))
    print(f"wall-time ratio 1/3 agents: {ratio:.2f}x   target >= {target:.2f}x (0.8 x min(3, {cores} cores))   "
          + ("PASS" if ratio >= target else "MISS"))
    return 0 if ratio >= target else 1


if __name__ == "__main__":
    sys.exit(main())
