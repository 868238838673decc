"""The "cost vs error" scatter: share of time against the debugger's rmse/scale, one point per op."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.components.debugger import REFERENCE_COLOR
from dashboard.components.style import NORMAL_COLOR, SUSPECT_COLOR, empty_figure
from qcore.engines.base import LayerErrorMetric
from qcore.engines.tf import METRIC as TF_METRIC


def cost_error_scatter(table: pd.DataFrame, threshold: float, time_label: str = "",
                       error_label: str = "", scale: LayerErrorMetric = TF_METRIC) -> go.Figure:
    """x = share of time, y = rmse/scale, labelled by short layer name.

    Up and to the left: layers worth keeping float (big error, little time). Up and to the right:
    big error but slow if kept float, so fix them another way (QAT, per-channel, a different range).

    Args:
        table: an OpCost table (layer, time_share, rmse_scale, time_ms, float_on_cpu_ms, time_source).
        threshold: the suspect threshold, drawn as a dashed line; points above it are red.
        time_label: where the time comes from, shown in the x-axis title.
        error_label: where the error comes from (the debugger run and its engine), shown in the y-axis title.
        scale: that engine's per-layer error metric (its name, its reference line).
    """
    need = {"layer", "time_share", "rmse_scale"}
    if table.empty or not need <= set(table.columns):
        return empty_figure("no per-op table for this variant")
    data = table.dropna(subset=["time_share", "rmse_scale"])
    if data.empty:
        missing = "rmse/scale (run the debugger)" if table["rmse_scale"].isna().all() else "time"
        return empty_figure(f"no op has both a time and an error yet: {missing} missing")
    colors = [SUSPECT_COLOR if v > threshold else NORMAL_COLOR for v in data["rmse_scale"]]
    extra = data["float_on_cpu_ms"] if "float_on_cpu_ms" in data else pd.Series(float("nan"), index=data.index)
    custom = list(zip(data["time_ms"], extra, data.get("time_source", ""), strict=False))
    fig = go.Figure(go.Scatter(
        x=data["time_share"] * 100, y=data["rmse_scale"], mode="markers+text", text=data["layer"],
        textposition="top center", marker={"size": 11, "color": colors}, customdata=custom,
        hovertemplate=("%{text}<br>%{x:.1f}% of time (%{customdata[0]:.4f} ms, %{customdata[2]})"
                       "<br>" + scale.name + " %{y:.3f}<br>kept float on CPU ≈ %{customdata[1]:.4f} ms<extra></extra>"),
        name="ops",
    ))
    fig.add_hline(y=threshold, line_dash="dash", line_color=SUSPECT_COLOR,
                  annotation_text=f"suspect threshold {threshold:g}")
    fig.add_hline(y=scale.reference_of(table["rmse_scale"]), line_dash="dot", line_color=REFERENCE_COLOR,
                  annotation_text=scale.reference_label(table["rmse_scale"]), annotation_position="bottom right")
    fig.update_layout(
        title="Cost vs error: high and left = worth keeping float; high and right = slow if kept float",
        xaxis_title="share of time (%)" + (f" · {time_label}" if time_label else ""),
        yaxis_title=scale.title + (f" · {error_label}" if error_label else ""), height=460, margin={"t": 60, "l": 60, "r": 20, "b": 50}, showlegend=False,
    )
    return fig
