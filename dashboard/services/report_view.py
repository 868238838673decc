"""A report's figures and exports, built from its snapshot alone (so a link shows what was shared)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from dashboard.components.confusion import confusion_heatmap
from dashboard.components.latency import latency_bars
from dashboard.components.tradeoff import size_bars, tradeoff_scatter
from dashboard.services import tables
from qcore import reports


def figures(content: dict[str, Any]) -> list[tuple[str, go.Figure]]:
    """(caption, figure) pairs of a report: trade-offs, sizes, latency per target, confusions."""
    f = reports.frames(content)
    variants = f["variants"]
    ok = variants[variants["status"] == "ok"]
    out = [
        ("Accuracy vs size", tradeoff_scatter(ok, "size_bytes", "accuracy")),
        ("Accuracy vs host latency", tradeoff_scatter(ok, "host_p50_ms", "accuracy")),
    ]
    if ok["board_p50_ms"].notna().any():
        out.append(("Accuracy vs board latency", tradeoff_scatter(ok, "board_p50_ms", "accuracy")))
    out.append(("Size per variant", size_bars(ok)))
    if not f["benchmarks"].empty:
        out.append(("Latency per target", latency_bars(tables.bench_for_plot(f["benchmarks"], variants))))
    confusion = content.get("confusion") or {}
    for row in ok.itertuples():
        matrix = confusion.get(str(row.variant_id))
        if matrix is not None:
            title = f"{row.model} / {row.variant}"
            out.append((f"Confusion: {title}", confusion_heatmap(matrix, title)))
    return out


def html(report: dict[str, Any]) -> str:
    """The self-contained HTML export (plotly.js inline once, works offline)."""
    return reports.render_html(report, figures(report["content"]))


def drift(content: dict[str, Any]) -> Any:
    f = reports.frames(content)
    return tables.drift_table(f["evaluations"], f["variants"])
