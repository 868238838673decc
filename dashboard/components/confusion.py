"""The confusion-matrix heatmap of one variant."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from dashboard.components.style import empty_figure


def confusion_heatmap(
    matrix: Sequence[Sequence[int]] | np.ndarray | None,
    title: str = "confusion",
    class_names: Sequence[str] | None = None,
) -> go.Figure:
    """Rows are true labels, columns predictions; counts written in the cells.

    Args:
        matrix: a square count matrix, or None when the variant has no evaluation.
        title: usually "model / variant".
        class_names: axis labels; defaults to 0..n-1.
    """
    if matrix is None or len(matrix) == 0:
        return empty_figure(f"{title}: no evaluation stored")
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    names = [str(c) for c in (class_names or range(m.shape[0]))]
    total = int(m.sum())
    acc = float(np.trace(m)) / total if total else float("nan")
    fig = go.Figure(
        go.Heatmap(
            z=m, x=names, y=names, colorscale="Blues", showscale=False,
            text=m, texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": f"{title} (accuracy {acc:.3f})", "font": {"size": 13}},
        xaxis_title="predicted", yaxis_title="true",
        xaxis={"type": "category"}, yaxis={"type": "category", "autorange": "reversed"},
        height=360, margin={"t": 50, "l": 50, "r": 10, "b": 50},
    )
    return fig
