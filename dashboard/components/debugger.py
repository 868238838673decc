"""The debugger's per-layer `range` and `rmse_scale` bars (as in seed 004), the search's trials, tensor SNR."""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components.style import NORMAL_COLOR, SUSPECT_COLOR, empty_figure

# sqrt(1/12): the rmse/scale of a uniform rounding error, i.e. a well-quantized tensor (seed 004)
WELL_QUANTIZED_RMSE_SCALE = 0.289


def layer_bars(stats: pd.DataFrame, threshold: float, suspects: Collection[str] = ()) -> go.Figure:
    """Two bar charts side by side: `range` (255 * scale) and `rmse_scale` per layer row.

    Args:
        stats: rows of layer_stats (row_idx, op_name, tensor_name, range, rmse_scale).
        threshold: the suspect threshold, drawn as a red line on the rmse_scale panel.
        suspects: tensor names drawn in red.
    """
    if stats.empty:
        return empty_figure("no layer statistics in this run")
    x = stats["row_idx"] if "row_idx" in stats else pd.Series(range(len(stats)))
    colors = [SUSPECT_COLOR if t in suspects else NORMAL_COLOR for t in stats["tensor_name"]]
    hover = (stats["op_name"].astype(str) + " · " + stats["tensor_name"].astype(str)).tolist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("range = 255 · scale", "rmse / scale"))
    fig.add_trace(
        go.Bar(x=x, y=stats["range"], marker_color=colors, customdata=hover, name="range",
               hovertemplate="#%{x} %{customdata}<br>range %{y:.4g}<extra></extra>"),
        row=1, col=1,
    )
    fig.add_trace(
        go.Bar(x=x, y=stats["rmse_scale"], marker_color=colors, customdata=hover, name="rmse/scale",
               hovertemplate="#%{x} %{customdata}<br>rmse/scale %{y:.3f}<extra></extra>"),
        row=1, col=2,
    )
    fig.add_hline(y=threshold, line_color=SUSPECT_COLOR, line_width=2, row=1, col=2,
                  annotation_text=f"threshold {threshold:g}", annotation_position="top left")
    fig.add_hline(y=WELL_QUANTIZED_RMSE_SCALE, line_color="#5F6368", line_dash="dot", row=1, col=2,
                  annotation_text="0.289 well quantized", annotation_position="bottom right")
    fig.update_xaxes(title_text="layer row", row=1, col=1)
    fig.update_xaxes(title_text="layer row", row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(showlegend=False, height=380, margin={"t": 50, "l": 50, "r": 20, "b": 50})
    return fig


def tune_trials_plot(trials: pd.DataFrame, float_accuracy: float, target_accuracy: float) -> go.Figure:
    """Each conversion the float-layer search tried: layers kept float vs accuracy, pass or fail.

    Args:
        trials: rows of tune_trials (step, denylist as a list or JSON text, accuracy, size_bytes, passed).
        float_accuracy: the float model, drawn as a line.
        target_accuracy: the pass mark, drawn as a red line.
    """
    if trials.empty:
        return empty_figure("the search tried no conversion")
    data = trials.copy()
    data["n_float"] = data["denylist"].map(_count)
    data["_kib"] = data["size_bytes"].astype(float) / 1024.0
    fig = go.Figure()
    for passed, part in data.groupby("passed"):
        fig.add_trace(
            go.Scatter(
                x=part["n_float"], y=part["accuracy"], mode="markers+text",
                name="passed" if passed else "failed",
                marker={"size": 12, "symbol": "circle" if passed else "x",
                        "color": "#1E8E3E" if passed else SUSPECT_COLOR},
                text=[f"#{s}" for s in part["step"]], textposition="top center",
                customdata=part["_kib"],
                hovertemplate="%{x} layers float<br>accuracy %{y:.4f}<br>%{customdata:.1f} KiB<extra></extra>",
            )
        )
    fig.add_hline(y=float_accuracy, line_dash="dot", line_color="#5F6368",
                  annotation_text=f"float {float_accuracy:.4f}", annotation_position="bottom right")
    fig.add_hline(y=target_accuracy, line_color=SUSPECT_COLOR,
                  annotation_text=f"target {target_accuracy:.4f}", annotation_position="top left")
    fig.update_layout(
        title="conversions tried by the search", xaxis_title="layers kept in float",
        yaxis_title="accuracy", height=360, margin={"t": 50, "l": 50, "r": 20, "b": 50},
    )
    return fig


def tensor_snr_bars(diffs: pd.DataFrame) -> go.Figure:
    """SNR (dB) of every matched tensor, float vs quantized, in graph order."""
    if diffs.empty:
        return empty_figure("no tensor matched by name")
    snr = diffs["snr_db"].astype(float).clip(upper=120.0)  # identical tensors give inf
    fig = go.Figure(
        go.Bar(x=list(range(len(diffs))), y=snr, customdata=diffs["name"], marker_color=NORMAL_COLOR,
               hovertemplate="%{customdata}<br>SNR %{y:.1f} dB<extra></extra>")
    )
    fig.update_layout(title="signal-to-noise per tensor (higher is better)", xaxis_title="tensor",
                      yaxis_title="SNR (dB)", height=320, margin={"t": 50, "l": 50, "r": 20, "b": 50})
    return fig


def _count(denylist: object) -> int:
    if isinstance(denylist, str):
        import json

        denylist = json.loads(denylist)
    return len(denylist) if isinstance(denylist, list | tuple) else 0
