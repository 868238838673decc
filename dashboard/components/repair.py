"""The per-layer error of a model before and after each repair: one bar per stage, worst layers first."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.components.style import PALETTE, empty_figure

# pixels per layer row (one bar per stage inside it)
ROW_PX = 26


def stage_bars(frame: pd.DataFrame, stages: list[str], metric: str = "rmse/scale", top_n: int = 30,
               title: str = "") -> go.Figure:
    """Horizontal grouped bars: each layer's error at every stage (plain, then after each repair).

    Args:
        frame: one row per layer: `layer` (short name), `tensor_name`, one column per stage.
        stages: the stage columns in order ("plain", "cle", "bias", ...).
        metric: what the figures are (the engine's per-layer metric), the axis title.
        top_n: the layers with the largest error before any repair (0 = all).
        title: the figure's title (the repaired variant's name).
    """
    present = [s for s in stages if s in frame]
    if frame.empty or not present:
        return empty_figure("no per-layer error stored for this repair")
    data = frame.copy()
    data["_worst"] = data[present].max(axis=1)
    data = data.sort_values(present[0], ascending=False, na_position="last")
    if top_n:
        data = data.head(int(top_n))
    data = data.iloc[::-1]  # plotly draws the first row at the bottom: worst at the top
    fig = go.Figure()
    for i, stage in enumerate(present):
        fig.add_trace(go.Bar(
            y=data["layer"], x=data[stage], orientation="h", name="before repairs" if stage == "plain" else
            f"after {stage}", marker_color=PALETTE[i % len(PALETTE)], customdata=data["tensor_name"],
            hovertemplate="%{customdata}<br>%{x:.3f}<extra>" + stage + "</extra>",
        ))
    fig.update_layout(barmode="group", title=title or "per-layer error before and after each repair",
                      xaxis_title=metric, height=max(260, 60 + ROW_PX * len(data) * max(1, len(present)) // 2),
                      margin={"t": 50, "l": 160, "r": 20, "b": 40}, legend={"orientation": "h", "y": 1.02})
    return fig
