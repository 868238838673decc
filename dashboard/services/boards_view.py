"""The tables behind /boards: health per board, benchmark rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from qcore.boards.runs import BoardHealth

TARGETS = ("npu", "cpu", "cpu-plain")
# one line per target, shown beside its checkbox
TARGET_HELP = {
    "npu": "the i.MX8M Plus NPU through the VX delegate (8-bit integer ops; the first run compiles the graph)",
    "cpu": "the board's Cortex-A53 cores with XNNPACK, LiteRT's default CPU path",
    "cpu-plain": "the CPU without XNNPACK: LiteRT's reference kernels, the baseline XNNPACK is measured against",
}


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


def profile_choice(health: BoardHealth | None) -> tuple[bool, str]:
    """(a per-op profile can run, why not) from the board's last health check (its `benchmark_model`)."""
    if health is None or not health.reachable:
        return False, "no health check yet" if health is None else f"board unreachable: {health.error}"
    prof = (health.health or {}).get("profile")
    if not isinstance(prof, dict):
        return False, "the agent does not report one"
    return bool(prof.get("available")), str(prof.get("reason") or "not reported")


def reason_lines(reasons: list[dict[str, object]]) -> list[str]:
    """A job's reasons grouped: "npu on imx-1: VX delegate not found (variants #3, #4, #5)", one line per reason."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for r in reasons:
        key = (str(r.get("target") or "-"), str(r.get("board") or "-"), str(r.get("reason") or ""))
        grouped.setdefault(key, []).append(f"#{r.get('variant_id')}")
    return [f"{target} on {board}: {reason} (variant{'s' if len(ids) > 1 else ''} {', '.join(ids)})"
            for (target, board, reason), ids in grouped.items()]


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


def latency_matrix(bench: pd.DataFrame) -> pd.DataFrame:
    """Benchmarked variants only, one row each, one column per board · target: the newest p50 in ms."""
    if bench.empty:
        return pd.DataFrame(columns=["variant"])
    data = bench.copy()
    boards = data["board"].astype(str) if "board" in data else pd.Series(["host"] * len(data), index=data.index)
    data["where"] = [("this host" if b == "host" else f"{b} · {t}")
                     for b, t in zip(boards, data["target"].astype(str), strict=True)]
    newest = data.drop_duplicates(subset=["label", "where"], keep="first")  # bench_for_plot sorts newest first
    table = newest.pivot(index="label", columns="where", values="p50_ms").round(3)
    return table.reset_index().rename(columns={"label": "variant"}).rename_axis(None, axis=1)


def health_notes(health: Sequence[BoardHealth]) -> list[str]:
    """Every board's error and every unavailable target's reason, in full (table cells cut them short)."""
    out = []
    for h in health:
        if not h.reachable:
            out.append(f"{h.board.name}: {h.error}")
            continue
        for t, info in ((h.health or {}).get("targets") or {}).items():
            if not info.get("available") and info.get("reason"):
                out.append(f"{h.board.name} · {t}: {info['reason']}")
    return out
