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


def _recall(m: np.ndarray) -> np.ndarray:
    rows = m.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(m) / rows, np.nan)


def recall_change_heatmap(
    matrices: dict[str, Sequence[Sequence[int]]], baseline: Sequence[Sequence[int]], baseline_name: str = "float32"
) -> go.Figure:
    """Per-class accuracy (recall) of each variant minus the float baseline's, in points: one compact view.

    Rows are variants, columns classes; red cells lost accuracy on that class, blue ones gained.

    Args:
        matrices: variant label → its confusion matrix.
        baseline: the float variant's confusion matrix (same classes).
        baseline_name: what the baseline is called in the title.
    """
    base = np.asarray(baseline, dtype=np.int64)
    rows, labels = [], []
    for label, matrix in matrices.items():
        m = np.asarray(matrix, dtype=np.int64)
        if m.shape != base.shape:
            continue
        rows.append((_recall(m) - _recall(base)) * 100.0)
        labels.append(label)
    if not rows:
        return empty_figure("no variant with the same classes as the float baseline")
    z = np.vstack(rows)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    bound = max(bound, 0.5)
    classes = [str(c) for c in range(base.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=z, x=classes, y=labels, zmin=-bound, zmax=bound, zmid=0, colorscale="RdBu",
        text=np.round(z, 1), texttemplate="%{text:+.1f}", colorbar={"title": "points"},
        hovertemplate="%{y}<br>class %{x}: %{z:+.2f} points vs " + baseline_name + "<extra></extra>",
    ))
    fig.update_layout(
        title={"text": f"per-class accuracy change vs {baseline_name} (points; negative = lost)", "font": {"size": 13}},
        xaxis_title="true class", xaxis={"type": "category"}, yaxis={"autorange": "reversed", "automargin": True},
        height=max(220, 28 * len(labels) + 120), margin={"t": 50, "l": 10, "r": 10, "b": 50},
    )
    return fig


def confusion_diff_heatmap(
    matrix: Sequence[Sequence[int]], baseline: Sequence[Sequence[int]], title: str, baseline_name: str = "float32"
) -> go.Figure:
    """One variant's confusion counts minus the float baseline's: where predictions moved."""
    m, base = np.asarray(matrix, dtype=np.int64), np.asarray(baseline, dtype=np.int64)
    if m.shape != base.shape:
        return empty_figure(f"{title}: its classes differ from the float baseline's")
    d = m - base
    bound = max(int(np.abs(d).max()), 1)
    names = [str(c) for c in range(m.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=d, x=names, y=names, zmin=-bound, zmax=bound, zmid=0, colorscale="RdBu", showscale=False,
        text=np.where(d == 0, "", d.astype(str)), texttemplate="%{text}",
        hovertemplate="true %{y}, predicted %{x}: %{z:+d} vs " + baseline_name + "<extra></extra>",
    ))
    moved = int(np.abs(d).sum()) // 2
    fig.update_layout(
        title={"text": f"{title} minus {baseline_name}: {moved} predictions moved", "font": {"size": 13}},
        xaxis_title="predicted", yaxis_title="true",
        xaxis={"type": "category"}, yaxis={"type": "category", "autorange": "reversed"},
        height=380, margin={"t": 50, "l": 50, "r": 10, "b": 50},
    )
    return fig
