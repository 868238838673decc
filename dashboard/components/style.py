"""Shared look of the figures: palette, empty-state figure, variant labels."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

PALETTE = ("#0F6CBD", "#E8710A", "#1E8E3E", "#A142F4", "#D93025", "#12B5CB", "#F9AB00", "#5F6368")
# one colour per benchmark target, stable across figures
TARGET_COLORS = {"npu": "#1E8E3E", "cpu": "#0F6CBD", "cpu-plain": "#E8710A", "host": "#5F6368"}
SUSPECT_COLOR = "#D93025"
NORMAL_COLOR = "#0F6CBD"


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#5F6368"})
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, height=240,
                      margin={"t": 20, "l": 20, "r": 20, "b": 20})
    return fig


def variant_labels(df: pd.DataFrame) -> pd.Series:
    """"model / variant" for hover texts and axis labels."""
    return df["model"].astype(str) + " / " + df["variant"].astype(str)
