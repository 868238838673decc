"""The export's inline SVG charts, drawn from the dashboard's own Plotly figures (no browser, no TensorFlow)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dashboard.components.confusion import confusion_heatmap
from dashboard.components.latency import latency_bars
from dashboard.components.op_cost import cost_error_scatter
from dashboard.components.tradeoff import tradeoff_scatter
from qcore.lab.svg_figures import figure_svg, values

NS = {"s": "http://www.w3.org/2000/svg"}


def _svg(fig: go.Figure) -> ET.Element:
    drawn = figure_svg(fig.to_dict())
    assert "<script" not in drawn.svg
    return ET.fromstring(drawn.svg)  # well-formed XML, or this raises


def _texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def _titles(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title")]


def _variants() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["mnv2"] * 4, "variant": ["float32", "int8", "int8@aeq", "dynamic"],
        "recipe": ["float32", "int8", "int8", "dynamic"], "engine": ["tf", "tf", "aeq", "tf"],
        "npu_ready": [False, True, True, None], "kind": ["ptq"] * 4, "float_accuracy": [0.92] * 4,
        "size_bytes": [1_600_000, 520_000, 510_000, 540_000], "accuracy": [0.92, 0.915, 0.91, 0.90],
        "host_p50_ms": [0.04, 0.9, 0.95, 30.0]})


def test_values_reads_plotly_typed_arrays() -> None:
    fig = go.Figure(go.Heatmap(z=np.array([[1, 2], [3, 4]])))
    spec = fig.to_dict()["data"][0]["z"]
    assert isinstance(spec, dict) and "bdata" in spec  # what plotly hands over: base64 with a shape
    assert values(spec) == [[1, 2], [3, 4]]


def test_figure_svg_tradeoff_markers_symbols_hover_log_ticks_and_legend() -> None:
    root = _svg(tradeoff_scatter(_variants(), "host_p50_ms", "accuracy", target="this host"))
    texts = _texts(root)
    # the latency spans 750×: a log axis with decade ticks, not a crowd of linear ones
    assert {"0.1", "1", "10"} <= set(texts) and "host latency p50 (ms) · this host (log)" in texts
    assert "92.00%" in texts  # the y axis's tickformat and suffix
    titles = _titles(root)
    assert "mnv2 / int8@aeq (aeq)\nhost latency p50 (ms) · this host 0.95\naccuracy 91.00%\nNPU-ready" in titles
    # open markers for the not-NPU-ready float32, filled for the ready ones, each in its recipe's colour
    marks = [e for e in root.iter() if any(t.text and t.text.startswith("mnv2 / ") for t in e)]
    assert len(marks) == 4
    by_name = {next(iter(e)).text.split(" (")[0]: e for e in marks}  # type: ignore[union-attr]
    assert by_name["mnv2 / float32"].get("fill") == "none"
    assert by_name["mnv2 / int8"].get("fill") == by_name["mnv2 / int8@aeq"].get("fill") != "none"
    assert by_name["mnv2 / int8"].tag.endswith("circle") and by_name["mnv2 / int8@aeq"].tag.endswith("path")
    # the legend: recipes, engines, the NPU fill and the front, once each; the float line labelled
    for word in ("recipe:", "shape:", "fill:", "engine aeq", "NPU-ready", "Pareto front (labelled)",
                 "float model 92.00%"):
        assert word in texts


def test_figure_svg_grouped_bars_on_two_subplots_with_patterns() -> None:
    bench = pd.DataFrame({"label": ["int8", "int8", "uint8", "uint8"], "target": ["npu", "npu", "npu", "npu"],
                          "board": ["imx-a", "imx-b", "imx-a", "imx-b"], "p50_ms": [1.0, 2.0, 3.0, 4.0],
                          "first_ms": [100.0, 200.0, 300.0, 400.0]})
    drawn = figure_svg(latency_bars(bench).to_dict())
    root = ET.fromstring(drawn.svg)
    bars = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if any(True for _ in r)]
    assert len(bars) == 8  # 2 variants × 2 boards × 2 panels, each with its hover text
    steady = {(r.find("s:title", NS).text or ""): r for r in bars if "p50" not in (r.find("s:title", NS).text or "")
              and float(r.get("x", 0)) < 500}
    a, b = steady["int8\nimx-a · npu: 1.000 ms"], steady["int8\nimx-b · npu: 2.000 ms"]
    assert float(a.get("width", 0)) == float(b.get("width", 0))  # grouped: side by side, the same width
    assert float(a.get("x", 0)) < float(b.get("x", 0))
    assert float(b.get("height", 0)) == pytest.approx(2 * float(a.get("height", 0)), rel=0.02)
    assert {"steady state p50 (ms)", "first inference (ms)"} <= set(_texts(root))
    assert re.search(r'<pattern id="f-p\d"', drawn.svg)  # the second board gets a fill pattern


def test_figure_svg_horizontal_and_stacked_bars() -> None:
    fig = go.Figure([go.Bar(y=["a", "b"], x=[1, 3], orientation="h", name="one"),
                     go.Bar(y=["a", "b"], x=[2, 1], orientation="h", name="two")])
    fig.update_layout(barmode="stack")
    root = _svg(fig)
    rects = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.find("s:title", NS) is not None]
    widths = [float(r.get("width", 0)) for r in rects]
    assert widths[1] == pytest.approx(3 * widths[0], rel=0.02)
    # stacked: "two" on category a starts where "one" ends
    assert float(rects[2].get("x", 0)) == pytest.approx(float(rects[0].get("x", 0)) + widths[0], abs=0.2)


def test_figure_svg_heatmap_cells_text_and_hover() -> None:
    root = _svg(confusion_heatmap([[9, 1], [0, 10]], "mnv2 / int8"))
    assert "true 0, predicted 1: 1" in _titles(root)
    texts = _texts(root)
    assert {"9", "1", "0", "10", "predicted", "true"} <= set(texts)
    cells = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.find("s:title", NS) is not None]
    fills = {r.find("s:title", NS).text: r.get("fill") for r in cells}  # type: ignore[union-attr]
    assert fills["true 1, predicted 1: 10"] != fills["true 1, predicted 0: 0"]
    # autorange reversed: true class 0 is the top row
    ys = {r.find("s:title", NS).text: float(r.get("y", 0)) for r in cells}  # type: ignore[union-attr]
    assert ys["true 0, predicted 0: 9"] < ys["true 1, predicted 0: 0"]


def test_figure_svg_reference_lines_sit_at_their_values() -> None:
    rows = pd.DataFrame({"layer": [f"block_{i}" for i in range(8)], "time_share": [0.1] * 8,
                         "rmse_scale": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.6], "time_ms": [0.1] * 8,
                         "time_source": ["estimate"] * 8})
    drawn = figure_svg(cost_error_scatter(rows, 0.9, "estimate", "debugger run #1").to_dict())
    root = ET.fromstring(drawn.svg)
    dashed = [p for p in root.iter("{http://www.w3.org/2000/svg}path") if p.get("stroke-dasharray")]
    ys = sorted(float(re.findall(r"[\d.]+", p.get("d", ""))[1]) for p in dashed)
    ticks = {t: float(e.get("y", 0)) for e in root.iter("{http://www.w3.org/2000/svg}text")
             if (t := "".join(e.itertext())) in ("0.5", "1")}
    per_unit = (ticks["0.5"] - ticks["1"]) / 0.5
    assert ys[0] == pytest.approx(ticks["1"] + 0.1 * per_unit, abs=1.0)  # the suspect line at 0.9
    assert "suspect threshold 0.9" in _texts(root)


def test_figure_svg_says_what_it_cannot_draw() -> None:
    fig = go.Figure([go.Pie(values=[1, 2], name="share"), go.Scatter(x=[1, 2], y=[3, 4])])
    drawn = figure_svg(fig.to_dict())
    assert drawn.notes == ("a pie trace (share)",)
    assert "Not drawn in this export: a pie trace (share)." in _texts(ET.fromstring(drawn.svg))


def test_figure_svg_escapes_text() -> None:
    fig = go.Figure(go.Bar(x=["<b>&x</b>\"'"], y=[1], hovertemplate="%{x}<extra></extra>"))
    fig.update_layout(title="a <script>alert(1)</script> title")
    drawn = figure_svg(fig.to_dict())
    assert "<script" not in drawn.svg
    ET.fromstring(drawn.svg)
