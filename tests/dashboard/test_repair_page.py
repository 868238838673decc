"""The Debugger page's repair section and the search's remedy: a repair run as a job from the page, its per-layer
error before and after each repair, the repaired variant beside the plain one, its name on Compare's Pareto plot."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components.repair import stage_bars
from dashboard.components.tradeoff import tradeoff_scatter
from dashboard.services import reads, repair_view
from dashboard.services.lab import Lab
from qcore.lab.publish import register
from qcore.qtyping import Dataset, JobStatus, LoadedModel
from tests.dashboard.conftest import plotly_specs, texts


def _row(kind: str, settings: dict[str, object]) -> dict[str, object]:
    return {"kind": kind, "settings": json.dumps(settings)}


def test_remedy_says_what_met_the_target() -> None:
    assert repair_view.remedy(None).startswith("nothing met the target")
    assert repair_view.remedy(_row("repair", {"methods": ["cle", "bias"]})) == \
        "the repairs (CLE + bias) met the target with every layer quantized"
    assert repair_view.remedy(_row("tune", {"methods": ["cle"], "denylisted_nodes": ["a", "b"]})) == \
        "the repairs (CLE) missed it; 2 layers kept float on the repaired model met it"
    assert repair_view.remedy(_row("tune", {"denylisted_nodes": ["a"]})) == "1 layers kept float met it"
    assert repair_view.remedy(_row("tune", {"denylisted_nodes": []})) == "the plain recipe met it"


def test_stage_bars_one_bar_per_stage_worst_layer_on_top() -> None:
    frame = pd.DataFrame({"layer": ["a", "b", "c"], "tensor_name": ["m/a", "m/b", "m/c"],
                          "plain": [0.3, 9.0, 1.0], "cle": [0.3, 0.5, 0.4]})
    fig = stage_bars(frame, ["plain", "cle"], "rmse/scale (layer by layer)", top_n=2, title="x")
    assert [t.name for t in fig.data] == ["before repairs", "after cle"]
    assert list(fig.data[0].y) == ["c", "b"]  # the two worst before repairs, the worst drawn at the top
    assert fig.layout.xaxis.title.text == "rmse/scale (layer by layer)"
    assert "no per-layer error" in json.dumps(stage_bars(frame.iloc[0:0], [], "").to_plotly_json())


def test_compare_pareto_point_is_named_for_its_repairs() -> None:
    df = pd.DataFrame([
        {"model": "m", "variant": "int8-per-tensor", "size_bytes": 8000, "accuracy": 0.17, "npu_ready": True},
        {"model": "m", "variant": "int8-per-tensor + CLE + bias", "size_bytes": 8000, "accuracy": 0.95,
         "npu_ready": True},
    ])
    labels = [t for trace in tradeoff_scatter(df).data for t in (trace.text if trace.text is not None else [])]
    assert "int8-per-tensor + CLE + bias" in labels


@pytest.mark.slow
def test_debugger_page_runs_a_repair_and_shows_each_stage(empty_lab: Lab, page, demo: LoadedModel,
                                                          digits: Dataset) -> None:
    register(empty_lab.store, demo, digits)
    reads.clear()
    at: AppTest = page("debugger")
    assert not at.exception
    at.multiselect(key="debugger_repair_methods").set_value(["cle"]).run()
    assert any("conversions' time" in c for c in texts(at, "caption"))
    next(b for b in at.button if b.label == "Repair").click().run()
    assert not at.exception
    job = empty_lab.store.jobs(limit=1, kind="repair")[0]
    assert empty_lab.runner.wait(job.id, timeout=600) is JobStatus.DONE, empty_lab.store.job(job.id).error
    reads.clear()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    bars = next(s for s in plotly_specs(at) if "per-layer error · int8-per-tensor + CLE" in json.dumps(s["layout"], ensure_ascii=False))
    assert [t["name"] for t in bars["data"]] == ["before repairs", "after cle"]
    # the output layer by its Keras name (the demo's last Dense), not the converter's "StatefulPartitionedCall"
    assert str(demo.keras_model.layers[-1].name) in bars["data"][0]["y"]
    assert not any(str(y).startswith("StatefulPartitionedCall") for y in bars["data"][0]["y"])
    tables = [d.value for d in at.dataframe]
    pair = next(t for t in tables if "variant" in t and "NPU" in t)
    assert pair["variant"].tolist() == ["int8-per-tensor", "int8-per-tensor + CLE"]
    assert any(t.startswith("int8-per-tensor + CLE: ") for t in texts(at, "success") + texts(at, "warning"))
