"""`qlab convert --recipes all` (in-process: convert, verify, evaluate, store) vs the same conversions as raw TF calls.

Prints both times and the overhead ratio (target: at most 10%).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import qcore  # noqa: E402,F401
from qcore.engines import resolve_recipes  # noqa: E402
from qcore.inputs.data import digits_dataset  # noqa: E402
from qcore.inputs.models import demo_model  # noqa: E402
from qcore.lab.convert import convert_and_evaluate  # noqa: E402
from qcore.lab.publish import publish  # noqa: E402
from qcore.store import Store  # noqa: E402

REPEATS = 3


def raw_conversions(keras_model, calibration: np.ndarray) -> list[bytes]:
    """The nine recipes written out as plain TFLiteConverter calls, as a user would by hand."""

    def rep():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    def conv(**kw) -> bytes:
        c = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        if kw.get("opt"):
            c.optimizations = [tf.lite.Optimize.DEFAULT]
        if kw.get("fp16"):
            c.target_spec.supported_types = [tf.float16]
        if kw.get("rep"):
            c.representative_dataset = rep
        if kw.get("ops"):
            c.target_spec.supported_ops = kw["ops"]
        if kw.get("io"):
            c.inference_input_type = c.inference_output_type = kw["io"]
        if kw.get("per_tensor"):
            c._experimental_disable_per_channel = True
        return c.convert()

    int8 = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    x16 = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return [
        conv(),
        conv(opt=True, fp16=True),
        conv(opt=True),
        conv(opt=True, rep=True),
        conv(opt=True, rep=True, ops=int8, io=tf.int8),
        conv(opt=True, rep=True, ops=int8, io=tf.uint8),
        conv(opt=True, rep=True, ops=x16),
        conv(opt=True, rep=True, ops=int8, io=tf.int8, per_tensor=True),
        conv(opt=True, rep=True, ops=int8, io=tf.uint8, per_tensor=True),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = demo_model(Path(tmp) / "demo")
        ds = digits_dataset()
        calibration = ds.calibration(100)
        raw_conversions(model.keras_model, calibration)  # warm TF's tracing caches for both sides
        raw_t, qlab_t = [], []
        for i in range(REPEATS):
            t = time.perf_counter()
            raw = raw_conversions(model.keras_model, calibration)
            raw_t.append(time.perf_counter() - t)
            with Store(Path(tmp) / f"q{i}.duckdb") as store:
                t = time.perf_counter()
                report = publish(store, convert_and_evaluate(model, ds, resolve_recipes("all", "tf")),
                                 made_from=(model, ds))
                qlab_t.append(time.perf_counter() - t)
            assert all(v.error == "" for v in report.variants)
            assert len(raw) == len(report.variants)
    raw_s, qlab_s = statistics.median(raw_t), statistics.median(qlab_t)
    print(f"9 recipes on the demo model, median of {REPEATS}")
    print(f"raw TFLiteConverter calls:                         {raw_s:.3f} s")
    print(f"qlab convert --recipes all (+verify, eval, publish): {qlab_s:.3f} s")
    overhead = qlab_s / raw_s - 1
    print(f"ratio: {qlab_s / raw_s:.3f} (overhead {overhead:+.1%}, target <= +10%) -> {'PASS' if overhead <= 0.10 else 'MISS'}")


if __name__ == "__main__":
    main()
