"""The pandas behind the pages: compare table, best variant per model, jobs, latency labels, drift."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.services import tables
from qcore.qtyping import Job, JobStatus


def _summary() -> pd.DataFrame:
    return pd.DataFrame({
        "variant_id": [1, 2, 3, 4], "model_id": [1, 1, 1, 2], "model": ["m1", "m1", "m1", "m2"],
        "variant": ["float32", "int8", "broken", "int8"], "kind": ["ptq"] * 4,
        "status": ["ok", "ok", "failed", "ok"], "error": [None, None, "refused", None],
        "float_accuracy": [0.95, 0.95, 0.95, 0.80], "accuracy": [0.95, 0.95, np.nan, 0.79],
        "top5": [1.0, 1.0, np.nan, 0.99], "agreement": [1.0, 0.99, np.nan, 0.97],
        "size_bytes": [8192, 4096, np.nan, 2048], "host_p50_ms": [0.5, 0.2, np.nan, np.nan],
        "board_p50_ms": [np.nan, 0.1, np.nan, np.nan], "input_dtype": ["float32", "int8", None, "int8"],
        "output_dtype": ["float32", "int8", None, "int8"],
    })


def test_compare_table_columns_and_drop() -> None:
    out = tables.compare_table(_summary())
    assert list(out.columns) == list(tables.COMPARE_COLUMNS.values())
    assert out["size (KiB)"].tolist()[:2] == [8.0, 4.0]
    # the sign says which way: one point lost reads -1
    assert round(out["Δ vs float (points)"].iloc[3], 2) == -1.0
    assert out["I/O"].tolist()[1] == "int8 → int8"  # no stored verdict: the variant's own dtypes
    assert out["NPU"].tolist()[0] == "–"


def test_compare_table_npu_verdict_and_size_vs_float() -> None:
    df = _summary().assign(
        npu_ready=[False, True, None, True], npu_label=["❌ 3 float ops → CPU", "✅ integer-only", None, "✅ integer-only"],
        npu_io=["float32 → float32", "int8 → int8", None, "uint8 → uint8"],
        float_size_bytes=[8192, 8192, 8192, np.nan],
    )
    out = tables.compare_table(df)
    # labels stored before they were words get their marks spelled out: no emoji font needed
    assert out["NPU"].tolist() == ["not NPU-ready: 3 float ops → CPU", "NPU-ready: integer-only", "–",
                                   "NPU-ready: integer-only"]
    assert out["size vs float (×)"].tolist()[:2] == [1.0, 0.5]
    assert pd.isna(out["size vs float (×)"].iloc[3])


def test_compare_table_empty_keeps_columns() -> None:
    assert list(tables.compare_table(pd.DataFrame()).columns) == list(tables.COMPARE_COLUMNS.values())


def test_best_per_model_ties_go_to_the_smaller_file_and_failed_never_win() -> None:
    best = tables.best_per_model(_summary()).set_index("model")
    assert best.at["m1", "most accurate"] == "int8"  # same accuracy as float32, half the size
    assert best.at["m1", "smallest"] == "int8"
    assert best.at["m1", "fastest (host)"] == "int8"
    assert best.at["m1", "variants"] == 2
    assert pd.isna(best.at["m2", "fastest (host)"])  # m2 was never timed


def test_best_per_model_without_ok_variants_is_empty() -> None:
    df = _summary().assign(status="failed")
    assert tables.best_per_model(df).empty


def test_jobs_table_shows_error_in_place_of_message() -> None:
    job = Job(7, "convert", JobStatus.FAILED, 0.4, "failed", {}, None, "recipe int8 refused CUSTOM_OP",
              "2026-01-01 10:00:00.123", "2026-01-01 10:00:01.456")
    row = tables.jobs_table([job]).iloc[0]
    assert row["message"] == "recipe int8 refused CUSTOM_OP"
    assert row["created"] == "2026-01-01 10:00:00"


def test_bench_for_plot_labels_variants_and_marks_host() -> None:
    bench = pd.DataFrame({"benchmark_id": [1, 2], "variant_id": [2, 99], "sha256": ["a" * 64, "b" * 64],
                          "board": ["host", "imx"], "target": ["host", "npu"], "p50_ms": [0.2, 0.1],
                          "first_ms": [0.3, 500.0]})
    out = tables.bench_for_plot(bench, _summary())
    assert out["label"].tolist() == ["sha bbbbbbbb", "m1 / int8"]  # newest first; unknown variant by sha
    assert out["target"].tolist() == ["npu", "host"]


def test_drift_table_points_against_host() -> None:
    evals = pd.DataFrame({"variant_id": [2, 2], "device": ["host", "board:imx/npu"], "n_samples": [360, 360],
                          "accuracy": [0.95, 0.94], "top5": [1.0, 1.0], "agreement": [0.99, None],
                          "host_agreement": [None, 0.98]})
    row = tables.drift_table(evals, _summary()).iloc[0]
    assert row["variant"] == "m1 / int8" and row["device"] == "imx/npu"
    assert row["drift (points)"] == -1.0
    assert row["agreement with host"] == 0.98


def test_npu_state_reads_duckdb_null_booleans() -> None:
    from dashboard.components.tradeoff import tradeoff_scatter
    from dashboard.services import npu_view

    # a store whose variants have no verdict hands over a nullable boolean column of pd.NA
    df = _summary().assign(npu_ready=pd.array([None, True, None, None], dtype="boolean"))
    assert npu_view.ready({"npu_ready": pd.NA}) is None
    assert npu_view.verdict_line({"npu_ready": pd.NA}) == npu_view.NOT_LINTED
    fig = tradeoff_scatter(df[df["status"] == "ok"], "size_bytes", "accuracy")
    assert set(next(t for t in fig.data if t.name == "variants").marker.symbol) == {"circle-open-dot", "circle"}


def test_latency_matrix_benchmarked_variants_by_board_and_target() -> None:
    from dashboard.services import boards_view

    bench = pd.DataFrame({"label": ["m / int8", "m / int8", "m / int8", "m / uint8"],
                          "board": ["imx", "imx", "host", "imx"], "target": ["npu", "npu", "host", "cpu"],
                          "p50_ms": [0.4, 9.0, 1.2, 2.0]})  # newest first: the second npu row is older
    table = boards_view.latency_matrix(bench).set_index("variant")
    assert list(table.index) == ["m / int8", "m / uint8"]
    assert table.at["m / int8", "imx · npu"] == 0.4 and table.at["m / int8", "this host"] == 1.2
    assert pd.isna(table.at["m / uint8", "imx · npu"])
    assert set(boards_view.TARGET_HELP) == set(boards_view.TARGETS)


def _npu_candidates() -> pd.DataFrame:
    """MobileNetV2-like choices: float32 (CPU), int8-fallback (float I/O), int8 and two per-tensor variants."""
    return pd.DataFrame({
        "variant_id": [1, 2, 3, 4, 5], "model_id": 1, "model": "mnv2",
        "variant": ["float32", "int8-fallback", "int8", "int8-per-tensor", "uint8-per-tensor"],
        "engine": ["tf", "tf", "tf", "tf", "aeq"], "status": "ok", "float_accuracy": 0.92,
        "accuracy": [0.92, 0.921, 0.915, 0.88, 0.912], "size_bytes": [1_600_000, 520_000, 510_000, 500_000, 505_000],
        "npu_ready": [False, False, True, True, True], "board_p50_ms": np.nan, "host_p50_ms": np.nan,
    })


def test_npu_pick_ready_within_budget_then_fastest_or_smallest() -> None:
    df = _npu_candidates()
    # no board timing: the smallest NPU-ready variant within a point of float (int8-per-tensor lost 4 points)
    pick = tables.npu_pick(df, 1.0)
    assert (pick.variant_id, pick.variant) == (5, "uint8-per-tensor") and "smallest of 2" in pick.words
    assert pick.words.startswith("Best for the NPU: uint8-per-tensor (#5, AI Edge Quantizer)")
    # timed on a board: the fastest of the candidates, whatever its size
    pick = tables.npu_pick(df, 1.0, latency={3: 1.2, 5: 1.9, 4: 0.5}, where="imx8mp / npu")
    assert pick.variant == "int8" and "1.2 ms p50 on imx8mp / npu" in pick.words
    # a wider budget lets the fast per-tensor one in
    assert tables.npu_pick(df, 5.0, latency={3: 1.2, 5: 1.9, 4: 0.5}).variant == "int8-per-tensor"
    # nothing within budget, or nothing NPU-ready: the page says why and what to try
    none = tables.npu_pick(df, 0.1)
    assert none.variant_id is None and "closest, int8 (#3), loses 0.50 points" in none.words
    assert "No NPU-ready variant here" in tables.npu_pick(df.assign(npu_ready=False)).words


def test_best_per_model_names_the_npu_pick() -> None:
    best = tables.best_per_model(_npu_candidates()).set_index("model")
    assert best.at["mnv2", "best for the NPU"] == "uint8-per-tensor"
    assert best.at["mnv2", "most accurate"] == "int8-fallback"  # not NPU-ready: the NPU column says otherwise
    none = tables.best_per_model(_npu_candidates().assign(npu_ready=False)).set_index("model")
    assert none.at["mnv2", "best for the NPU"] == "no NPU-ready variant"


def test_board_latency_prefers_the_npu_target_and_the_newest_timing() -> None:
    timings = pd.DataFrame({"variant_id": [3, 3, 3, 5], "board": ["imx", "imx", "imx", "imx"],
                            "target": ["npu", "npu", "cpu", "cpu"], "p50_ms": [1.0, 2.0, 0.5, 3.0]})
    latency, where = tables.board_latency(timings, "imx")
    assert latency == {3: 1.0} and where == "imx / npu"
    latency, where = tables.board_latency(timings[timings["target"] == "cpu"], "imx")
    assert latency == {3: 0.5, 5: 3.0} and where == "imx / fastest target"


def test_selector_labels_tell_apart_reruns_and_imports() -> None:
    """A second "mnv2 / int8@aeq" made on other data, and a bundle's second "mnv2", read differently."""
    a = {"variant_id": 3, "model": "mnv2", "variant": "int8@aeq", "dataset": "digits32", "accuracy": 0.92, "status": "ok"}
    b = {**a, "variant_id": 9, "dataset": "digits32-raw", "accuracy": 0.1975}
    assert tables.variant_label(a) == "#3 mnv2 / int8@aeq · digits32 · 92.00%"
    assert tables.variant_label(b) == "#9 mnv2 / int8@aeq · digits32-raw · 19.75%"
    assert tables.variant_label({**a, "accuracy": None, "status": "failed"}) == "#3 mnv2 / int8@aeq · digits32 · failed"
    own = {"id": 1, "name": "mnv2", "format": "h5", "source_path": "/data/mnv2.h5", "created_at": "2026-12-06 21:40:12"}
    copy = {**own, "id": 4, "format": "tflite", "source_path": "imported: int8 for the NPU"}
    assert tables.model_label(own) == "#1 mnv2 (h5, 2026-12-06 21:40)"
    assert tables.model_label(copy) == "#4 mnv2 (tflite, from report 'int8 for the NPU', 2026-12-06 21:40)"


def test_last_dataset_is_the_newest_variants() -> None:
    df = pd.DataFrame({"variant_id": [1, 2, 3], "dataset_id": [4, 5, None],
                       "updated_at": ["2026-12-06 10:00", "2026-12-06 11:00", "2026-12-06 12:00"]})
    assert tables.last_dataset(df) == 5
    assert tables.last_dataset(df.iloc[0:0]) is None
