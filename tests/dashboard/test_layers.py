"""/layers and its figure: cost vs error over the demo's real int8 variant, debugged, with the host estimate."""

from __future__ import annotations

import shutil
from pathlib import Path

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


def test_cost_error_scatter_points_are_ops_with_time_and_error(debugged: Lab) -> None:
    cost = op_cost.op_cost(debugged.store, _int8_id(debugged), board="host")
    fig = cost_error_scatter(cost.table, 0.7, cost.time_source)
    (trace,) = fig.data
    both = cost.table.dropna(subset=["time_share", "rmse_scale"])
    assert len(both) >= 3  # the demo's conv, pool and dense are quantized and timed
    assert list(trace.text) == list(both["layer"])
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
