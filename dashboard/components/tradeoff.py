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


# marker symbol per NPU verdict: ready, falls back to the CPU, not linted
NPU_SYMBOLS = {True: "circle", False: "x", None: "diamond-open"}
NPU_NAMES = {True: "NPU-ready", False: "not NPU-ready", None: "no NPU verdict"}
# text positions tried in turn so neighbouring labels do not sit on each other
_TEXT_POSITIONS = ("top center", "bottom center", "top right", "bottom left", "top left", "bottom right")
# a latency axis spanning more than this factor is drawn in log scale
LOG_SPAN = 10.0


def _npu_state(value: object) -> bool | None:
    # DuckDB hands a nullable boolean column over as pd.NA, which bool() refuses
    if value is None or bool(pd.isna(value)):
        return None
    return bool(value)


def latency_unit(values: pd.Series) -> tuple[float, str]:
    """(factor, unit) to show milliseconds in: µs when every value is under 1 ms."""
    finite = values.astype(float).dropna()
    if len(finite) and float(finite.max()) < 1.0:
        return 1000.0, "µs"
    return 1.0, "ms"


def tradeoff_scatter(df: pd.DataFrame, x: str = "size_bytes", y: str = "accuracy",
                     target: str = "") -> go.Figure:
    """Accuracy against `x` (size_bytes, host_p50_ms or board_p50_ms): colour per recipe, symbol per NPU verdict.

    Colour is per variant (recipe) for one model, per model when several are shown. Every
    point is labelled, the float model's accuracy is a dotted line, accuracy is in percent,
    latency is in µs when all of it is under 1 ms and on a log axis when it spans over 10×.

    Args:
        df: rows of v_variant_summary (needs model, variant and the two columns; npu_ready and
            float_accuracy when present).
        x: the cost column; size is shown in KiB.
        y: the quality column.
        target: where latency was measured, named in the axis title (e.g. "board imx8mp / npu").

    Returns:
        A scatter with the Pareto front drawn as a line through its points.
    """
    x_title = AXIS_TITLES.get(x, x)
    title = f"{AXIS_TITLES.get(y, y)} vs {x_title}"
    if df.empty or x not in df or y not in df or df[[x, y]].dropna().empty:
        return empty_figure(f"{title}: no variant has both values yet")
    data = df.dropna(subset=[x, y]).copy()
    factor, unit = (1.0 / 1024.0, "KiB") if x == "size_bytes" else latency_unit(data[x])
    data["_x"] = data[x].astype(float) * factor
    if x != "size_bytes":
        x_title = x_title.replace("(ms)", f"({unit})") + (f" · {target}" if target else "")
    data["_y"] = data[y].astype(float) * 100.0
    data["_label"] = variant_labels(data)
    data["_front"] = pareto_front(data, "_x", "_y")
    data["_npu"] = [_npu_state(v) for v in data["npu_ready"]] if "npu_ready" in data else None
    several = data["model"].nunique() > 1
    colour_key = "model" if several else "variant"
    colours = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(dict.fromkeys(data[colour_key]))}
    data = data.sort_values("_x")
    data["_pos"] = [_TEXT_POSITIONS[i % len(_TEXT_POSITIONS)] for i in range(len(data))]
    fig = go.Figure()
    for (key, npu), part in data.groupby([colour_key, "_npu"], sort=False, dropna=False):
        state = _npu_state(npu)
        fig.add_trace(
            go.Scatter(
                x=part["_x"], y=part["_y"], mode="markers+text", name=f"{key} · {NPU_NAMES[state]}",
                text=part["_label"] if several else part["variant"], textposition=part["_pos"].tolist(),
                cliponaxis=False, textfont={"size": 11},
                marker={"size": 12, "color": colours[key], "symbol": NPU_SYMBOLS[state],
                        "line": {"width": np.where(part["_front"], 2.5, 1), "color": "#1B1F24"}},
                customdata=np.stack([part["_label"], [NPU_NAMES[state]] * len(part)], axis=-1),
                hovertemplate="%{customdata[0]}<br>" + x_title + " %{x:.3g}<br>"
                + AXIS_TITLES.get(y, y) + " %{y:.2f}%<br>%{customdata[1]}<extra></extra>",
            )
        )
    front = data[data["_front"]].sort_values("_x")
    fig.add_trace(
        go.Scatter(
            x=front["_x"], y=front["_y"], mode="lines", name="Pareto front",
            line={"color": "#1B1F24", "dash": "dash", "width": 1.5, "shape": "hv"}, hoverinfo="skip",
        )
    )
    if "float_accuracy" in data and data["float_accuracy"].notna().any() and not several:
        base = float(data["float_accuracy"].dropna().iloc[0]) * 100.0
        fig.add_hline(y=base, line_dash="dot", line_color="#5F6368",
                      annotation_text=f"float model {base:.2f}%", annotation_position="bottom right")
    xs = data["_x"][data["_x"] > 0]
    log_x = x != "size_bytes" and len(xs) > 1 and float(xs.max()) > LOG_SPAN * float(xs.min())
    fig.update_xaxes(type="log" if log_x else "linear")
    fig.update_yaxes(ticksuffix="%", tickformat=".2f")
    fig.update_layout(
        title=title, xaxis_title=x_title + (" (log)" if log_x else ""), yaxis_title=AXIS_TITLES.get(y, y) + " (%)",
        legend_title="model · NPU" if several else "recipe · NPU", height=440,
        margin={"t": 60, "l": 60, "r": 40, "b": 50},
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
