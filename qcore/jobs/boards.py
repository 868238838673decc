"""Board runs as jobs: they run in the owner process (HTTP to the agents; the farm records each cell as it lands)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from qcore.boards.runs import AccuracyItem, accuracy_run, matrix, variant_model
from qcore.inputs.data import load_stored_dataset
from qcore.jobs.contract import BoardAccuracyParams, BoardBenchParams, BoardMatrixParams, JobKind
from qcore.qtyping import Progress, QlabError
from qcore.store import Store


def board_bench_task(store: Store, params: BoardBenchParams, progress: Progress) -> dict[str, Any]:
    """A matrix on one board: every (variant, target) cell succeeds or fails on its own, and a failed
    cell keeps its reason in the store (picking npu on a board without the NPU still stores the CPU timings)."""
    return board_matrix_task(store, BoardMatrixParams(
        pool=params.board, variant_ids=params.variant_ids, targets=params.targets, placement="board",
        runs=params.runs, warmup=params.warmup, threads=params.threads, profile=params.profile), progress)


def board_matrix_task(store: Store, params: BoardMatrixParams, progress: Progress) -> dict[str, Any]:
    result = matrix(store, list(params.variant_ids), list(params.targets), pool=params.pool,
                    placement=params.placement, runs=params.runs, warmup=params.warmup, threads=params.threads,
                    profile=params.profile, progress=progress)
    if result.cells and len(result.failed) == len(result.cells):
        reasons = list(dict.fromkeys(c.reason for c in result.failed))
        raise QlabError(f"every cell of board run {result.run_id} failed: " + "; ".join(reasons))
    per_variant: dict[int | None, dict[str, Any]] = {}
    for c in result.cells:
        entry = per_variant.setdefault(c.variant_id, {"variant_id": c.variant_id, "timings": {}, "failed": {}})
        key = c.target if len(result.boards) == 1 else f"{c.target}@{c.board or '-'}"
        if c.p50_ms is not None:
            entry["timings"][key] = c.p50_ms
        else:
            entry["failed"][key] = c.reason
    return {"run_id": result.run_id, "pool": result.pool, "placement": str(result.placement),
            "boards": list(result.boards), "cells": len(result.cells), "failed": len(result.failed),
            "wall_s": result.wall_s, "results": list(per_variant.values()),
            # failed cells, and timed cells that lost something asked for (a per-op profile), each with why
            "reasons": [{"variant_id": c.variant_id, "target": c.target, "board": c.board, "reason": c.reason}
                        for c in result.cells if c.reason]}


def board_accuracy_task(store: Store, params: BoardAccuracyParams, progress: Progress) -> dict[str, Any]:
    """Each (variant, target) cell on its own; the board gets the variant's own test data."""

    if not params.variant_ids:
        raise QlabError("choose at least one variant")
    items = []
    for vid in params.variant_ids:
        row, data = variant_model(store, vid)
        dataset_id = _dataset_of(row)
        shape = store.model(int(row["model_id"])).get("input_shape")
        model_shape = tuple(json.loads(shape)) if isinstance(shape, str) and shape else None
        dataset = load_stored_dataset(store.dataset(dataset_id), None, model_shape)
        items.append(AccuracyItem(vid, f"{row['model']} / {row['variant']}", data, dataset, dataset_id))
    targets = list(params.targets) if params.targets else [params.target]
    cells = accuracy_run(store, params.board, items, targets, threads=params.threads, progress=progress)
    if all(c.status == "failed" for c in cells):
        raise QlabError("every cell failed: " + "; ".join(dict.fromkeys(c.reason for c in cells)))
    return {"board": params.board,
            "results": [{"variant_id": c.variant_id, "target": c.target, "accuracy": c.accuracy,
                         "status": str(c.status), "reason": c.reason} for c in cells]}


def _dataset_of(row: dict[str, Any]) -> int:
    """The dataset of a variant row.

    Raises:
        QlabError: when it has none (an imported .tflite stored without data).
    """
    value = row.get("dataset_id")
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise QlabError(f"variant #{row['variant_id']} {row['variant']} has no dataset: import the .tflite "
                        "again on the Models & data page with a dataset (and its input preprocessing) "
                        "chosen") from None



# Board runs stay in the owner process: they are HTTP calls to the boards' agents (the agent runs
# the model), and the board farm records each cell in the store as it lands, so a board that goes
# away mid-run keeps the cells before it. They get the real store.
OWNER_TASKS: dict[JobKind, Callable[[Store, Any, Progress], dict[str, Any]]] = {
    JobKind.BOARD_BENCH: board_bench_task,
    JobKind.BOARD_ACCURACY: board_accuracy_task,
    JobKind.BOARD_MATRIX: board_matrix_task,
}
