"""Accuracy against size or latency with the Pareto front marked, and the size bar chart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.components.style import PALETTE, empty_figure, variant_labels
from qcore.recipes import RECIPES

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


# one colour per recipe, stable across figures and pages (the registry's order), distinct for all ten
RECIPE_COLORS = dict(zip(RECIPES, ("#0F6CBD", "#E8710A", "#1E8E3E", "#A142F4", "#D93025", "#12B5CB", "#8C6D1F",
                                   "#E91E63", "#5F6368", "#00796B"), strict=True))
# colours for what is not a registry recipe (QAT, imported files), after the recipes' own
_OTHER_COLORS = ("#3949AB", "#F9AB00", "#6D4C41", "#9E9D24", "#AD1457", "#263238")
# marker shape per engine; the NPU verdict is the fill (solid = NPU-ready, open = falls back to the CPU)
ENGINE_SYMBOLS = {"tf": "circle", "aeq": "diamond", "imported": "square"}
_OTHER_SYMBOLS = ("triangle-up", "star", "hexagon", "pentagon")
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


def recipe_of(row: dict[str, object]) -> str:
    """What a point's colour stands for: its registry recipe, else its kind ("qat", "imported")."""
    recipe, kind = row.get("recipe"), row.get("kind")
    if isinstance(recipe, str) and recipe:
        return recipe
    return str(kind) if isinstance(kind, str) and kind else str(row.get("variant"))


def colours_for(keys: list[str]) -> dict[str, str]:
    """A distinct colour per key: registry recipes keep theirs everywhere, others take the next free one."""
    out = {k: RECIPE_COLORS[k] for k in keys if k in RECIPE_COLORS}
    others = [k for k in dict.fromkeys(keys) if k not in RECIPE_COLORS]
    for i, k in enumerate(others):
        out[k] = _OTHER_COLORS[i % len(_OTHER_COLORS)]
    return out


def symbol_for(engine: object, npu: bool | None) -> str:
    """The engine's shape, open when the variant is not NPU-ready (dotted when it has no verdict)."""
    name = str(engine) if isinstance(engine, str) and engine else "tf"
    base = ENGINE_SYMBOLS.get(name) or _OTHER_SYMBOLS[sum(map(ord, name)) % len(_OTHER_SYMBOLS)]
    return base if npu else (f"{base}-open" if npu is False else f"{base}-open-dot")


def tradeoff_scatter(df: pd.DataFrame, x: str = "size_bytes", y: str = "accuracy",
                     target: str = "") -> go.Figure:
    """Accuracy against `x` (size_bytes, host_p50_ms or board_p50_ms), readable at 20+ variants.

    Colour per recipe (the same colour for a recipe on every page), shape per engine, filled when
    NPU-ready and open when not. Only the Pareto front is labelled on the plot; every point names
    itself on hover. The legend lists recipes, engines and the NPU fill once each, so it stays short
    whatever the number of variants. The float model's accuracy is a dotted line, accuracy is in
    percent, latency is in µs when all of it is under 1 ms and on a log axis when it spans over 10×.

    Args:
        df: rows of v_variant_summary (needs model, variant and the two columns; recipe, engine,
            npu_ready and float_accuracy when present).
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
    several = data["model"].nunique() > 1
    data["_label"] = variant_labels(data) if several else data["variant"].astype(str)
    data["_front"] = pareto_front(data, "_x", "_y")
    records = data.to_dict("records")
    data["_recipe"] = [recipe_of(r) for r in records]
    data["_engine"] = [str(r.get("engine")) if isinstance(r.get("engine"), str) and r.get("engine") else "tf"
                       for r in records]
    data["_npu"] = [_npu_state(r.get("npu_ready")) for r in records]
    colours = colours_for(list(data["_recipe"]))
    data = data.sort_values("_x")
    front_pos = iter(_TEXT_POSITIONS * (len(data) // len(_TEXT_POSITIONS) + 1))
    data["_text"] = [lbl if on else "" for lbl, on in zip(data["_label"], data["_front"], strict=True)]
    data["_pos"] = [next(front_pos) if on else "top center" for on in data["_front"]]
    hover_names = variant_labels(data)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=data["_x"], y=data["_y"], mode="markers+text", name="variants", showlegend=False,
            text=data["_text"], textposition=data["_pos"].tolist(), cliponaxis=False, textfont={"size": 11},
            marker={"size": 12, "color": [colours[r] for r in data["_recipe"]],
                    "symbol": [symbol_for(e, n) for e, n in zip(data["_engine"], data["_npu"], strict=True)],
                    "line": {"width": np.where(data["_front"], 2.5, 1.5).tolist(),
                             "color": [colours[r] for r in data["_recipe"]]}},
            customdata=np.stack([hover_names, data["_engine"], [NPU_NAMES[n] for n in data["_npu"]]], axis=-1),
            hovertemplate="<b>%{customdata[0]}</b> (%{customdata[1]})<br>" + x_title + " %{x:.3g}<br>"
            + AXIS_TITLES.get(y, y) + " %{y:.2f}%<br>%{customdata[2]}<extra></extra>",
        )
    )
    # the legend: each recipe's colour, each engine's shape, the NPU fill, once each
    for recipe, colour in colours.items():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=recipe, legendgroup="recipe",
                                 legendgrouptitle_text="recipe", marker={"size": 10, "color": colour,
                                                                         "symbol": "square"}))
    for engine in dict.fromkeys(data["_engine"]):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"engine {engine}", legendgroup="engine",
                                 legendgrouptitle_text="shape", marker={"size": 10, "color": "#3C4043",
                                                                        "symbol": symbol_for(engine, True)}))
    for state in dict.fromkeys(data["_npu"]):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=NPU_NAMES[state], legendgroup="npu",
                                 legendgrouptitle_text="fill", marker={"size": 10, "color": "#3C4043",
                                                                       "symbol": symbol_for("tf", state)}))
    front = data[data["_front"]].sort_values("_x")
    fig.add_trace(
        go.Scatter(
            x=front["_x"], y=front["_y"], mode="lines", name="Pareto front (labelled)",
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
        height=520, margin={"t": 60, "l": 60, "r": 40, "b": 50},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.18, "yanchor": "top", "font": {"size": 11},
                "groupclick": "toggleitem"},
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
