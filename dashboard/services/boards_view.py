"""The tables behind /boards: health per board, benchmark rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from qcore.board_client import BoardHealth

TARGETS = ("npu", "cpu", "cpu-plain")


def health_table(health: Sequence[BoardHealth]) -> pd.DataFrame:
    """One row per board: reachable, runtime, each target's availability (or why not), queue."""
    rows = []
    for h in health:
        info = h.health or {}
        targets = info.get("targets", {})
        row: dict[str, object] = {"board": h.board.name, "url": h.board.url,
                                  "token": "set" if h.board.has_token else "none", "reachable": h.reachable}
        runtime = info.get("runtime")
        row["runtime"] = (f"{runtime.get('name', '')} {runtime.get('version', '')}".strip()
                          if isinstance(runtime, dict) else (runtime or ""))
        for t in TARGETS:
            t_info = targets.get(t, {})
            row[t] = "available" if t_info.get("available") else (t_info.get("reason") or "–") if h.reachable else "–"
        row["queue"] = info.get("queue_depth")
        row["error"] = h.error
        rows.append(row)
    return pd.DataFrame(rows, columns=["board", "url", "token", "reachable", "runtime", *TARGETS, "queue", "error"])


def bench_rows(bench: pd.DataFrame) -> pd.DataFrame:
    """Benchmark results for the table: who, where, first inference apart from the steady state."""
    if bench.empty:
        return bench
    cols = ["label", "board", "target", "threads", "runs", "init_ms", "first_ms", "p50_ms", "p90_ms", "mean_ms",
            "std_ms", "peak_rss_mb", "created_at"]
    return bench[[c for c in cols if c in bench]].rename(columns={"label": "variant"})
