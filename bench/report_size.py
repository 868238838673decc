"""The HTML export's size on the issue-19 report: MobileNetV2-sized variants, two debugger runs, board timings.

Builds the report for real, once: a MobileNetV2 (alpha 0.35, 32x32x3, 10 classes, 64 quantized layers;
random weights, as the test suite's `mnv2` fixture shapes it) converted with every TF recipe and AEQ's int8 on
digits upsampled to 32x32, each variant evaluated and timed on this host (and given a board timing,
so the board charts exist), and the debugger run with both engines. Then prints, side by side on the
same report and the same figures:
- the export as it was before issue 19 item 4 (each figure as Plotly HTML, plotly.js inline once);
- the export as it is (the same figures drawn as inline SVG, no script).

Target: the export under 1 MB (1,000,000 bytes).
Run: .venv/bin/python -m qcore.quiet bench/report_size.py [--recipes all] [--aeq-recipes int8] [--engines tf,aeq]
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import qcore  # noqa: E402,F401  (Keras 2 for tf_keras, before TensorFlow loads)
from qcore.engines import resolve_recipes  # noqa: E402
from qcore.explain.debugger import run_debugger  # noqa: E402
from qcore.inputs.data import digits_dataset  # noqa: E402
from qcore.lab.convert import convert_and_evaluate  # noqa: E402
from qcore.lab.publish import publish  # noqa: E402
from qcore.qtyping import Dataset, Latency, LoadedModel, QlabError  # noqa: E402
from qcore.store import Store  # noqa: E402
from qcore.tflite.latency import benchmark  # noqa: E402

TARGET_BYTES = 1_000_000
# few samples: the sizes do not depend on them, and the run fits a shared 2-core machine
CALIBRATION = 8
DEBUG = 4


def build() -> tuple[LoadedModel, Dataset]:
    """MobileNetV2 alpha 0.35 at 32x32x3 (64 quantized layers) and the digits upsampled 4x to 32x32x3."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10)
    d = digits_dataset()

    def up(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.kron(x, np.ones((4, 4), np.float32))[..., None], 3, axis=-1)

    ds = Dataset("digits32", up(d.x_train[:64]), d.y_train[:64], up(d.x_test[:64]), d.y_test[:64],
                 source="digits", class_names=d.class_names)
    return LoadedModel("mnv2", "", "demo", net, (None, 32, 32, 3), (None, 10), 2), ds


def plotly_html(report: dict[str, Any], figures: list[tuple[str, Any]]) -> str:
    """The export as it was before: the same tables, each figure as Plotly HTML with plotly.js inline once."""
    from qcore.lab.reports import render_html

    page = render_html(report)
    parts = []
    for i, (caption, fig) in enumerate(figures):
        fig.update_layout(width=None, autosize=True)
        parts.append(f"<div class='fig'><h3>{html.escape(caption)}</h3>"
                     + fig.to_html(full_html=False, include_plotlyjs=i == 0, default_width="100%",
                                   config={"responsive": True}) + "</div>")
    return page.replace("</body></html>", "\n".join(parts) + "\n</body></html>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="all", help="TF recipes to convert (default all: nine)")
    ap.add_argument("--aeq-recipes", default="int8", help="AEQ recipes to convert too (default int8: ten in all)")
    ap.add_argument("--engines", default="tf,aeq", help="debugger engines, one run each (default tf,aeq)")
    args = ap.parse_args()
    from dashboard.services import report_view
    from qcore.lab.reports import make_report

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    model, ds = build()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "qlab.duckdb") as store:
        for engine, recipes in (("tf", args.recipes), ("aeq", args.aeq_recipes)):
            t = time.perf_counter()
            report = publish(store, convert_and_evaluate(model, ds, resolve_recipes(recipes, engine),
                                                         calibration_samples=CALIBRATION, engine=engine),
                             data_dir=tmp, made_from=(model, ds))
            print(f"converted and evaluated {len(report.variants)} variants on {engine} in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        variants = store.variant_summary()
        for row in variants.itertuples():
            if row.status != "ok":
                continue
            data = store.blob_path(str(row.sha256)).read_bytes()
            try:
                lat = benchmark(data, runs=5, warmup=1, threads=1)
            except QlabError as exc:  # LiteRT refusing a model is a finding, not a crash
                print(f"  {row.variant}: not timed ({str(exc).splitlines()[0][:100]})")
                continue
            store.add_benchmark(lat, sha256=str(row.sha256), board="host", variant_id=int(row.variant_id))
            # a board timing of the same shape, so the report's board charts are drawn as the were
            board = Latency(target="npu", threads=1, xnnpack=False, runs=5, warmup=1, init_ms=1.0,
                            first_ms=lat.first_ms * 40, min_ms=lat.min_ms / 3, mean_ms=lat.mean_ms / 3,
                            p50_ms=lat.p50_ms / 3, p90_ms=lat.p90_ms / 3, p99_ms=lat.p99_ms / 3, std_ms=0.0)
            store.add_benchmark(board, sha256=str(row.sha256), board="imx8mp-evk", variant_id=int(row.variant_id))
        layers = []
        for engine in args.engines.split(","):
            t = time.perf_counter()
            result = publish(store, run_debugger(model, ds, engine=engine, recipe="int8",
                                                 calibration_samples=CALIBRATION, debug_samples=DEBUG),
                             data_dir=tmp, made_from=(model, ds))
            layers.append(len(result.stats))
            print(f"debugger on {engine}: {len(result.stats)} layers in {time.perf_counter() - t:.0f} s", flush=True)
        ids = [int(v) for v in store.variant_summary()["variant_id"]]
        stored = store.report(make_report(store, "mnv2: every recipe", "", ids))
        figures = report_view.figures(stored["content"])
        t = time.perf_counter()
        svg = report_view.html(stored).encode()
        svg_s = time.perf_counter() - t
        t = time.perf_counter()
        before = plotly_html(stored, report_view.figures(stored["content"])).encode()
        before_s = time.perf_counter() - t
    content = stored["content"]
    ops = [len(e.get("rows") or []) for e in (content.get("op_cost") or {}).values()]
    print(f"\nreport: {len(content['variants'])} variants, debugger runs of {layers} layers "
          f"({len(content.get('debugger') or [])} in the report's worst-layers section), "
          f"{len(ops)} per-op tables of {max(ops, default=0)} ops, {len(figures)} figures")
    print(f"  before (Plotly HTML, plotly.js inline): {len(before):>10,} bytes  ({before_s:.2f} s to render)")
    print(f"  now (inline SVG, no script):            {len(svg):>10,} bytes  ({svg_s:.2f} s to render)")
    print(f"  ratio now/before: {len(svg) / len(before):.3f}; target under {TARGET_BYTES:,} bytes -> "
          f"{'PASS' if len(svg) < TARGET_BYTES else 'MISS'}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
