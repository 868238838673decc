"""The debugger's per-layer `rmse_scale` and `range` bars, the search's trials, tensor SNR: ranked views for 150+ layers."""

from __future__ import annotations

import json
from collections.abc import Collection

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components.style import NORMAL_COLOR, SUSPECT_COLOR, empty_figure
from dashboard.services import layers
from qcore.engines.base import LayerErrorMetric
from qcore.engines.tf import METRIC as TF_METRIC

# sqrt(1/12): the rmse/scale of a uniform rounding error, i.e. a well-quantized tensor
WELL_QUANTIZED_RMSE_SCALE = layers.WELL_QUANTIZED
# the reference line: rounding only (layer by layer) or the model's median layer (whole model)
REFERENCE_COLOR = "#5F6368"


# metric column → axis title
METRIC_TITLES = {
    "rmse_scale": "rmse / scale",
    "range": "range = 255 · scale",
    "mean_squared_error": "mean squared error",
    "max_abs_error": "max abs error",
    "mean_error": "mean error",
    "stddev": "stddev of the error",
}
# pixels per bar in the ranked views: labels stay readable at any layer count
BAR_PX = 22
# a metric spanning more than this factor gets a log axis
LOG_SPAN = 10.0


def _axis(fig: go.Figure, values: pd.Series, col: int) -> None:
    """A log x axis with real tick values (20, 50, 100) when the values span more than 10×."""
    v = pd.to_numeric(values, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    v = v[v > 0]
    if len(v) > 1 and float(v.max()) > LOG_SPAN * float(v.min()):
        ticks = layers.log_ticks(float(v.min()), float(v.max()))
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=layers.tick_text(ticks), row=1, col=col)


def _key_line(fig: go.Figure, name: str, color: str, dash: str) -> None:
    """A legend entry for a reference line: its words sit in the legend, never over a bar."""
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, hoverinfo="skip",
                             line={"color": color, "dash": dash, "width": 2}))


def layer_bars(stats: pd.DataFrame, threshold: float, suspects: Collection[str] = (), *,
               metric: str = "rmse_scale", top_n: int = 30, worst_first: bool = True, source: str = "",
               scale: LayerErrorMetric = TF_METRIC) -> go.Figure:
    """Per-layer error as ranked horizontal bars: short Keras layer names, worst at the top.

    Two panels share the layer axis: the chosen metric (rmse/scale by default, with the suspect
    threshold and the scale's reference line) and `range` (255 · scale), or rmse/scale when
    `range` is the metric. Log axes show their real tick values. The lines' words sit in a legend
    above the plot, so they never hide a bar.

    Args:
        stats: rows of layer_stats (op_name, tensor_name, range, rmse_scale, other metrics).
        threshold: the suspect threshold on rmse/scale.
        suspects: tensor names drawn in red.
        metric: the column to rank by.
        top_n: how many layers to draw (0 = all).
        worst_first: rank by the metric; False keeps the layer order.
        source: what made these rows (the debugger run and its engine), shown in the title.
        scale: the engine's per-layer error metric: its name titles the rmse/scale axis, its
            reference (rounding only, or the model's median when errors propagate) draws the dotted line.
    """
    if stats.empty or metric not in stats:
        return empty_figure("no layer statistics in this run")
    data = layers.rank(stats, metric, worst_first)
    if top_n > 0:
        data = data.head(top_n)
    labels = layers.unique_labels(data["tensor_name"].tolist(), layers.known_names(data))
    colors = [SUSPECT_COLOR if t in suspects else NORMAL_COLOR for t in data["tensor_name"]]
    full = data["tensor_name"].astype(str).str.slice(0, 120)
    hover = np.stack([data["op_name"].astype(str), full], axis=-1)
    other = "rmse_scale" if metric == "range" else "range"
    panels = [metric] + ([other] if other in data else [])
    titles = {**METRIC_TITLES, "rmse_scale": scale.title}
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[titles.get(m, m) for m in panels])
    for col, m in enumerate(panels, start=1):
        fig.add_trace(
            go.Bar(y=labels, x=data[m], orientation="h", marker_color=colors, customdata=hover,
                   name=titles.get(m, m), showlegend=False,
                   hovertemplate="<b>%{y}</b> (%{customdata[0]})<br>" + titles.get(m, m)
                   + " %{x:.4g}<br><span style='font-size:10px'>%{customdata[1]}</span><extra></extra>"),
            row=1, col=col,
        )
        _axis(fig, data[m], col)
        if m == "rmse_scale":
            reference = scale.reference_of(stats["rmse_scale"])
            fig.add_vline(x=threshold, line_color=SUSPECT_COLOR, line_width=2, row=1, col=col)
            fig.add_vline(x=reference, line_color=REFERENCE_COLOR, line_dash="dot", line_width=2, row=1, col=col)
            _key_line(fig, f"suspect above {threshold:g}", SUSPECT_COLOR, "solid")
            _key_line(fig, scale.reference_label(stats["rmse_scale"]), REFERENCE_COLOR, "dot")
    shown = f"worst {len(data)} of {len(stats)} by {titles.get(metric, metric)}" if worst_first else (
        f"first {len(data)} of {len(stats)} in layer order")
    if source:
        shown += f" · {source}"
    fig.update_yaxes(autorange="reversed", automargin=True, tickfont={"size": 11})
    height = max(280, BAR_PX * len(data) + 150)
    # top margin, from the top: the title, the lines' legend, the panels' titles; all above the bars
    fig.update_layout(title={"text": shown, "y": 1 - 8 / height, "yanchor": "top", "yref": "container"},
                      height=height,
                      legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1 - 40 / height, "yanchor": "top",
                              "yref": "container", "font": {"size": 12}},
                      margin={"t": 100, "l": 10, "r": 20, "b": 40}, bargap=0.25)
    return fig


def tune_trials_plot(trials: pd.DataFrame, float_accuracy: float, target_accuracy: float,
                     source: str = "") -> go.Figure:
    """Each conversion the float-layer search tried: layers kept float vs accuracy, pass or fail.

    Args:
        trials: rows of tune_trials (step, denylist as a list or JSON text, accuracy, size_bytes, passed).
        float_accuracy: the float model, drawn as a line.
        target_accuracy: the pass mark, drawn as a red line.
        source: the engine that ranked and tried, shown in the title.
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
        title="conversions tried by the search" + (f" · {source}" if source else ""),
        xaxis_title="layers kept in float",
        yaxis_title="accuracy", height=360, margin={"t": 50, "l": 50, "r": 20, "b": 50},
    )
    return fig


def tensor_snr_bars(diffs: pd.DataFrame, top_n: int = 30, title: str = "signal-to-noise per tensor") -> go.Figure:
    """SNR (dB) of matched tensors, float vs quantized, as ranked horizontal bars: the worst (lowest) first.

    Args:
        diffs: rows of TensorDiff (name, snr_db, mse, cosine, quant_dtype).
        top_n: how many tensors to draw (0 = all).
        title: what these tensors are (activations, or weights and biases).
    """
    if diffs.empty:
        return empty_figure(f"{title}: no tensor matched by name")
    data = diffs.assign(_snr=diffs["snr_db"].astype(float).clip(upper=120.0))  # identical tensors give inf
    data = data.sort_values("_snr", kind="stable", na_position="last")
    if top_n > 0:
        data = data.head(top_n)
    labels = layers.unique_labels(data["name"].tolist(), layers.known_names(data, "name"))
    hover = np.stack([data["name"].astype(str).str.slice(0, 120),
                      data["mse"].map(lambda v: f"{float(v):.3e}"),
                      data.get("quant_dtype", pd.Series([""] * len(data), index=data.index)).astype(str)], axis=-1)
    fig = go.Figure(
        go.Bar(y=labels, x=data["_snr"], orientation="h", customdata=hover, marker_color=NORMAL_COLOR,
               hovertemplate="<b>%{y}</b> (%{customdata[2]})<br>SNR %{x:.1f} dB · MSE %{customdata[1]}"
               "<br><span style='font-size:10px'>%{customdata[0]}</span><extra></extra>")
    )
    fig.update_yaxes(autorange="reversed", automargin=True, tickfont={"size": 11})
    fig.update_layout(title=f"{title}: worst {len(data)} of {len(diffs)} (higher SNR is better)",
                      xaxis_title="SNR (dB)", height=max(240, BAR_PX * len(data) + 110),
                      margin={"t": 50, "l": 10, "r": 20, "b": 40})
    return fig


def _count(denylist: object) -> int:
    if isinstance(denylist, str):
        denylist = json.loads(denylist)
    return len(denylist) if isinstance(denylist, list | tuple) else 0
