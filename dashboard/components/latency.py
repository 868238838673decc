"""NPU-vs-CPU latency bars per variant and target, with the first inference shown apart."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components.style import TARGET_COLORS, empty_figure

# fill patterns, one per board when several boards share a chart ("" is solid)
BOARD_PATTERNS = ("", "/", "x", ".", "\\", "+", "-", "|")

TARGET_ORDER = ("npu", "cpu", "cpu-plain", "host")


def latency_bars(bench: pd.DataFrame) -> go.Figure:
    """Steady-state p50 (left) and first inference (right) per variant, one bar per target.

    The first inference includes the NPU's graph compile, so it is never mixed into the
    steady-state panel.

    Args:
        bench: rows with `label` (the variant), `target`, `p50_ms`, `first_ms` and optionally
            `board` and `threads`; the latest row per (label, board, target) is drawn.
    """
    if bench.empty or bench["p50_ms"].dropna().empty:
        return empty_figure("no benchmark result yet")
    data = bench.copy()
    if "board" not in data:
        data["board"] = ""
    data["_series"] = data["target"].astype(str)
    if data["board"].nunique() > 1:  # name the board, except for this host's own timings
        data["_series"] = [t if b in ("host", "") else f"{b} · {t}"
                           for b, t in zip(data["board"].astype(str), data["target"].astype(str), strict=True)]
    data = data.drop_duplicates(subset=["label", "_series"], keep="first")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("steady state p50 (ms)", "first inference (ms)"))
    order = {t: i for i, t in enumerate(TARGET_ORDER)}
    series = sorted(data["_series"].unique(), key=lambda s: (order.get(s.split(" · ")[-1], 99), s))
    # colour says the target; a board of its own gets its own fill pattern, so two boards never look alike
    boards = list(dict.fromkeys(s.split(" · ")[0] for s in series if " · " in s))
    for s in series:
        part = data[data["_series"] == s]
        target = s.split(" · ")[-1]
        color = TARGET_COLORS.get(target, "#5F6368")
        board = s.split(" · ")[0] if " · " in s else ""
        pattern = BOARD_PATTERNS[boards.index(board) % len(BOARD_PATTERNS)] if board in boards else ""
        for col, metric in ((1, "p50_ms"), (2, "first_ms")):
            fig.add_trace(
                go.Bar(x=part["label"], y=part[metric], name=s, marker_color=color, legendgroup=s,
                       marker_pattern_shape=pattern,
                       showlegend=col == 1, text=[_fmt(v) for v in part[metric]], textposition="outside",
                       hovertemplate="%{x}<br>" + s + ": %{y:.3f} ms<extra></extra>"),
                row=1, col=col,
            )
    fig.update_layout(barmode="group", height=420, legend_title="target", title=where_measured(data),
                      margin={"t": 80, "l": 50, "r": 20, "b": 90})
    fig.update_yaxes(title_text="ms", row=1, col=1)
    return fig


def where_measured(bench: pd.DataFrame) -> str:
    """"measured on imx8mp-1: npu, cpu · this host: CPU": every latency figure names its boards and targets."""
    parts = []
    boards = bench["board"].astype(str) if "board" in bench else pd.Series([""] * len(bench), index=bench.index)
    for board in dict.fromkeys(boards):
        targets = ", ".join(dict.fromkeys(bench.loc[boards == board, "target"].astype(str)))
        if board in ("host", ""):
            parts.append("this host (CPU, LiteRT)")
        else:
            parts.append(f"board {board}: {targets}")
    return "measured on " + " · ".join(parts)


def _fmt(v: object) -> str:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return "" if f != f else f"{f:.3g}"
