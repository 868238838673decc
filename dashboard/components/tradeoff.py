"""Accuracy against size or latency with the Pareto front marked, and the size bar chart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.components.style import PALETTE, empty_figure, variant_labels

AXIS_TITLES = {
    "size_bytes": "size (KiB)",
    "host_p50_ms": "host latency p50 (ms)",
    "board_p50_ms": "board latency p50 (ms)",
    "accuracy": "accuracy",
}


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Rows no other row beats: no other point has x <= and y >= with one of them strict.

    Lower x (size, latency) and higher y (accuracy) are better. Rows with NaN in x or y are
    never on the front.

    Returns:
        A boolean Series aligned with `df`.
    """
    on = pd.Series(False, index=df.index)
    pts = df[[x, y]].astype(float)
    ok = pts.notna().all(axis=1)
    valid = pts[ok]
    xs, ys = valid[x].to_numpy(), valid[y].to_numpy()
    for idx, xi, yi in zip(valid.index, xs, ys, strict=True):
        dominated = np.any((xs <= xi) & (ys >= yi) & ((xs < xi) | (ys > yi)))
        on[idx] = not dominated
    return on


def tradeoff_scatter(df: pd.DataFrame, x: str = "size_bytes", y: str = "accuracy") -> go.Figure:
    """Accuracy against `x` (size_bytes, host_p50_ms or board_p50_ms), one colour per model.

    Args:
        df: rows of v_variant_summary (needs model, variant and the two columns).
        x: the cost column; size is shown in KiB.
        y: the quality column.

    Returns:
        A scatter with the Pareto front drawn as a line through its points.
    """
    title = f"{AXIS_TITLES.get(y, y)} vs {AXIS_TITLES.get(x, x)}"
    if df.empty or x not in df or y not in df or df[[x, y]].dropna().empty:
        return empty_figure(f"{title}: no variant has both values yet")
    data = df.dropna(subset=[x, y]).copy()
    data["_x"] = data[x].astype(float) / (1024.0 if x == "size_bytes" else 1.0)
    data["_label"] = variant_labels(data)
    data["_front"] = pareto_front(data, "_x", y)
    fig = go.Figure()
    for i, (model, part) in enumerate(data.groupby("model", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=part["_x"], y=part[y], mode="markers+text", name=str(model),
                # only the front is labelled: many variants share an accuracy and their names would pile up
                text=part["variant"].where(part["_front"], ""), textposition="top center",
                marker={"size": 11, "color": PALETTE[i % len(PALETTE)],
                        "line": {"width": np.where(part["_front"], 2.5, 0), "color": "#1B1F24"}},
                customdata=part["_label"],
                hovertemplate="%{customdata}<br>" + AXIS_TITLES.get(x, x) + " %{x:.3g}<br>"
                + AXIS_TITLES.get(y, y) + " %{y:.4f}<extra></extra>",
            )
        )
    front = data[data["_front"]].sort_values("_x")
    fig.add_trace(
        go.Scatter(
            x=front["_x"], y=front[y], mode="lines", name="Pareto front",
            line={"color": "#1B1F24", "dash": "dash", "width": 1.5, "shape": "hv"}, hoverinfo="skip",
        )
    )
    fig.update_layout(
        title=title, xaxis_title=AXIS_TITLES.get(x, x), yaxis_title=AXIS_TITLES.get(y, y),
        legend_title="model", margin={"t": 50, "l": 50, "r": 20, "b": 50}, height=420,
    )
    return fig


def size_bars(df: pd.DataFrame) -> go.Figure:
    """Size of each variant in KiB, grouped by model, with the float32 size for reference."""
    if df.empty or "size_bytes" not in df or df["size_bytes"].dropna().empty:
        return empty_figure("size: no converted variant yet")
    data = df.dropna(subset=["size_bytes"]).copy()
    data["_kib"] = data["size_bytes"].astype(float) / 1024.0
    fig = go.Figure()
    for i, (model, part) in enumerate(data.groupby("model", sort=False)):
        fig.add_trace(
            go.Bar(
                x=part["variant"], y=part["_kib"], name=str(model),
                marker_color=PALETTE[i % len(PALETTE)],
                text=[f"{v:.1f}" for v in part["_kib"]], textposition="outside",
                hovertemplate="%{x}<br>%{y:.1f} KiB<extra>" + str(model) + "</extra>",
            )
        )
    fig.update_layout(
        title="size per variant", yaxis_title="size (KiB)", barmode="group",
        margin={"t": 50, "l": 50, "r": 20, "b": 80}, height=380, legend_title="model",
    )
    return fig
