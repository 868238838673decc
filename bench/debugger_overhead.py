"""`qlab debug` (in-process: calibrate, debug, model metrics, derived metrics, store, CSV) vs raw QuantizationDebugger calls.

Same model, same calibration and debug samples, same metrics on both sides. Prints both times
and the overhead ratio (target: at most 10%), and checks the stored statistics equal the raw dump.
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import qcore  # noqa: E402,F401
from qcore.explain.debugger import run_debugger, stats_csv  # noqa: E402
from qcore.inputs.data import digits_dataset  # noqa: E402
from qcore.inputs.models import demo_model  # noqa: E402
from qcore.lab.publish import publish  # noqa: E402
from qcore.store import Store  # noqa: E402
from qcore.tflite.compare import MODEL_METRICS  # noqa: E402

REPEATS = 5
CALIBRATION = DEBUG = 100
NUMERIC = ("num_elements", "stddev", "mean_error", "max_abs_error", "mean_squared_error", "scale", "zero_point")


def raw_debugger(keras_model, calibration: np.ndarray, debug_x: np.ndarray) -> str:
    """Seed 004's calls, by hand: converter, debugger with the same model metrics, run, dump."""

    def gen(x: np.ndarray):
        def _g():
            for i in range(len(x)):
                yield [x[i : i + 1]]

        return _g

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen(calibration)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=gen(debug_x),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            model_debug_metrics={k: (lambda f, q, fn=fn: fn(f[0], q[0])) for k, fn in MODEL_METRICS.items()}),
    )
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    return dump.getvalue()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = demo_model(Path(tmp) / "demo")
        ds = digits_dataset()
        calibration, debug_x = ds.calibration(CALIBRATION), ds.test_inputs()[:DEBUG]
        raw_debugger(model.keras_model, calibration, debug_x)  # warm TF's tracing caches for both sides
        raw_t, qlab_t = [], []
        for i in range(REPEATS):
            t = time.perf_counter()
            dump = raw_debugger(model.keras_model, calibration, debug_x)
            raw_t.append(time.perf_counter() - t)
            with Store(Path(tmp) / f"q{i}.duckdb") as store:
                t = time.perf_counter()
                result = publish(store, run_debugger(model, ds, calibration_samples=CALIBRATION, debug_samples=DEBUG),
                                 made_from=(model, ds))
                (Path(tmp) / "stats.csv").write_text(stats_csv(result))
                qlab_t.append(time.perf_counter() - t)
                stored = store.layer_stats(result.debug_run_id)
        raw_rows = list(csv.DictReader(io.StringIO(dump)))
        assert list(stored["tensor_name"]) == [r["tensor_name"] for r in raw_rows], "layers differ"
        assert list(stored["op_name"]) == [r["op_name"] for r in raw_rows], "ops differ"
        worst = 0.0
        for key in NUMERIC:
            raw = np.array([float(r[key]) for r in raw_rows])
            mine = stored[key].to_numpy(dtype=float)
            worst = max(worst, float(np.max(np.abs(mine - raw) / np.maximum(np.abs(raw), 1e-30))))
        assert worst == 0.0, f"stored statistics differ from the raw dump (max relative difference {worst:.3g})"
    raw_s, qlab_s = statistics.median(raw_t), statistics.median(qlab_t)
    print(f"debugger on the demo model ({len(raw_rows)} layers, {CALIBRATION} calibration / {DEBUG} debug samples),"
          f" median of {REPEATS}")
    print(f"raw QuantizationDebugger calls + dump:                 {raw_s:.3f} s")
    print(f"qlab debug (+derived metrics, suspects, store, CSV):   {qlab_s:.3f} s")
    print(f"stored statistics equal the raw dump: {len(raw_rows)} rows x {len(NUMERIC)} numbers, identical")
    overhead = qlab_s / raw_s - 1
    print(f"ratio: {qlab_s / raw_s:.3f} (overhead {overhead:+.1%}, target <= +10%) -> "
          f"{'PASS' if overhead <= 0.10 else 'MISS'}")


if __name__ == "__main__":
    main()
