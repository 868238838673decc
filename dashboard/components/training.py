"""QAT's per-epoch loss and accuracy curves."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components.style import PALETTE, empty_figure


def qat_curves(history: pd.DataFrame) -> go.Figure:
    """Loss (left) and accuracy (right) per epoch: training solid, validation (val_*, held-out test samples) dashed.

    Args:
        history: one row per epoch with an `epoch` column and metric columns (loss, accuracy, ...).
    """
    if history.empty or "epoch" not in history or len(history.columns) < 2:
        return empty_figure("no epoch finished yet")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for col, metric in ((1, "loss"), (2, "accuracy")):
        for i, name in enumerate(c for c in (metric, f"val_{metric}") if c in history):
            fig.add_trace(
                go.Scatter(x=history["epoch"], y=history[name], mode="lines+markers",
                           name=f"{metric} (validation)" if i else f"{metric} (training)",
                           line={"color": PALETTE[col - 1], "dash": "dash" if i else "solid"}),
                row=1, col=col,
            )
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_layout(height=320, margin={"t": 50, "l": 50, "r": 20, "b": 50})
    return fig
