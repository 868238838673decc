"""Reports: the snapshot, the self-contained HTML, and the bundle another qlab imports."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

from qcore.lab import reports
from qcore.qtyping import Evaluation, Latency, QlabError, VariantStatus
from qcore.store import Store, sha256_bytes
from qcore.tflite.inspection import npu_verdict


def _ev(acc: float) -> Evaluation:
    return Evaluation(accuracy=acc, top5=1.0, agreement=0.99, confusion=((9, 1), (0, 10)), n_samples=20,
                      batched=True)


def _lat(target: str, p50: float) -> Latency:
    return Latency(target=target, threads=1, xnnpack=target != "cpu-plain", runs=10, warmup=2, init_ms=1.0,
                   first_ms=p50 * 10, min_ms=p50, mean_ms=p50, p50_ms=p50, p90_ms=p50, p99_ms=p50, std_ms=0.0,
                   extra={"peak_rss_mb": 30.0})


def _fill(store: Store, tiny_tflite: dict[str, bytes]) -> list[int]:
    """Two converted variants and one failed, with host and board results."""
    model_id = store.add_model(name="demo", format="h5", sha256="e" * 64, source_path="/x/demo.h5",
                               input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    dataset_id = store.add_dataset(name="digits", source="digits", sha256="d" * 64, input_scale=1.0,
                                   input_offset=0.0, n_train=1437, n_test=20, num_classes=2)
    store.set_reference(model_id, dataset_id, 0.95, 1.0, 20)
    ids = []
    for name, acc in (("float32", 0.95), ("int8", 0.95 - 0.05)):
        ids.append(store.save_variant(model_id=model_id, dataset_id=dataset_id, name=name, kind="ptq", recipe=name,
                                      tflite=tiny_tflite[name], input_dtype="float32", output_dtype="float32",
                                      evaluation=_ev(acc), npu=npu_verdict(tiny_tflite[name])))
    ids.append(store.save_variant(model_id=model_id, dataset_id=dataset_id, name="int16x8", kind="ptq",
                                  recipe="int16x8", status=VariantStatus.FAILED, error="refused op X"))
    store.add_benchmark(_lat("host", 0.2), sha256=sha256_bytes(tiny_tflite["int8"]), board="host", variant_id=ids[1])
    store.add_benchmark(_lat("npu", 0.05), sha256=sha256_bytes(tiny_tflite["int8"]), board="imx", variant_id=ids[1])
    store.add_evaluation(ids[1], dataset_id, _ev(0.85), device="board:imx/npu", extra_metrics={"host_agreement": 0.9})
    return ids


def test_make_report_snapshots_variants_results_and_confusion(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    report_id = reports.make_report(tmp_store, "int8 for the NPU", "notes *here*", ids)
    report = tmp_store.report(report_id)
    content = report["content"]
    assert [v["variant"] for v in content["variants"]] == ["float32", "int8", "int16x8"]
    assert {b["board"] for b in content["benchmarks"]} == {"host", "imx"}
    assert {e["device"] for e in content["evaluations"]} == {"host", "board:imx/npu"}
    assert content["confusion"][str(ids[0])] == [[9, 1], [0, 10]]
    assert str(ids[2]) not in content["confusion"]  # the failed variant has no evaluation
    json.dumps(content)  # JSON-safe: no NaN objects, no timestamps


def test_make_report_snapshot_does_not_follow_later_runs(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    report_id = reports.make_report(tmp_store, "before", "", ids[:1])
    tmp_store.add_evaluation(ids[0], 1, _ev(0.10))
    assert tmp_store.report(report_id)["content"]["variants"][0]["accuracy"] == pytest.approx(0.95)


def test_make_report_without_title(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    with pytest.raises(QlabError, match="needs a title"):
        reports.make_report(tmp_store, "  ", "", ids)


def test_make_report_without_variants(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="at least one variant"):
        reports.make_report(tmp_store, "t", "", [])


def test_make_report_unknown_variant(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    with pytest.raises(QlabError, match="no variant with id 999"):
        reports.make_report(tmp_store, "t", "", [ids[0], 999])


def test_render_html_is_self_contained(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    report = tmp_store.report(reports.make_report(tmp_store, "A <b>title</b>", "line 1\nline 2", ids))
    figs = [("one", go.Figure(go.Bar(x=[1], y=[2]))), ("two", go.Figure(go.Bar(x=[3], y=[4])).to_dict()),
            ("three", go.Figure(go.Pie(values=[1, 2], name="share")))]
    page = reports.render_html(report, figs)
    assert page.startswith("<!DOCTYPE html>")
    assert "A &lt;b&gt;title&lt;/b&gt;" in page  # escaped, never injected
    # the charts are inline SVG: no JavaScript at all, no plotly.js, nothing fetched
    assert "<script" not in page and "plotly" not in page.lower() and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", "")
    assert page.count("<svg") == 3 and len(page) < 100_000
    # what the export cannot draw, it says in words
    assert "<p class='fig-note'>Not drawn in this export: a pie trace (share).</p>" in page
    # a figure whose data is broken says so in words; the others and the tables are all there
    broken = {"data": [{"type": "bar", "x": ["a"], "y": {"dtype": "f8", "bdata": "not base64!"}}]}
    page = reports.render_html(report, [("broken", broken), *figs])
    assert "<h3>broken</h3><p class='fig-note'>This figure could not be drawn in this export (" in page
    assert page.count("<svg") == 3 and "On-board accuracy" in page
    assert "On-board accuracy" in page and "<td>imx/npu</td>" in page


def test_render_html_without_figures_has_tables(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    page = reports.render_html(tmp_store.report(reports.make_report(tmp_store, "t", "", ids)))
    assert "int16x8" in page and "<svg" not in page


def test_export_import_bundle_into_another_store(tmp_store: Store, tiny_tflite, tmp_path: Path) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    report_id = reports.make_report(tmp_store, "share me", "notes", ids)
    bundle = reports.export_bundle(tmp_store, report_id)
    names = set(zipfile.ZipFile(io.BytesIO(bundle)).namelist())
    assert {"report.json", "variants.parquet", "benchmarks.parquet", "evaluations.parquet"} <= names
    assert f"tflite/{sha256_bytes(tiny_tflite['int8'])}.tflite" in names
    variants = pd.read_parquet(io.BytesIO(zipfile.ZipFile(io.BytesIO(bundle)).read("variants.parquet")))
    assert variants["variant"].tolist() == ["float32", "int8", "int16x8"]

    other = Store(tmp_path / "other" / "qlab.duckdb")
    try:
        new_id = reports.import_bundle(other, bundle)
        imported = other.report(new_id)
        assert imported["title"] == "share me" and new_id != report_id
        summary = other.variant_summary().set_index("variant")
        assert set(summary.index) == {"float32", "int8", "int16x8"}
        assert (summary["kind"] == "imported").all()
        assert summary.at["int8", "accuracy"] == pytest.approx(0.90)
        assert summary.at["int16x8", "status"] == "failed"
        blob = other.blob_path(sha256_bytes(tiny_tflite["int8"]))
        assert blob.read_bytes() == tiny_tflite["int8"]
        new_ids = [v["variant_id"] for v in imported["content"]["variants"]]
        assert set(new_ids) == set(other.variant_summary()["variant_id"])
        boards = other.benchmarks(board="imx")
        assert boards["p50_ms"].tolist() == [0.05] and boards["variant_id"].tolist() == [summary.at["int8", "variant_id"]]
        drift = other.device_evaluations([int(summary.at["int8", "variant_id"])]).set_index("device")
        assert drift.at["board:imx/npu", "host_agreement"] == pytest.approx(0.9)
        assert other.confusion(int(summary.at["int8", "variant_id"])) == [[9, 1], [0, 10]]
    finally:
        other.close()


def test_import_bundle_twice_gives_each_import_its_own_copy(tmp_store: Store, tiny_tflite, tmp_path: Path) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    bundle = reports.export_bundle(tmp_store, reports.make_report(tmp_store, "t", "", ids[:2]))
    other = Store(tmp_path / "o.duckdb")
    try:
        reports.import_bundle(other, bundle)
        reports.import_bundle(other, bundle)
        assert len(other.variant_summary()) == 4
        assert len(other.models()) == 2
        assert len(other.reports()) == 2
    finally:
        other.close()


def _bundle_with(meta: dict | None = None, extra: dict[str, bytes] | None = None, raw_json: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if raw_json is not None:
            zf.writestr("report.json", raw_json)
        elif meta is not None:
            zf.writestr("report.json", json.dumps(meta))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_import_bundle_not_a_zip(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="not a zip"):
        reports.import_bundle(tmp_store, b"hello")


def test_import_bundle_without_report_json(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="report.json is missing"):
        reports.import_bundle(tmp_store, _bundle_with(extra={"x.txt": b"1"}))


def test_import_bundle_invalid_json(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="not valid JSON"):
        reports.import_bundle(tmp_store, _bundle_with(raw_json=b"{nope"))


def test_import_bundle_wrong_format(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="no format 'qlab-report-bundle'"):
        reports.import_bundle(tmp_store, _bundle_with({"format": "other", "version": 1}))


def test_import_bundle_newer_version(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="version 99 is not supported"):
        reports.import_bundle(tmp_store, _bundle_with({"format": reports.BUNDLE_FORMAT, "version": 99}))


def test_import_bundle_tampered_tflite(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    bundle = reports.export_bundle(tmp_store, reports.make_report(tmp_store, "t", "", ids[:2]))
    src = zipfile.ZipFile(io.BytesIO(bundle))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            zf.writestr(name, data + b"x" if name.endswith(".tflite") else data)
    with pytest.raises(QlabError, match="does not match its sha256 name"):
        reports.import_bundle(tmp_store, buf.getvalue())


def test_import_bundle_missing_tflite(tmp_store: Store, tiny_tflite, tmp_path: Path) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    bundle = reports.export_bundle(tmp_store, reports.make_report(tmp_store, "t", "", ids[:2]))
    src = zipfile.ZipFile(io.BytesIO(bundle))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in src.namelist():
            if not name.startswith("tflite/"):
                zf.writestr(name, src.read(name))
    other = Store(tmp_path / "o.duckdb")
    try:
        with pytest.raises(QlabError, match=r"bundle variant 'float32': its .tflite .* is not in the bundle"):
            reports.import_bundle(other, buf.getvalue())
        assert other.models().empty and other.datasets().empty  # nothing half-imported
    finally:
        other.close()


def test_report_carries_npu_verdicts_into_table_and_html(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill(tmp_store, tiny_tflite)
    report = tmp_store.report(reports.make_report(tmp_store, "npu", "", ids))
    summary = reports.summary_table(report["content"]).set_index("variant")
    assert summary.at["int8", "NPU"] == "NPU-ready: integer-only"
    assert summary.at["float32", "NPU"].startswith("not NPU-ready: ") and "float ops" in summary.at["float32", "NPU"]
    assert summary.at["int16x8", "NPU"] == "–"  # failed: no file, no verdict
    assert summary.at["int8", "accuracy (%)"] == pytest.approx(90.0)
    assert summary.at["int8", "Δ vs float (points)"] == pytest.approx(-5.0)
    page = reports.render_html(report)
    assert "Will it run on the NPU?" in page and "NPU-ready: integer-only" in page
    assert "float ops fall back to the CPU" in page


def _fill_explained(store: Store, tiny_tflite: dict[str, bytes]) -> list[int]:
    """_fill plus a debugger run on the model and a QAT variant with two epochs of history."""
    from qcore.qtyping import LayerStat

    ids = _fill(store, tiny_tflite)
    model_id, dataset_id = int(store.variant(ids[0])["model_id"]), int(store.variant(ids[0])["dataset_id"])
    stats = [LayerStat("CONV_2D", i, f"demo/conv2d_{i}/Relu;demo/conv2d_{i}/BiasAdd", 10.0, 1.0, 0.0, 0.1,
                       0.01, 0.1, -128.0, 25.5, r) for i, r in enumerate((0.29, 3.5, 0.31))]
    store.save_debug_run(model_id=model_id, dataset_id=dataset_id, settings={"recipe": "int8"},
                         model_metrics={}, stats=stats)
    ids.append(store.save_variant(
        model_id=model_id, dataset_id=dataset_id, name="qat", kind="qat", tflite=tiny_tflite["int8"],
        settings={"layers": ["all"], "epochs": 2, "keras_accuracy": 0.93, "range_drift": 0.01, "warnings": []},
        evaluation=_ev(0.92), history=[{"loss": 0.5, "accuracy": 0.9}, {"loss": 0.3, "accuracy": 0.93}]))
    return ids


def test_report_html_names_variants_boards_and_renders_notes(tmp_store: Store, tiny_tflite) -> None:
    ids = _fill_explained(tmp_store, tiny_tflite)
    report = tmp_store.report(reports.make_report(tmp_store, "explained", "**int8** is *enough*\n\n- small", ids))
    content = report["content"]
    latency = reports.latency_table(content)
    assert set(latency["variant"]) == {"demo / int8"}  # names, never bare ids
    assert set(zip(latency["board"], latency["target"], strict=True)) == {("this host", "CPU (LiteRT)"),
                                                                        ("imx", "npu")}
    boards = reports.board_accuracy_table(content)
    assert boards["variant"].tolist() == ["demo / int8"] and boards["board / target"].tolist() == ["imx/npu"]
    assert boards["drift vs host (points)"].tolist() == [-5.0]  # 85% on the board, 90% on this host
    (caption, worst), = reports.debugger_tables(content)
    assert worst["layer"].tolist()[0] == "conv2d_1" and worst["rmse_scale"].tolist()[0] == 3.5
    assert "the 3 worst of 3 layers" in caption
    qat = reports.qat_table(content)
    assert qat["variant"].tolist() == ["demo / qat"] and qat["epochs"].tolist() == [2]
    assert qat["final loss"].tolist() == [0.3] and qat["TFLite accuracy (%)"].tolist() == [92.0]
    page = reports.render_html(report)
    assert "<strong>int8</strong> is <em>enough</em>" in page and "<li>small</li>" in page
    assert "Debugger: the worst layers" in page and "Quantization-aware training" in page
    assert "<th>variant_id</th>" not in page


def test_report_notes_html_is_escaped(tmp_store: Store) -> None:
    assert "<script>" not in reports.notes_html("<script>alert(1)</script> **x**")
    assert "<strong>x</strong>" in reports.notes_html("<script>alert(1)</script> **x**")


def test_report_per_layer_tables_top_n_folded_and_no_error_chart_for_float(tmp_store: Store, tiny_tflite) -> None:
    """64 layers: the export shows the top 10 by share of time and folds the full table; a float variant
    gets its time table but no error column or cost-vs-error chart."""
    from dashboard.services import report_view

    ids = _fill(tmp_store, tiny_tflite)
    report = tmp_store.report(reports.make_report(tmp_store, "per layer", "", ids[:2]))
    rows = [{"op_index": i, "op_type": "CONV_2D", "layer": f"block_{i}_project", "rmse_scale": 0.3 + i / 100,
             "range": 4.0, "time_ms": 0.01 * (i + 1), "time_share": (i + 1) / 2080, "time_source": "profile",
             "float_on_cpu_ms": None, "float_extra_ms": None} for i in range(64)]
    content = {**report["content"], "op_cost": {
        "2": {"variant": "int8", "board": "imx", "target": "npu", "time_source": "profile", "total_ms": 20.8,
              "debug_run_id": 1, "engine": "aeq", "notes": [], "rows": rows},
        "1": {"variant": "float32", "board": "imx", "target": "cpu", "time_source": "profile", "total_ms": 40.0,
              "debug_run_id": None, "engine": None, "notes": [],
              "rows": [{**r, "rmse_scale": None, "range": None} for r in rows]}}}
    page = reports.render_html({**report, "content": content})
    assert page.count("<summary>all 64 ops</summary>") == 2
    first_table = page.split("<h3>int8: time on imx / npu")[1].split("<details>")[0]
    assert first_table.count("<tr") == 11 and "block_63_project" in first_table  # the 10 slowest and a header
    assert "None" not in page
    assert "error: AI Edge Quantizer: rmse/scale (whole model), debugger run #1" in page
    assert "float32: time on imx / cpu [profile], total 40.000 ms; no per-layer error (float activations)" in page
    captions = [c for c, _ in report_view.figures(content)]
    assert "Cost vs error: int8 (imx / npu)" in captions
    assert not any(c.startswith("Cost vs error: float32") for c in captions)
    # which stored variants have an error of their own
    assert not reports.quantized_activations({"kind": "ptq", "recipe": "float32"})
    assert not reports.quantized_activations({"kind": "ptq", "recipe": "dynamic"})
    assert reports.quantized_activations({"kind": "ptq", "recipe": "int8"})
    assert reports.quantized_activations({"kind": "qat", "recipe": None})
