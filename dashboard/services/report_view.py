"""A report's figures and exports, built from its snapshot alone (so a link shows what was shared)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from dashboard.components.confusion import confusion_heatmap, recall_change_heatmap
from dashboard.components.latency import latency_bars
from dashboard.components.op_cost import cost_error_scatter
from dashboard.components.tradeoff import size_bars, tradeoff_scatter
from dashboard.services import tables
from qcore.engines import ENGINES
from qcore.lab import reports


def figures(content: dict[str, Any]) -> list[tuple[str, go.Figure]]:
    """(caption, figure) pairs of a report: trade-offs, sizes, latency per target, confusions."""
    f = reports.frames(content)
    variants = f["variants"]
    ok = variants[variants["status"] == "ok"]
    host = "this host, CPU (LiteRT)"
    out = [
        ("Accuracy vs size", tradeoff_scatter(ok, "size_bytes", "accuracy")),
        (f"Accuracy vs latency on {host}", tradeoff_scatter(ok, "host_p50_ms", "accuracy", target=host)),
    ]
    if ok["board_p50_ms"].notna().any():
        bench = f["benchmarks"]
        on_boards = bench[bench["board"] != "host"]
        where = ", ".join(f"{b} ({', '.join(dict.fromkeys(part['target'].astype(str)))})"
                          for b, part in on_boards.groupby("board", sort=False)) or "a board"
        out.append((f"Accuracy vs latency on board {where}: the fastest target per variant",
                    tradeoff_scatter(ok, "board_p50_ms", "accuracy", target=f"board {where}, fastest target")))
    out.append(("Size per variant", size_bars(ok)))
    if not f["benchmarks"].empty:
        out.append(("Latency per target", latency_bars(tables.bench_for_plot(f["benchmarks"], variants))))
    for entry in (content.get("op_cost") or {}).values():
        rows = pd.DataFrame(entry.get("rows") or [])
        errors = pd.to_numeric(rows["rmse_scale"], errors="coerce") if "rmse_scale" in rows else pd.Series()
        if rows.empty or not errors.notna().any():
            continue  # a float variant: no error of its own to chart
        engine = str(entry.get("engine") or "tf")
        scale = ENGINES[engine].metric if engine in ENGINES else ENGINES["tf"].metric
        # the one rule of every page: this model's own spread on the engine's scale
        threshold, _ = scale.suspect_threshold(errors)
        out.append((f"Cost vs error: {entry.get('variant')} ({entry.get('board')} / {entry.get('target')})",
                    cost_error_scatter(rows, threshold, str(entry.get("time_source", "")),
                                       f"debugger run #{entry.get('debug_run_id')}", scale=scale)))
    confusion = content.get("confusion") or {}
    floats = ok[ok["variant"] == "float32"]
    if ok["model_id"].nunique() == 1 and len(floats) and str(int(floats["variant_id"].iloc[0])) in confusion:
        # one compact view instead of a matrix per variant
        base = confusion[str(int(floats["variant_id"].iloc[0]))]
        others = {f"{r.model} / {r.variant}": confusion[str(r.variant_id)] for r in ok.itertuples()
                  if r.variant != "float32" and str(r.variant_id) in confusion}
        if others:
            out.append(("Per-class accuracy change vs float32", recall_change_heatmap(others, base)))
            return out
    for row in ok.itertuples():
        matrix = confusion.get(str(row.variant_id))
        if matrix is not None:
            title = f"{row.model} / {row.variant}"
            out.append((f"Confusion: {title}", confusion_heatmap(matrix, title)))
    return out


def html(report: dict[str, Any]) -> str:
    """The self-contained HTML export: the same figures drawn as inline SVG (no JavaScript, works offline, prints)."""
    return reports.render_html(report, figures(report["content"]))
