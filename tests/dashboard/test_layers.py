"""/layers and its figure: cost vs error over the demo's real int8 variant, debugged, with the host estimate."""

from __future__ import annotations

import html
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from dashboard.components.op_cost import cost_error_scatter
from dashboard.services import op_cost_view, reads
from dashboard.services.lab import Lab, lab
from qcore.jobs.contract import DebugParams, DemoParams
from qcore.lab import op_cost
from qcore.qtyping import JobStatus, LoadedModel, TimeSource
from tests.dashboard.conftest import plotly_specs, point_env, run_job, texts, values

# every test here converts real models and runs the debugger (module fixtures, once)
pytestmark = pytest.mark.slow


def _int8_id(the_lab: Lab) -> int:
    df = the_lab.store.variant_summary()
    return int(df[df["variant"] == "int8"]["variant_id"].iloc[0])


@pytest.fixture(scope="module")
def layers_dir(tmp_path_factory: pytest.TempPathFactory, demo: LoadedModel) -> Path:
    """A lab of its own (other modules add debug runs of other engines to the shared one): the demo
    converted with float32, int8 and uint8, and TF's debugger run of its int8 recipe on 20 samples."""
    folder = tmp_path_factory.mktemp("layers-lab")
    (folder / "demo").mkdir()
    shutil.copy(demo.path, folder / "demo" / "demo.h5")
    with pytest.MonkeyPatch.context() as mp:
        point_env(mp, folder)
        the_lab = lab()
        job = run_job(the_lab, DemoParams(recipes="float32,int8,uint8"))
        assert job.status is JobStatus.DONE, job.error
        job = run_job(the_lab, DebugParams(model_id=1, dataset_id=1, recipe="int8", debug_samples=20, engine="tf"))
        assert job.status is JobStatus.DONE, job.error
    return folder


@pytest.fixture()
def debugged(layers_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The layers lab, with the environment pointing at it (pages see the same store)."""
    point_env(monkeypatch, layers_dir)
    reads.clear()
    return lab()


def test_cost_error_scatter_points_are_ops_with_time_and_error(debugged: Lab, demo: LoadedModel) -> None:
    cost = op_cost.op_cost(debugged.store, _int8_id(debugged), board="host")
    fig = cost_error_scatter(cost.table, 0.7, cost.time_source)
    (trace,) = fig.data
    both = cost.table.dropna(subset=["time_share", "rmse_scale"])
    assert len(both) >= 3  # the demo's conv, pool and dense are quantized and timed
    assert list(trace.text) == list(both["layer"])
    # the dense output by its Keras name (the demo's last layer), not the converter's "StatefulPartitionedCall"
    assert any(str(t).startswith(f"{demo.keras_model.layers[-1].name} #") for t in trace.text)
    assert list(trace.x) == pytest.approx(list(both["time_share"] * 100))
    assert list(trace.y) == pytest.approx(list(both["rmse_scale"]))
    assert "estimate" in fig.layout.xaxis.title.text
    red = [c == "#D93025" for c in trace.marker.color]
    assert red == [v > 0.7 for v in both["rmse_scale"]]


def test_cost_error_scatter_without_debugger_says_so(debugged: Lab) -> None:
    table = op_cost.op_cost(debugged.store, _int8_id(debugged), board="host").table.assign(rmse_scale=float("nan"))
    fig = cost_error_scatter(table, 0.7)
    assert "run the debugger" in fig.layout.annotations[0].text


def test_layers_page_table_scatter_and_node_data(debugged: Lab, page) -> None:
    at = page("layers")
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="layers_variant").set_value(_int8_id(debugged)).run()
    assert not at.exception
    assert at.selectbox(key="layers_source").value == f"host · {TimeSource.ESTIMATE}"
    assert any("source: **estimate**" in t for t in texts(at, "markdown"))
    # the error column names the debugger run and the engine that made it, in the caption and the chart
    assert any(t.endswith("error from debugger run #1 (TF converter, int8)") for t in texts(at, "markdown"))
    assert plotly_specs(at)[0]["layout"]["yaxis"]["title"]["text"] == (
        "TF debugger: rmse/scale (layer by layer) · debugger run #1 (TF converter, int8)")
    table = at.dataframe[0].value
    assert {"rmse/scale", "share of time", "time from", "kept float on CPU (ms)"} <= set(table.columns)
    assert set(table["time from"]) == {str(TimeSource.ESTIMATE)}
    shares = table["share of time"].tolist()
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100.0)
    scatter = plotly_specs(at)[0]["data"][0]
    assert len(values(scatter["y"])) == table["rmse/scale"].notna().sum()
    assert any(b.label == "Download node data (zip)" for b in at.get("download_button"))
    if op_cost.explorer_installed():
        # the link opens the files the page wrote under the lab's data dir in a local Model Explorer
        (button,) = at.get("link_button")
        assert "localhost:8080/?data=" in button.proto.url
        assert list((debugged.data_dir / "node_data").glob("*/int8.rmse_scale.json"))
    code = [c.value for c in at.code]
    assert code and code[0].startswith("model-explorer ") and "--node_data_paths=int8.rmse_scale.json" in code[0]


def test_one_suspect_threshold_on_the_debugger_and_layers_pages(debugged: Lab, page) -> None:
    """The same run gives the same suspect threshold on both pages (it was 0.44 on one and 0.70 on the other)."""
    debugger = page("debugger")
    on_debugger = next(s for s in debugger.slider if s.label.startswith("suspect threshold")).value
    at = page("layers")
    at.selectbox(key="layers_variant").set_value(_int8_id(debugged)).run()
    on_layers = next(n for n in at.number_input if n.label.startswith("suspect threshold")).value
    assert on_layers == pytest.approx(on_debugger)
    assert next(n for n in at.number_input if n.label.startswith("suspect threshold")).label == (
        "suspect threshold (rmse/scale (layer by layer))")
    assert on_layers != 0.7  # not a fixed constant beside a threshold from the model's spread


def test_layers_service_zip_matches_cli_files(debugged: Lab, tmp_path) -> None:
    import io
    import zipfile

    view = op_cost_view.load(debugged.db_key, _int8_id(debugged), "host", "estimate", str(tmp_path / "data"))
    files = op_cost.write_node_data(view.cost, tmp_path)
    with zipfile.ZipFile(io.BytesIO(view.zip_bytes)) as zf:
        assert sorted(zf.namelist()) == sorted(p.name for p in files)
        for p in files:
            assert zf.read(p.name).decode() == p.read_text()


def test_report_of_a_debugged_variant_shows_cost_vs_error(debugged: Lab, page) -> None:
    from dashboard.services import report_view
    from qcore.lab.reports import make_report

    report_id = make_report(debugged.store, "layers report", "", [_int8_id(debugged)])
    report = debugged.store.report(report_id)
    captions = [c for c, _ in report_view.figures(report["content"])]
    assert "Cost vs error: int8 (host / estimate)" in captions
    page_html = report_view.html(report)
    assert "Per-layer error and time" in page_html and "[estimate]" in page_html
    reads.clear()
    at = page("reports", query={"report": report_id})
    assert not at.exception, [e.value for e in at.exception]
    assert "Per-layer error and time" in [s.value for s in at.subheader]
    assert any("rmse_scale" in d.value.columns for d in at.dataframe)


def _svgs(page_html: str) -> list[ET.Element]:
    """Every inline chart of an exported page, parsed as XML (raises when one is not well-formed)."""
    return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", page_html, flags=re.S)]


def test_report_html_export_draws_every_figure_as_svg_without_script(debugged: Lab) -> None:
    from dashboard.services import report_view
    from qcore.lab.reports import make_report

    ids = [int(v) for v in debugged.store.variant_summary()["variant_id"]]
    report = debugged.store.report(make_report(debugged.store, "demo: every variant", "", ids))
    figures = report_view.figures(report["content"])
    page_html = report_view.html(report)
    assert "<script" not in page_html and "plotly" not in page_html.lower()
    assert len(figures) >= 5
    for caption, _ in figures:
        assert f"<h3>{html.escape(caption)}</h3><svg" in page_html, caption
    assert len(_svgs(page_html)) == len(figures)
    assert "class='fig-note'" not in page_html  # every figure the report makes is one the export draws
    assert len(page_html.encode()) < 200_000


def _grown(content: dict[str, Any]) -> dict[str, Any]:
    """The demo report's real content grown, by its own shape (reports.build_content), into the issue's report:
    ten MobileNetV2-sized variants (64 quantized layers, 69 ops) on this host and a board, each with its
    evaluation, confusion and per-op table, and two debugger runs (TF and AEQ) of 64 layers."""
    from qcore.engines import variant_name
    from qcore.recipes import RECIPES

    by_recipe = {v["recipe"]: v for v in content["variants"]}
    evals = {e["variant_id"]: e for e in content["evaluations"]}
    bench = [b for b in content["benchmarks"] if b["board"] == "host"]
    template_ops = next(iter(content["op_cost"].values()))
    ops = ["CONV_2D"] * 35 + ["DEPTHWISE_CONV_2D"] * 17 + ["ADD"] * 10 + ["MEAN", "FULLY_CONNECTED", "PAD", "PAD",
                                                                           "SOFTMAX", "QUANTIZE", "DEQUANTIZE"]
    out: dict[str, Any] = {**content, "variants": [], "evaluations": [], "confusion": {}, "benchmarks": [],
                           "op_cost": {}}
    for i, (recipe, spec) in enumerate(RECIPES.items()):
        vid, engine = 100 + i, ("tf", "aeq")[i % 2]
        base = by_recipe["int8" if spec.representative else "float32"]
        out["variants"].append({**base, "variant_id": vid, "variant": variant_name(recipe, engine), "recipe": recipe,
                                "engine": engine, "model": "mnv2-alpha0.35-32px", "board_p50_ms": 1.5 + i})
        out["evaluations"].append({**evals[base["variant_id"]], "variant_id": vid})
        out["confusion"][str(vid)] = content["confusion"][str(base["variant_id"])]
        out["benchmarks"] += [{**b, "variant_id": vid, "p50_ms": 2.0 + i} for b in bench]
        out["benchmarks"] += [{**(bench[0] if bench else {}), "variant_id": vid, "board": "imx8mp-evk",
                               "target": t, "p50_ms": p, "first_ms": 50 * p}
                              for t, p in (("npu", 1.5 + i), ("cpu", 9.0 + i))]
        rows = [{**template_ops["rows"][0], "op_index": k, "op_type": op, "layer": f"block_{k // 4}_{op.lower()}_{k}",
                 "rmse_scale": (0.2 + (k % 13) / 20 if spec.representative and k < 64 else None),
                 "range": 6.0, "time_ms": 0.02 + k / 1000, "time_share": (0.02 + k / 1000) / 7.9,
                 "time_source": "profile"} for k, op in enumerate(ops)]
        out["op_cost"][str(vid)] = {**template_ops, "variant": variant_name(recipe, engine), "board": "imx8mp-evk",
                                    "target": "npu", "time_source": "profile", "total_ms": 7.9,
                                    "debug_run_id": (1 + i % 2) if spec.representative else None,
                                    "engine": engine if spec.representative else None, "rows": rows}
    worst = [{"layer": f"block_{k}_project", "op": "CONV_2D", "rmse_scale": 0.9 - k / 50, "range": 6.0}
             for k in range(10)]
    out["debugger"] = [{"model": "mnv2-alpha0.35-32px", "debug_run_id": n, "recipe": "int8", "layers": 64,
                        "engine": engine, "worst": worst} for n, engine in ((1, "tf"), (2, "aeq"))]
    return out


def test_report_html_export_of_ten_mobilenet_sized_variants_is_under_1_mb(debugged: Lab) -> None:
    """Issue 19: a report of 10 MobileNetV2 variants with two debugger runs is under 1 MB (it was 5 MB)."""
    from dashboard.services import report_view
    from qcore.lab.reports import make_report

    ids = [int(v) for v in debugged.store.variant_summary()["variant_id"]]
    report = debugged.store.report(make_report(debugged.store, "mnv2: ten variants", "", ids))
    report = {**report, "content": _grown(report["content"])}
    figures = report_view.figures(report["content"])
    page_html = report_view.html(report)
    # the report is the issue's: ten variants, two 64-layer debugger runs, a per-op table and chart each
    assert page_html.count("<summary>all 69 ops</summary>") == 10
    assert page_html.count("worst of 64 layers") == 2
    assert sum(c.startswith("Cost vs error") for c, _ in figures) == 6  # the quantized ones, not the floats
    assert len(_svgs(page_html)) == len(figures) >= 12
    assert len(page_html.encode()) < 1_000_000, f"{len(page_html.encode())} bytes"
