"""The tables behind /boards: health per board, benchmark rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from qcore.board_runs import BoardHealth

TARGETS = ("npu", "cpu", "cpu-plain")


def health_table(health: Sequence[BoardHealth], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per board: reachable, labels, runtime, each target's availability (or why not), queue."""
    rows = []
    for h in health:
        info = h.health or {}
        targets = info.get("targets", {})
        row: dict[str, object] = {"board": h.board.name, "url": h.board.url,
                                  "token": "set" if h.board.has_token else "none", "reachable": h.reachable,
                                  "labels": (labels or {}).get(h.board.name, "")}
        runtime = info.get("runtime")
        row["runtime"] = (f"{runtime.get('name', '')} {runtime.get('version', '')}".strip()
                          if isinstance(runtime, dict) else (runtime or ""))
        for t in TARGETS:
            t_info = targets.get(t, {})
            row[t] = "available" if t_info.get("available") else (t_info.get("reason") or "–") if h.reachable else "–"
        row["queue"] = info.get("queue_depth")
        row["error"] = h.error
        rows.append(row)
    return pd.DataFrame(rows, columns=["board", "url", "token", "reachable", "labels", "runtime", *TARGETS, "queue",
                                       "error"])


def bench_rows(bench: pd.DataFrame) -> pd.DataFrame:
    """Benchmark results for the table: who, where, first inference apart from the steady state."""
    if bench.empty:
        return bench
    cols = ["label", "board", "target", "threads", "runs", "init_ms", "first_ms", "p50_ms", "p90_ms", "mean_ms",
            "std_ms", "peak_rss_mb", "created_at"]
    return bench[[c for c in cols if c in bench]].rename(columns={"label": "variant"})


def target_choices(health: BoardHealth | None) -> list[tuple[str, bool, str]]:
    """(target, available, reason) for each target of a board, as its last health check said."""
    if health is None:
        return [(t, False, "no health check yet") for t in TARGETS]
    if not health.reachable:
        return [(t, False, f"board unreachable: {health.error}") for t in TARGETS]
    targets = (health.health or {}).get("targets", {})
    return [(t, bool(targets.get(t, {}).get("available")), str(targets.get(t, {}).get("reason") or "not reported"))
            for t in TARGETS]


def labels_by_board(labels: pd.DataFrame) -> dict[str, str]:
    """'key=value, ...' per board (health-derived labels marked with *)."""
    out: dict[str, list[str]] = {}
    for r in labels.itertuples(index=False):
        out.setdefault(str(r.board), []).append(f"{r.key}={r.value}" + ("*" if r.source == "health" else ""))
    return {k: ", ".join(v) for k, v in out.items()}


def cells_table(cells: pd.DataFrame, variants: pd.DataFrame) -> pd.DataFrame:
    """The cells of a run for the table: variant label, target, board, status, p50 or accuracy, reason."""
    if cells.empty:
        return cells
    names = {int(r.variant_id): f"{r.model} / {r.variant}" for r in variants.itertuples(index=False)} \
        if not variants.empty else {}
    out = cells.assign(variant=[names.get(int(v), f"#{v}") if pd.notna(v) else "" for v in cells["variant_id"]])
    cols = ["variant", "target", "board", "status", "p50_ms", "accuracy", "reason"]
    return out[[c for c in cols if c in out]]


def spread_table(spread: pd.DataFrame, variants: pd.DataFrame) -> pd.DataFrame:
    """p50 per board beside the pool's min / median / max, one row per (variant, target, board)."""
    if spread.empty:
        return spread
    names = {int(r.variant_id): f"{r.model} / {r.variant}" for r in variants.itertuples(index=False)} \
        if not variants.empty else {}
    return spread.assign(variant=[names.get(int(v), f"#{v}") for v in spread["variant_id"]])[
        ["variant", "target", "board", "p50_ms", "pool_min_ms", "pool_median_ms", "pool_max_ms", "boards", "failed"]]
