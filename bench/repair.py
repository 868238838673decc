"""Repairs on MobileNetV2 networks of the failing kind: accuracy per recipe before and after, time against a conversion.

Networks: tf_keras.applications.MobileNetV2(alpha, input_shape=(S, S, 3), weights=None, classes=10),
BatchNormalization momentum lowered to 0.9 so the moving statistics settle in a short training, trained
briefly on scikit-learn's digits resized (bilinear) to S x S x 3.

A briefly trained network does not have the failure the issue describes (its BN statistics never spread
far), so the bench prints it as trained, then makes it of the failing kind the way BN folding makes real
MobileNets fail: every depthwise BN's gamma and beta are multiplied by k_c drawn log-uniformly in
[1e-2, 1] (a 100x spread of the folded depthwise kernels and of their activations) and the project
conv's input channel c is divided by k_c. Through ReLU6 that is exact wherever the activation stays
under the clip; the spread network's own float accuracy is the baseline its repairs are held to.

Prints, measured side by side in one run:
- accuracy per recipe (Keras float, TF int8, TF int8-per-tensor, AEQ int8-per-tensor) before any repair
  and after each repair and combination (each repair targets the recipe of its column), with the NPU
  verdict of the int8-per-tensor file;
- the time of each repair call (and of its steps) against one int8-per-tensor conversion of the same
  model, wall and CPU (the machine is shared; CPU seconds are the steadier figure);
- the issue's three targets, met or missed.

Usage: python -m qcore.quiet bench/repair.py [--sizes 0.35x32,1.0x96] [--epochs 10] [--epochs-large 2]
       [--calibration 128] [--adaround-iterations 500] [--combos cle,cle+bias,...] [--simulate-activations]
       [--no-aeq] [--full]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qcore  # noqa: E402,F401  (Keras 2 for tf_keras, before TensorFlow loads)
from qcore.engines import aeq  # noqa: E402
from qcore.engines.tf import convert  # noqa: E402
from qcore.inputs.data import digits_dataset  # noqa: E402
from qcore.qtyping import Dataset, LoadedModel, QlabError  # noqa: E402
from qcore.repair import RepairResult, RepairSettings, repair  # noqa: E402
from qcore.tflite.evaluate import evaluate_tflite  # noqa: E402
from qcore.tflite.inspection import npu_verdict  # noqa: E402

# the depthwise spread the failing kind gets: folded channel ranges over two orders of magnitude
SPREAD_DECADES = 2.0
# the targets
WITHIN_FLOAT = 0.01
CLE_BIAS_CONVERSIONS = 1.0
ADAROUND_CONVERSIONS = 10.0
# the repairs compared, each against int8-per-tensor; --full adds the rest
DEFAULT_COMBOS = ("cle", "cle,absorb", "cle,bias", "cle,absorb,bias", "adaround", "cle,adaround",
                  "cle,absorb,adaround,bias")
LARGE_COMBOS = ("cle,bias", "cle,adaround")
# which of them also get an int8 (per-channel) and an AEQ int8-per-tensor column by default
INT8_COLUMN = ("cle", "cle,bias")
AEQ_COLUMN = ("cle,bias", "cle,adaround")


@dataclasses.dataclass
class Timed:
    wall: float
    cpu: float
    value: Any


def timed(fn: Callable[[], Any]) -> Timed:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return Timed(time.perf_counter() - wall, time.process_time() - cpu, value)


def resized(size: int) -> Dataset:
    """Digits as size x size x 3 images (bilinear from 8 x 8, grey repeated over three channels)."""
    import tensorflow as tf

    ds = digits_dataset()

    def up(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(tf.image.resize(x[..., None], (size, size), method="bilinear")), 3, axis=-1)

    return dataclasses.replace(ds, name=f"digits{size}", x_train=up(ds.x_train).astype(np.float32),
                               x_test=up(ds.x_test).astype(np.float32))


def trained(alpha: float, size: int, ds: Dataset, epochs: int) -> LoadedModel:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.applications.MobileNetV2(alpha=alpha, input_shape=(size, size, 3), weights=None, classes=10,
                                            classifier_activation=None)
    for layer in net.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.9
    net.compile(tf_keras.optimizers.Adam(2e-3), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=32, verbose=0)
    return LoadedModel(f"mobilenetv2_{alpha}_{size}", "", "demo", net, (None, size, size, 3), (None, 10), 2)


def spread(model: LoadedModel) -> LoadedModel:
    """A copy whose depthwise BN channels are scaled by k_c in [1e-2, 1], undone in the project conv."""
    import tf_keras

    net = tf_keras.models.clone_model(model.keras_model)
    net.set_weights(model.keras_model.get_weights())
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if not layer.name.endswith("depthwise_BN"):
            continue
        gamma, beta, mean, var = layer.get_weights()
        k = (10.0 ** rng.uniform(-SPREAD_DECADES, 0.0, size=gamma.shape)).astype(np.float32)
        k[0], k[-1] = 10.0**-SPREAD_DECADES, 1.0
        layer.set_weights([gamma * k, beta * k, mean, var])
        project = net.get_layer(layer.name[: -len("depthwise_BN")] + "project")
        project.set_weights([project.get_weights()[0] / k.reshape(1, 1, -1, 1), *project.get_weights()[1:]])
    return dataclasses.replace(model, name=model.name + "-spread", keras_model=net)


def keras_accuracy(model: LoadedModel, ds: Dataset) -> float:
    x = ds.test_inputs()
    out = np.concatenate([np.asarray(model.keras_model(x[i : i + 256], training=False)) for i in range(0, len(x), 256)])
    return float((out.argmax(axis=1) == ds.y_test).mean())


def tf_accuracy(model: LoadedModel, recipe: str, ds: Dataset, calibration: np.ndarray) -> tuple[float, bytes]:
    tflite = convert(model, recipe, calibration)
    return evaluate_tflite(tflite, ds).accuracy, tflite


def aeq_accuracy(model: LoadedModel, ds: Dataset, calibration: np.ndarray) -> str:
    try:
        return f"{evaluate_tflite(aeq.convert(model, 'int8-per-tensor', calibration), ds).accuracy:.3f}"
    except QlabError as exc:
        return "refused: " + str(exc)[:60]


def row(label: str, cells: list[str]) -> None:
    print(f"  {label:<34}" + "".join(f"{c:>12}" for c in cells[:-1]) + f"   {cells[-1]}", flush=True)


def bench(alpha: float, size: int, epochs: int, combos: tuple[str, ...], args: argparse.Namespace,
          int8_column: tuple[str, ...], aeq_column: tuple[str, ...]) -> dict[str, Any]:
    ds = resized(size)
    calibration = ds.calibration(args.calibration)
    t = timed(lambda: trained(alpha, size, ds, epochs))
    base: LoadedModel = t.value
    print(f"\n=== MobileNetV2 alpha {alpha}, {size}x{size}x3, {len(base.keras_model.layers)} layers; trained "
          f"{epochs} epochs on {len(ds.x_train)} digits in {t.wall:.0f} s; {args.calibration} calibration "
          f"samples, {len(ds.y_test)} test digits; load average {os.getloadavg()[0]:.1f}", flush=True)
    settings = RepairSettings(adaround_iterations=args.adaround_iterations,
                              simulate_activations=args.simulate_activations)
    header = ["float", "int8", "int8-pt", "AEQ int8-pt", "repair s", "x conv", "int8-pt NPU"]
    print("  accuracy (int8-pt: int8-per-tensor; x conv: the repair call's wall time over one int8-pt conversion)")
    row("", header)
    float_acc = keras_accuracy(base, ds)
    int8_acc, _ = tf_accuracy(base, "int8", ds, calibration)
    pt = timed(lambda: tf_accuracy(base, "int8-per-tensor", ds, calibration))
    row("as trained, no repair", [f"{float_acc:.3f}", f"{int8_acc:.3f}", f"{pt.value[0]:.3f}", "", "", "",
                                  npu_verdict(pt.value[1]).label])
    failing = spread(base)
    spread_float = keras_accuracy(failing, ds)
    int8_acc, _ = tf_accuracy(failing, "int8", ds, calibration)
    conv = timed(lambda: tf_accuracy(failing, "int8-per-tensor", ds, calibration))
    row("spread, no repair", [f"{spread_float:.3f}", f"{int8_acc:.3f}", f"{conv.value[0]:.3f}",
                              aeq_accuracy(failing, ds, calibration) if args.aeq else "", "", "",
                              npu_verdict(conv.value[1]).label])
    # the per-tensor conversion includes evaluation; time one plain conversion for the ratios
    one = timed(lambda: convert(failing, "int8-per-tensor", calibration))
    results: dict[str, tuple[Timed, float, bool]] = {}
    for combo in combos:
        r = timed(lambda c=combo: repair(failing, c, calibration, recipe="int8-per-tensor", settings=settings))
        result: RepairResult = r.value
        acc, tflite = tf_accuracy(result.model, "int8-per-tensor", ds, calibration)
        verdict = npu_verdict(tflite)
        int8_cell = ""
        if combo in int8_column:
            per_channel = repair(failing, combo, calibration, recipe="int8", settings=settings)
            int8_cell = f"{tf_accuracy(per_channel.model, 'int8', ds, calibration)[0]:.3f}"
        aeq_cell = aeq_accuracy(result.model, ds, calibration) if args.aeq and combo in aeq_column else ""
        row(f"spread + {result.label.split(' + ', 1)[1]}",
            [f"{keras_accuracy(result.model, ds):.3f}", int8_cell, f"{acc:.3f}", aeq_cell, f"{r.wall:.1f}",
             f"{r.wall / one.wall:.2f}", verdict.label])
        results[combo] = (r, acc, verdict.ready)
    print(f"  one int8-per-tensor conversion: {one.wall:.1f} s wall, {one.cpu:.1f} s CPU")
    print("  repair calls (wall / CPU, and per step):")
    for combo, (r, _, _) in results.items():
        steps = ", ".join(f"{s.method} {s.seconds:.2f}" for s in r.value.steps)
        print(f"    {combo:<26} {r.wall:6.1f} s / {r.cpu:6.1f} s CPU = {r.wall / one.wall:5.2f} / "
              f"{r.cpu / max(one.cpu, 1e-9):5.2f} conversions  [{steps}]")
    widest: RepairResult = max((r.value for r, _, _ in results.values()), key=lambda v: len(v.steps))
    by_method: dict[str, list[str]] = {}
    for s in widest.skipped:
        by_method.setdefault(s.method, []).append(s.layer)
    print(f"  {len(widest.relu6_replaced)} ReLU6 -> ReLU; skipped by name ({widest.label}): "
          + "; ".join(f"{m} {len(names)} ({', '.join(names[:2])}, ...)" for m, names in by_method.items()))
    cle_step = next((s for r, _, _ in results.values() for s in r.value.steps if s.method == "cle"), None)
    if cle_step is not None and cle_step.drift is not None:
        d = cle_step.drift
        print(f"  float drift after fold + CLE (ReLU6 -> ReLU) on the calibration samples: max {d.max_abs:.4g}, "
              f"mean {d.mean_abs:.4g}, {d.max_rel:.2%} of the largest output")
    return {"float": spread_float, "one": one, "results": results}


def targets(small: dict[str, Any]) -> None:
    float_acc = small["float"]
    results: dict[str, tuple[Timed, float, bool]] = small["results"]
    one: Timed = small["one"]
    print("\n=== targets (on the smallest network)")
    best_combo, (_, best, ready) = max(results.items(), key=lambda kv: kv[1][1])
    ok = best >= float_acc - WITHIN_FLOAT and ready
    print(f"  int8-per-tensor within {WITHIN_FLOAT:.0%} of float, every op integer: best {best:.3f} ({best_combo}) "
          f"vs float {float_acc:.3f}, NPU-ready {ready} -> {'MET' if ok else 'MISSED'}")
    if "cle,bias" in results:
        r = results["cle,bias"][0]
        ratio, cpu = r.wall / one.wall, r.cpu / max(one.cpu, 1e-9)
        print(f"  CLE + bias correction <= {CLE_BIAS_CONVERSIONS:g} conversion: {ratio:.2f} (wall), {cpu:.2f} (CPU) "
              f"-> {'MET' if max(ratio, cpu) <= CLE_BIAS_CONVERSIONS else 'MISSED'}")
    rounded = [c for c in results if "adaround" in c]
    if rounded:
        r = results["cle,adaround" if "cle,adaround" in results else rounded[0]][0]
        step = next(s.seconds for s in r.value.steps if s.method == "adaround")
        ratio, cpu = r.wall / one.wall, r.cpu / max(one.cpu, 1e-9)
        print(f"  AdaRound <= {ADAROUND_CONVERSIONS:g} conversions: the adaround step {step:.1f} s, the whole call "
              f"{ratio:.2f} (wall), {cpu:.2f} (CPU) conversions -> "
              f"{'MET' if max(ratio, cpu) <= ADAROUND_CONVERSIONS else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.35x32,1.0x96", help="alpha x size per network (default 0.35x32,1.0x96)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the first network (default 10)")
    ap.add_argument("--epochs-large", type=int, default=2, help="training epochs of the others (default 2)")
    ap.add_argument("--calibration", type=int, default=128, help="calibration samples (default 128)")
    ap.add_argument("--adaround-iterations", type=int, default=RepairSettings().adaround_iterations,
                    help="AdaRound steps per layer")
    ap.add_argument("--combos", default=",".join(c.replace(",", "+") for c in DEFAULT_COMBOS),
                    help="repairs of the first network, combinations joined by + (default: %(default)s)")
    ap.add_argument("--simulate-activations", action="store_true",
                    help="bias correction and AdaRound also round activations in their quantized stream")
    ap.add_argument("--no-aeq", dest="aeq", action="store_false", help="leave out AI Edge Quantizer's column")
    ap.add_argument("--full", action="store_true",
                    help="every combination on every network, with int8 and AEQ columns (hours on 2 cores)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    started = time.perf_counter()
    first: dict[str, Any] | None = None
    for i, spec in enumerate(args.sizes.split(",")):
        alpha, size = spec.split("x")
        if i == 0 or args.full:
            combos = tuple(c.replace("+", ",") for c in args.combos.split(","))
            int8_column, aeq_column = INT8_COLUMN, AEQ_COLUMN
        else:
            combos, int8_column, aeq_column = LARGE_COMBOS, (), ()
        if args.full:
            int8_column = aeq_column = combos
        out = bench(float(alpha), int(size), args.epochs if i == 0 else args.epochs_large, combos, args,
                    int8_column, aeq_column)
        first = first or out
    if first is not None:
        targets(first)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} at the end "
          "(a shared machine: the wall figures are noisy)")


if __name__ == "__main__":
    main()
