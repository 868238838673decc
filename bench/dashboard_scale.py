"""The dashboard at team scale: 200 models x 10 variants and 50,000 layer-stat rows.

Measures the server-side time of the /compare and /debugger page scripts (AppTest runs, cold
and warm read cache) and the DuckDB queries behind them, and how much a page polling a running
job slows that job.
Targets: under 1 s per page run, under 50 ms per query, a polled job within 1.10 × its time alone.
Run: .venv/bin/python bench/dashboard_scale.py [--models N] [--variants N] [--layer-rows N] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import qcore  # noqa: E402,F401  (Keras 2 for tf_keras, before TensorFlow loads)

PAGE_TARGET_S = 1.0
QUERY_TARGET_MS = 50.0
RECIPES = ("float32", "float16", "dynamic", "int8-fallback", "int8", "uint8", "int16x8", "int8-per-tensor",
           "uint8-per-tensor", "selective-1")
# layer rows per debugger run: a MobileNet-sized model has a few hundred quantized tensors
ROWS_PER_RUN = 500


def bulk(cur: object, target: str, rows: list[tuple[object, ...]], extra: str = "") -> None:
    """INSERT INTO target SELECT the rows (+ constant columns), through a registered DataFrame: seconds, not minutes."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    cur.register("bulk_rows", frame)  # type: ignore[attr-defined]
    cols = ", ".join(f'"{c}"' for c in frame.columns)
    cur.execute(f"INSERT INTO {target} SELECT {cols}{', ' + extra if extra else ''} FROM bulk_rows")  # type: ignore[attr-defined]
    cur.unregister("bulk_rows")  # type: ignore[attr-defined]


def fill(db: Path, models: int, variants: int, layer_rows: int) -> dict[str, int]:
    """Bulk rows through the Store's own connection, as the engine would have written them."""
    from qcore.store import Store

    rng = np.random.default_rng(0)
    store = Store(db)
    confusion = json.dumps(np.diag(np.full(10, 36)).tolist())
    with store.transaction() as cur:
        cur.executemany(
            "INSERT INTO models (id, name, format, sha256, source_path, input_shape, output_shape, keras_major)"
            " VALUES (?, ?, 'h5', ?, ?, '[null, 224, 224, 3]', '[null, 1000]', 2)",
            [(m, f"model-{m:03d}", f"{m:064x}", f"/data/uploads/{m:064x}.h5") for m in range(1, models + 1)])
        cur.execute("INSERT INTO datasets (id, name, source, sha256, n_train, n_test, num_classes)"
                    " VALUES (1, 'imagenet-val-1k', 'val.npz', repeat('d', 64), 9000, 1000, 1000)")
        cur.executemany("INSERT INTO reference_runs (model_id, dataset_id, accuracy, top5, n_samples)"
                        " VALUES (?, 1, ?, ?, 1000)",
                        [(m, 0.7 + 0.2 * rng.random(), 0.95) for m in range(1, models + 1)])
        rows, evals, metrics, benches, bmetrics = [], [], [], [], []
        for m in range(1, models + 1):
            for j in range(variants):
                vid = (m - 1) * variants + j + 1
                recipe = RECIPES[j % len(RECIPES)]
                rows.append((vid, m, recipe, "ptq", recipe, "ok", f"{vid:064x}", int(2e6 * (0.25 + rng.random())),
                             f"/data/blobs/{vid:064x}.tflite"))
                evals.append((vid, vid, confusion))
                for metric, value in (("accuracy", 0.6 + 0.3 * rng.random()), ("top5", 0.9), ("agreement", 0.97)):
                    metrics.append((vid, metric, value))
                for k, (board, target) in enumerate((("host", "host"), ("imx8mp-1", "npu"), ("imx8mp-1", "cpu"))):
                    bid = 3 * (vid - 1) + k + 1
                    benches.append((bid, vid, f"{vid:064x}", board, target))
                    for metric in ("init_ms", "first_ms", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms"):
                        bmetrics.append((bid, metric, float(rng.gamma(2.0, 3.0))))
        bulk(cur, "variants (id, model_id, name, kind, recipe, status, sha256, size_bytes, path, dataset_id)", rows,
             extra="1")
        bulk(cur, "evaluations (id, variant_id, confusion, dataset_id, n_samples, batched)", evals,
             extra="1, 1000, true")
        bulk(cur, "eval_metrics", metrics)
        bulk(cur, "benchmarks (id, variant_id, sha256, board, target, threads, xnnpack, runs, warmup)", benches,
             extra="1, true, 50, 5")
        bulk(cur, "bench_metrics", bmetrics)
        runs = max(1, layer_rows // ROWS_PER_RUN)
        stats = []
        for r in range(1, runs + 1):
            cur.execute("INSERT INTO debug_runs (id, model_id, dataset_id, settings, model_metrics) VALUES (?, ?, 1, ?, ?)",
                        [r, models - (r - 1) % models, json.dumps({"recipe": "int8", "calibration_samples": 100,
                                                                   "debug_samples": 100}),
                         json.dumps({"argmax_agreement": 0.97, "output_mse": 0.01})])
            for i in range(ROWS_PER_RUN):
                scale = float(rng.gamma(2.0, 0.02))
                mse = float((scale * (0.289 + rng.gamma(1.0, 0.15))) ** 2)
                stats.append((r, i, "CONV_2D" if i % 3 else "ADD", i, f"block_{i // 10}/conv_{i}/Relu6", 1e4,
                              1.0, 0.0, 0.1, mse, scale, -128.0, 255.0 * scale, float(np.sqrt(mse) / scale)))
        bulk(cur, "layer_stats (debug_run_id, row_idx, op_name, tensor_idx, tensor_name, num_elements, stddev,"
                  " mean_error, max_abs_error, mean_squared_error, scale, zero_point, range, rmse_scale)", stats)
    # the rows took explicit ids; advance each sequence past them so the dashboard's own inserts work
    with store.transaction() as cur:
        for seq, table in (("seq_models", "models"), ("seq_variants", "variants"), ("seq_evaluations", "evaluations"),
                           ("seq_benchmarks", "benchmarks"), ("seq_debug_runs", "debug_runs")):
            top = cur.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0
            cur.execute(f"SELECT max(nextval('{seq}')) FROM range({int(top)})")
    counts = {t: int(store.query(f"SELECT count(*) AS n FROM {t}")["n"][0])
              for t in ("models", "variants", "evaluations", "benchmarks", "layer_stats")}
    store.close()
    return counts


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of `reps` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--layer-rows", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--poll-reps", type=int, default=3,
                        help="conversions timed alone and with the page polling (0 skips the case)")
    parser.add_argument("--poll-only", action="store_true", help="only the polling case")
    args = parser.parse_args()
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    if args.poll_only:
        ratio = polling_slowdown(Path(tempfile.mkdtemp(prefix="qlab-poll-")), max(1, args.poll_reps))
        print(f"  fragment polled / alone: {ratio:.3f} (target <= {POLL_SLOWDOWN_TARGET})  "
              f"{'ok' if ratio <= POLL_SLOWDOWN_TARGET else 'OVER'}")
        return 0 if ratio <= POLL_SLOWDOWN_TARGET else 1

    folder = Path(tempfile.mkdtemp(prefix="qlab-scale-"))
    db = folder / "qlab.duckdb"
    t0 = time.perf_counter()
    counts = fill(db, args.models, args.variants, args.layer_rows)
    print(f"filled {db} in {time.perf_counter() - t0:.1f} s: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))

    os.environ.update(QLAB_DB=str(db), QLAB_DATA_DIR=str(folder), QLAB_BOOTSTRAP="0")
    from streamlit.testing.v1 import AppTest

    # AppTest has no Streamlit runtime; the cache's note about that is noise here
    logging.getLogger("streamlit.runtime.caching.cache_data_api").addFilter(
        lambda record: "No runtime found" not in record.getMessage())

    from dashboard.services import reads
    from dashboard.services.lab import lab

    store = lab().store
    newest = int(store.models()["id"].max())
    run_id = int(store.debug_runs(newest)["id"].iloc[0])
    vids = [int(v) for v in store.variant_summary(model_ids=[newest])["variant_id"]]

    print("\nDuckDB queries behind the pages (median ms; target < 50):")
    queries = {
        "/compare  models list": lambda: store.models(),
        "/compare  variant_summary(1 model)": lambda: store.variant_summary(model_ids=[newest]),
        "/compare  variant_summary(20 models)": lambda: store.variant_summary(model_ids=list(range(newest - 19,
                                                                                                   newest + 1))),
        "/         variant_summary(all 2,000)": lambda: store.variant_summary(),
        "/compare  confusion x10": lambda: [store.confusion(v) for v in vids],
        "/debugger debug_runs(model)": lambda: store.debug_runs(newest),
        "/debugger layer_stats(500 rows)": lambda: store.layer_stats(run_id),
        "/debugger tune_runs(model)": lambda: store.tune_runs(newest),
    }
    worst_query = 0.0
    for name, fn in queries.items():
        ms = timed(fn, args.reps)
        worst_query = max(worst_query, ms if "all 2,000" not in name else 0.0)
        print(f"  {name:42s} {ms:8.1f} ms  {'ok' if ms < QUERY_TARGET_MS else 'OVER'}")

    print("\nPage scripts, server side (median s over runs; target < 1):")
    twenty = list(range(newest - 19, newest + 1))
    scenarios: list[tuple[str, str, Callable[[AppTest], object] | None]] = [
        ("compare", "1 model, 10 variants", None),
        ("compare", "20 models, 200 variants", lambda at: at.multiselect(key="compare_models").set_value(twenty)),
        ("debugger", "500-row run", None),
        ("overview", "2,000 variants", None),
    ]
    worst_page = 0.0
    for page, what, interact in scenarios:
        path = REPO / "dashboard" / "app_pages" / f"{page}.py"
        AppTest.from_file(str(path), default_timeout=120).run()  # imports and first plotly use
        for label, clear in (("cold read cache", True), ("warm read cache", False)):
            times = []
            for _ in range(args.reps):
                if clear:
                    reads.clear()
                at = AppTest.from_file(str(path), default_timeout=120)
                if interact is not None:  # choose the widgets' values, then time the rerun they cause
                    at.run()
                    interact(at)
                    if clear:
                        reads.clear()
                t0 = time.perf_counter()
                at.run()
                times.append(time.perf_counter() - t0)
                assert not at.exception, [e.value for e in at.exception]
            s = statistics.median(times)
            worst_page = max(worst_page, s)
            shown = f"{len(at.dataframe[0].value):,} table rows, {len(at.get('plotly_chart'))} figures"
            print(f"  /{page:9s} {what:24s} {label:16s} {s:6.3f} s  {'ok' if s < PAGE_TARGET_S else 'OVER'}  ({shown})")
    print(f"\nworst page run {worst_page:.3f} s (target < {PAGE_TARGET_S} s); worst page query {worst_query:.1f} ms "
          f"(target < {QUERY_TARGET_MS} ms)")
    polling_ok = True
    if args.poll_reps > 0:
        ratio = polling_slowdown(Path(tempfile.mkdtemp(prefix="qlab-poll-")), args.poll_reps)
        polling_ok = ratio <= POLL_SLOWDOWN_TARGET
        print(f"  fragment polled / alone: {ratio:.3f} (target <= {POLL_SLOWDOWN_TARGET})  "
              f"{'ok' if polling_ok else 'OVER'}")
    return 0 if worst_page < PAGE_TARGET_S and worst_query < QUERY_TARGET_MS and polling_ok else 1


# a page open on a running job may cost the job at most this factor of its time alone
POLL_SLOWDOWN_TARGET = 1.10
# the recipes of the timed conversion: CPU-bound, a few seconds each on the demo CNN
POLL_RECIPES = ["int8", "uint8", "int8-per-tensor", "float16"]


def polling_slowdown(folder: Path, reps: int) -> float:
    """A conversion job's wall time with /quantize open on it, over its time alone.

    Two ways of polling, each once a second as the browser does: the job panel's fragment (the
    job row and the landed rows from the read cache: what an open page costs), and the whole
    page re-run (a harsher case, printed for reference). Alone and polled runs alternate, so
    machine load hits them alike.

    Returns:
        median(fragment-polled) / median(alone): the figure the 1.10 target applies to.
    """
    from datetime import datetime

    from streamlit.testing.v1 import AppTest

    from dashboard import ui
    from dashboard.services import pace, reads, tables
    from dashboard.services.lab import close, lab
    from qcore.jobs.contract import ConvertParams, DemoParams

    os.environ.update(QLAB_DB=str(folder / "qlab.duckdb"), QLAB_DATA_DIR=str(folder), QLAB_BOOTSTRAP="0")
    the_lab = lab()
    demo = the_lab.runner.submit(DemoParams(recipes="float32"))  # trains the demo CNN once, registers digits
    the_lab.runner.wait(demo, timeout=900)
    assert the_lab.store.job(demo).status == "done", the_lab.store.job(demo).error
    page = REPO / "dashboard" / "app_pages" / "quantize.py"
    params = ConvertParams(model_id=1, dataset_id=1, recipes=tuple(POLL_RECIPES), bench=False)

    def fragment(job_id: int) -> None:
        # what ui.job_panel's fragment and quantize's show_landed read on every poll
        job = the_lab.store.job(job_id)
        partial = job.result or {}
        pace.convert_status(partial, pace.since(job.created_at, datetime.now()))
        ids = tuple(int(v["variant_id"]) for v in partial.get("variants", []) if v.get("variant_id") is not None)
        if ids:
            tables.compare_table(reads.variants(the_lab.db_key, variant_ids=ids))

    def whole_page(job_id: int) -> None:
        at = AppTest.from_file(str(page), default_timeout=120)
        at.run()
        assert not at.exception, [e.value for e in at.exception]

    def one(poll: Callable[[int], None] | None) -> float:
        reads.clear()
        t0 = time.perf_counter()
        job_id = the_lab.runner.submit(params)
        while the_lab.store.job(job_id).status in ("queued", "running"):
            if poll is not None:
                poll(job_id)
            time.sleep(ui.POLL_SECONDS)
        the_lab.runner.wait(job_id, timeout=900)
        return time.perf_counter() - t0

    whole_page(0)  # imports, outside the timings
    runs: dict[str, list[float]] = {"alone": [], "fragment": [], "whole page": []}
    for _ in range(reps):
        runs["alone"].append(one(None))
        runs["fragment"].append(one(fragment))
        runs["whole page"].append(one(whole_page))
    print(f"\nA {len(POLL_RECIPES)}-recipe conversion with /quantize polled every {ui.POLL_SECONDS:g} s "
          f"({reps} runs each, alternating):")
    for name, times in runs.items():
        print(f"  {name:10s} median {statistics.median(times):6.2f} s  ({', '.join(f'{t:.2f}' for t in times)})")
    print(f"  whole page re-run every poll / alone: "
          f"{statistics.median(runs['whole page']) / statistics.median(runs['alone']):.3f} (for reference)")
    close(the_lab)
    return statistics.median(runs["fragment"]) / statistics.median(runs["alone"])


if __name__ == "__main__":
    sys.exit(main())
