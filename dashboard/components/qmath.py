"""The float-to-integer mapping plot of the /math calculator (seeds 000 and 001)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dashboard.components.style import NORMAL_COLOR, SUSPECT_COLOR


def mapping_plot(
    min_val: float,
    max_val: float,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    value: float | None = None,
    n: int = 400,
) -> go.Figure:
    """q = clip(round(x / scale) + zero_point) as a staircase over [min, max], with one value marked.

    Args:
        min_val, max_val: the float range shown (widened a little on both sides to show clipping).
        scale, zero_point, qmin, qmax: the quantization parameters.
        value: a float to mark with its integer and its dequantized value.
        n: points along x.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    span = max(max_val - min_val, 1e-12)
    xs = np.linspace(min_val - 0.1 * span, max_val + 0.1 * span, n)
    qs = np.clip(np.round(xs / scale) + zero_point, qmin, qmax)
    fig = go.Figure(
        go.Scatter(x=xs, y=qs, mode="lines", line={"shape": "hv", "color": NORMAL_COLOR}, name="q(x)",
                   hovertemplate="x %{x:.4g} → q %{y}<extra></extra>")
    )
    fig.add_vline(x=0.0, line_dash="dot", line_color="#5F6368")
    fig.add_hline(y=zero_point, line_dash="dot", line_color="#5F6368",
                  annotation_text=f"zero point {zero_point}", annotation_position="top left")
    if value is not None:
        q = int(np.clip(np.round(value / scale) + zero_point, qmin, qmax))
        back = (q - zero_point) * scale
        fig.add_trace(
            go.Scatter(x=[value], y=[q], mode="markers+text", marker={"size": 12, "color": SUSPECT_COLOR},
                       text=[f"{value:g} → {q} → {back:.4g}"], textposition="top right", name="value")
        )
    fig.update_layout(
        title=f"float → integer (scale {scale:.6g}, zero point {zero_point})",
        xaxis_title="float x", yaxis_title=f"integer q in [{qmin}, {qmax}]",
        height=320, showlegend=False, margin={"t": 50, "l": 50, "r": 20, "b": 50},
    )
    return fig
