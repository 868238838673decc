"""AI Edge Quantizer against the TF converter, side by side in one run: every recipe, per-layer error, the search.

Two MobileNetV2s built offline (`weights=None`):
- alpha 0.35 at 32x32, trained briefly on digits (8x8 upsampled to 32x32, three channels): timing and
  the accuracy table;
- alpha 1.0 at 224x224, untrained: timing only (random calibration data; accuracy means nothing).

Sample counts are modest because this machine has 2 shared cores: CALIBRATION training samples
calibrate, DEBUG test samples feed the per-layer error; at 224x224 fewer of both (see LARGE_*).
Usage: python bench/engine_speed.py [--skip-large]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qcore  # noqa: E402,F401
from qcore.engines import resolve_recipes  # noqa: E402
from qcore.explain.debugger import run_debugger  # noqa: E402
from qcore.explain.search import tune  # noqa: E402
from qcore.inputs.data import digits_dataset  # noqa: E402
from qcore.lab.convert import convert_and_evaluate  # noqa: E402
from qcore.qtyping import Dataset, LoadedModel  # noqa: E402

CALIBRATION = 100
DEBUG = 100
LARGE_CALIBRATION = 10
LARGE_DEBUG = 5
EPOCHS = 6
# the search's budget: a tight one so it has to keep layers in float on the small model
MAX_DROP = 0.5


def digits32() -> Dataset:
    """Digits as 32x32x3 images in [0, 1]: each pixel repeated 4x4, copied to three channels."""
    d = digits_dataset()

    def up(x: np.ndarray) -> np.ndarray:
        big = np.kron(x, np.ones((1, 4, 4), dtype=x.dtype))
        return np.repeat(big[..., None], 3, axis=-1).astype(np.float32)

    return dataclasses.replace(d, name="digits32", x_train=up(d.x_train), x_test=up(d.x_test))


def mobilenet(alpha: float, size: int, ds: Dataset | None) -> LoadedModel:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None, classes=10,
                                            classifier_activation=None)
    if ds is not None:
        # Keras' MobileNetV2 uses BatchNorm momentum 0.999: a few hundred steps leave the moving statistics
        # near their initial values and the inference-mode model at chance; 0.9 settles within this budget
        for layer in net.layers:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.momentum = 0.9
        net.compile(tf_keras.optimizers.Adam(2e-3),
                    tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        net.fit(ds.x_train, ds.y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    name = f"mobilenetv2_{alpha:g}_{size}"
    return LoadedModel(name, "", "demo", net, (None, size, size, 3), (None, 10), 2)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def ratio(tf_s: float, aeq_s: float) -> str:
    return f"{tf_s / aeq_s:5.1f}x" if aeq_s > 0 else "inf"


def run(model: LoadedModel, ds: Dataset, cal: int, dbg: int, *, search: bool, convert: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if convert:
        t_tf, tf_rep = timed(lambda: convert_and_evaluate(model, ds, resolve_recipes("all", "tf"),
                                                          calibration_samples=cal))
        t_ae, ae_rep = timed(lambda: convert_and_evaluate(model, ds, resolve_recipes("all", "aeq"),
                                                          calibration_samples=cal, engine="aeq"))
        out["convert"] = (t_tf, t_ae)
        out["reports"] = (tf_rep, ae_rep)
        print(f"[{model.name}] convert --recipes all (incl. evaluation): tf {t_tf:7.1f} s  aeq {t_ae:7.1f} s  "
              f"{ratio(t_tf, t_ae)}", flush=True)
    t_tf, _ = timed(lambda: run_debugger(model, ds, calibration_samples=cal, debug_samples=dbg))
    t_ae, _ = timed(lambda: run_debugger(model, ds, calibration_samples=cal, debug_samples=dbg, engine="aeq"))
    out["debug"] = (t_tf, t_ae)
    print(f"[{model.name}] time to per-layer error: TF QuantizationDebugger {t_tf:7.1f} s  aeq {t_ae:7.1f} s  "
          f"{ratio(t_tf, t_ae)}" + ("" if convert else " (aeq makes the float32 file in this run)"), flush=True)
    if not convert:
        t_warm, _ = timed(lambda: run_debugger(model, ds, calibration_samples=cal, debug_samples=dbg,
                                               engine="aeq"))
        print(f"[{model.name}] time to per-layer error again (float32 file already made): aeq {t_warm:7.1f} s  "
              f"{ratio(t_tf, t_warm)}", flush=True)
    if search:
        t_tf, r_tf = timed(lambda: tune(model, ds, max_drop=MAX_DROP, calibration_samples=cal, debug_samples=dbg))
        t_ae, r_ae = timed(lambda: tune(model, ds, max_drop=MAX_DROP, calibration_samples=cal, debug_samples=dbg,
                                        engine="aeq", deploy_engine="aeq"))
        out["search"] = (t_tf, t_ae)

        def verdict(r: Any) -> str:
            if r.chosen is None:
                return "no denylist reaches the target"
            return f"{len(r.chosen.denylist)} layers in float, acc {r.chosen.accuracy:.4f}, {len(r.tried)} trials"

        print(f"[{model.name}] float-layer search to float - {MAX_DROP} points (target {r_tf.target_accuracy:.4f}):"
              f" tf {t_tf:7.1f} s ({verdict(r_tf)})  aeq {t_ae:7.1f} s ({verdict(r_ae)})  {ratio(t_tf, t_ae)}",
              flush=True)
    return out


def accuracy_table(res: dict[str, Any]) -> None:
    tf_rep, ae_rep = res["reports"]
    tf_by = {v.recipe: v for v in tf_rep.variants}
    print(f"\nAccuracy on {len(digits_dataset().y_test)} digits test samples (float Keras {tf_rep.float_accuracy:.4f})")
    print(f"{'recipe':<18} {'tf':>8} {'aeq':>8} {'gap (pts)':>10}")
    for v in ae_rep.variants:
        t = tf_by.get(v.recipe)
        a = v.evaluation.accuracy if v.evaluation else float("nan")
        b = t.evaluation.accuracy if t is not None and t.evaluation else float("nan")
        gap = 100 * (a - b) if np.isfinite(a) and np.isfinite(b) else float("nan")
        flag = "" if not np.isfinite(gap) or abs(gap) <= 0.5 else "  > 0.5"
        print(f"{v.recipe:<18} {b:8.4f} {a:8.4f} {gap:10.2f}{flag}" + (f"  ({v.error})" if v.error else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-large", action="store_true", help="skip the 224x224 timing model")
    parser.add_argument("--only-large", action="store_true", help="only the 224x224 timing model")
    parser.add_argument("--skip-convert", action="store_true",
                        help="skip convert --recipes all (and the accuracy table): per-layer error and search only")
    args = parser.parse_args()
    ds = digits32()
    if not args.only_large:
        t_train, small = timed(lambda: mobilenet(0.35, 32, ds))
        print(f"trained MobileNetV2 alpha 0.35 at 32x32 on digits for {EPOCHS} epochs in {t_train:.0f} s "
              f"({CALIBRATION} calibration, {DEBUG} debug samples)", flush=True)
        res = run(small, ds, CALIBRATION, DEBUG, search=True, convert=not args.skip_convert)
        if "reports" in res:
            accuracy_table(res)
    if not args.skip_large:
        rng = np.random.default_rng(0)
        big_ds = dataclasses.replace(
            ds, name="random224", x_train=rng.uniform(0, 1, (LARGE_CALIBRATION, 224, 224, 3)).astype(np.float32),
            x_test=rng.uniform(0, 1, (LARGE_DEBUG, 224, 224, 3)).astype(np.float32),
            y_train=np.zeros(LARGE_CALIBRATION, dtype=np.int64), y_test=np.zeros(LARGE_DEBUG, dtype=np.int64))
        print(f"\nMobileNetV2 alpha 1.0 at 224x224, untrained, timing only ({LARGE_CALIBRATION} calibration, "
              f"{LARGE_DEBUG} debug samples of random data)", flush=True)
        run(mobilenet(1.0, 224, None), big_ds, LARGE_CALIBRATION, LARGE_DEBUG, search=False)


if __name__ == "__main__":
    main()
