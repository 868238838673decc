"""Op types of a .tflite as stacked bars (integer vs float): the Inspect page's summary for 200+ ops."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.components.style import NORMAL_COLOR, SUSPECT_COLOR, empty_figure

# integer ops run on the NPU; float ones fall back to the CPU
COMPUTE_COLORS = {"integer": NORMAL_COLOR, "float": SUSPECT_COLOR}


def op_count_bars(counts: pd.DataFrame) -> go.Figure:
    """Ops per type, most frequent on top, split by where they compute.

    Args:
        counts: rows of (op, computes in, count), as dashboard.services.inspection.op_counts.
    """
    if counts.empty:
        return empty_figure("no op in this model")
    order = list(dict.fromkeys(counts["op"]))
    fig = go.Figure()
    for where, part in counts.groupby("computes in", sort=True):
        fig.add_trace(go.Bar(y=part["op"], x=part["count"], orientation="h", name=f"computes in {where}",
                             marker_color=COMPUTE_COLORS.get(str(where), NORMAL_COLOR),
                             hovertemplate="%{y}: %{x} ops in " + str(where) + "<extra></extra>"))
    fig.update_yaxes(categoryorder="array", categoryarray=order, autorange="reversed", automargin=True)
    fig.update_layout(barmode="stack", title=f"{int(counts['count'].sum())} ops by type", xaxis_title="ops",
                      height=max(220, 22 * len(order) + 110), margin={"t": 50, "l": 10, "r": 20, "b": 40},
                      legend={"orientation": "h", "y": -0.15})
    return fig
