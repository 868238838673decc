"""The float-to-integer mapping plot of the /math calculator (scale and zero point from a float range; tflite_convert's mean/std_dev)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components.style import NORMAL_COLOR, SUSPECT_COLOR


def mapping_plot(table: pd.DataFrame, marked: tuple[float, int, float] | None = None) -> go.Figure:
    """The staircase q(x) of an affine quantization, and the rounding error it leaves.

    Args:
        table: `qcore.tflite.qmath.mapping_table` output (real, quantized, dequantized, error; scale,
            zero_point, qmin, qmax in `attrs`).
        marked: one (x, q, dequantized x) to mark, e.g. the calculator's value.
    """
    if table.empty:
        raise ValueError("the mapping table is empty")
    scale = float(table.attrs.get("scale", float("nan")))
    zero_point = table.attrs.get("zero_point")
    qmin, qmax = table.attrs.get("qmin"), table.attrs.get("qmax")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    fig.add_trace(
        go.Scatter(x=table["real"], y=table["quantized"], mode="lines", name="q(x)",
                   line={"shape": "hv", "color": NORMAL_COLOR},
                   hovertemplate="x %{x:.4g} → q %{y}<extra></extra>"),
        row=1, col=1,
    )
    fig.add_trace(
        go.Scatter(x=table["real"], y=table["error"], mode="lines", name="error (dequantized − x)",
                   line={"color": "#E8710A", "width": 1},
                   hovertemplate="x %{x:.4g}: error %{y:.3g}<extra></extra>"),
        row=2, col=1,
    )
    if zero_point is not None:
        fig.add_hline(y=zero_point, line_dash="dot", line_color="#5F6368", row=1, col=1,
                      annotation_text=f"zero point {zero_point}", annotation_position="top left")
    if marked is not None:
        x, q, back = marked
        fig.add_trace(
            go.Scatter(x=[x], y=[q], mode="markers+text", marker={"size": 12, "color": SUSPECT_COLOR},
                       text=[f"{x:g} → {q} → {back:.6g}"], textposition="top left", name="value"),
            row=1, col=1,
        )
    fig.update_layout(
        title=f"float → integer (scale {scale:.6g}, zero point {zero_point})",
        height=400, showlegend=False, margin={"t": 50, "l": 60, "r": 20, "b": 40},
    )
    fig.update_yaxes(title_text=f"q in [{qmin}, {qmax}]", row=1, col=1)
    fig.update_yaxes(title_text="error", row=2, col=1)
    fig.update_xaxes(title_text="float x", row=2, col=1)
    return fig
