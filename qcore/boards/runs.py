"""Runs over registered boards, stored beside host results: health (with history and labels), benchmarks, accuracy.

The HTTP lives in `qcore.boards.client`; fanning a matrix out across a pool in `qcore.boards.farm`.
Every (variant, target) cell succeeds or fails on its own, and a failed cell keeps its reason in
`board_cells`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from board_agent import protocol
from qcore.boards import farm as board_farm
from qcore.boards.client import (
    DEFAULT_JOB_TIMEOUT_S,
    TARGET_ALL,
    BoardClient,
    BoardUnreachableError,
    latency_from_result,
    resolve_targets,
)
from qcore.inputs.data import dataset_sha256
from qcore.qtyping import (
    Board,
    CellStatus,
    Dataset,
    Evaluation,
    Latency,
    MatrixCell,
    MatrixResult,
    Placement,
    Progress,
    QlabError,
    no_progress,
    progress_slice,
)
from qcore.store import Store, sha256_bytes
from qcore.tflite import litert_io, metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoardHealth:
    """A registered board and what its agent says now (or why it did not answer)."""

    board: Board
    reachable: bool
    health: dict[str, Any] | None
    error: str = ""

    def available_targets(self) -> list[str]:
        """Targets the agent reports as available, in protocol order."""
        targets = (self.health or {}).get("targets", {})
        return [t for t in protocol.TARGETS if targets.get(t, {}).get("available")]

    def unavailable(self) -> dict[str, str]:
        """{target: reason} of the targets this board cannot run now (all of them when unreachable)."""
        if not self.reachable:
            return {t: f"board {self.board.name} is unreachable: {self.error}" for t in protocol.TARGETS}
        targets = (self.health or {}).get("targets", {})
        return {t: str(targets.get(t, {}).get("reason") or "not reported by the agent")
                for t in protocol.TARGETS if not targets.get(t, {}).get("available")}


def client_for(store: Store, board: str) -> BoardClient:
    """A client for a registered board (QlabError when the name is unknown)."""
    url, token = store.board_token(board)
    return BoardClient(url, token, name=board)


def health_labels(health: Mapping[str, Any]) -> dict[str, str]:
    """The labels a board's health implies: soc (e.g. imx8mp), bsp (its OS release), runtime (name-version)."""
    system: dict[str, Any] = health.get("system") or {} if isinstance(health.get("system"), dict) else {}
    rt: dict[str, Any] = health.get("runtime") or {} if isinstance(health.get("runtime"), dict) else {}
    out = {"soc": str(system.get("soc") or ""), "bsp": str(system.get("os_version") or ""),
           "runtime": f"{rt.get('name')}-{rt.get('version')}" if rt.get("name") else ""}
    return {k: v for k, v in out.items() if v}


def check_board(store: Store, board: Board, *, connect_timeout: float = 2.0) -> BoardHealth:
    """One health check of a registered board: logged in its history, its derived labels refreshed."""
    url, token = store.board_token(board.name)
    client = BoardClient(url, token, name=board.name, connect_timeout=connect_timeout, read_timeout=5.0, retries=0)
    try:
        result = BoardHealth(board, True, client.health())
    except QlabError as exc:
        result = BoardHealth(board, False, None, str(exc))
    finally:
        client.close()
    store.log_health(board.name, reachable=result.reachable, health=result.health, error=result.error)
    if result.health is not None:
        store.sync_health_labels(board.name, health_labels(result.health))
    return result


def board_health(store: Store, *, connect_timeout: float = 2.0, boards: Sequence[str] | None = None) -> list[BoardHealth]:
    """Live health of every registered board (or of `boards`); an unreachable one is reported, not raised."""
    wanted = None if boards is None else set(boards)
    return [check_board(store, b, connect_timeout=connect_timeout) for b in store.boards()
            if wanted is None or b.name in wanted]


def bench_on_board(
    store: Store,
    board: str,
    model_bytes: bytes,
    targets: str | Sequence[str] = protocol.CPU,
    *,
    runs: int = protocol.RUNS.default,
    warmup: int = protocol.WARMUP.default,
    threads: int = protocol.THREADS.default,
    profile: bool = False,
    variant_id: int | None = None,
    progress: Progress = no_progress,
    failed: dict[str, str] | None = None,
    skipped: dict[str, str] | None = None,
    timeout: float = DEFAULT_JOB_TIMEOUT_S,
) -> list[Latency]:
    """Times a .tflite on a registered board, one target after the other, and stores each timing as it lands.

    Rows go into `benchmarks` with board=<name> and the target, linked to `variant_id` (or the
    variant with the same sha256, when there is one). Each target is a cell of a board run: a
    target the board reports unavailable, a job that fails, or a board that goes away fails only
    that cell, with its reason (in `failed` and in `board_cells`); the other targets still run.

    Args:
        targets: "all", one target, or a list; "all" skips unavailable targets (reasons in `skipped`),
            a named unavailable target is a failed cell.
        failed: receives {target: reason} of the failed cells.
        skipped: receives {target: reason} for targets that "all" left out.

    Returns:
        One `Latency` per target that ran, in order.

    Raises:
        QlabError: unknown board or target, an agent unreachable before anything ran (naming the
            URL), or every target failed (with the reasons).
    """

    failed = {} if failed is None else failed
    registered = {b.name: b for b in store.boards()}
    if board not in registered:
        store.board_token(board)  # raises, listing the known boards
    client = client_for(store, board)
    sha = sha256_bytes(model_bytes)
    vid = variant_id if variant_id is not None else store.variant_id_for_sha(sha)
    results: list[Latency] = []
    try:
        progress(0.0, f"asking {board} for its targets")
        state = check_board(store, registered[board])
        if not state.reachable:
            raise BoardUnreachableError(state.error)
        health = state.health or {}
        chosen, unavailable = _split_targets(health, targets)
        if skipped is not None and targets == TARGET_ALL:
            skipped.update(unavailable)
        if not chosen:
            raise QlabError("; ".join(unavailable.values()))
        run_id = store.create_board_run("benchmark", str(Placement.BOARD), board, {
            "targets": targets if isinstance(targets, str) else list(targets), "runs": runs, "warmup": warmup,
            "threads": threads, "profile": profile, "variant_ids": [vid] if vid is not None else []})
        cell = 0
        if targets != TARGET_ALL:
            for target, reason in unavailable.items():
                failed[target] = reason
                store.save_cell(run_id, MatrixCell(cell, vid, sha, target, board, CellStatus.FAILED, reason))
                cell += 1
        gone = ""
        for i, target in enumerate(chosen):
            progress(i / len(chosen), f"{board}: timing on {target}")
            try:
                if gone:
                    raise BoardUnreachableError(gone)
                job_id = client.submit_benchmark(model_bytes, target=target, runs=runs, warmup=warmup,
                                                 threads=threads, profile=profile)
                result = client.wait(job_id, timeout=timeout)
                lat = latency_from_result(result, board=board, job_id=job_id)
            except QlabError as exc:
                if isinstance(exc, BoardUnreachableError):
                    gone = str(exc)
                failed[target] = str(exc)
                log.warning("%s", exc)
                store.save_cell(run_id, MatrixCell(cell, vid, sha, target, board, CellStatus.FAILED, str(exc)))
                cell += 1
                continue
            bench_id = store.add_benchmark(lat, sha256=sha, board=board, variant_id=vid)
            store.save_cell(run_id, MatrixCell(cell, vid, sha, target, board, CellStatus.DONE,
                                               profile_missing(lat.extra, profile), benchmark_id=bench_id,
                                               p50_ms=lat.p50_ms))
            cell += 1
            results.append(lat)
        if not results:
            raise QlabError(f"board {board}: every target failed: " + "; ".join(failed.values()))
    finally:
        client.close()
    progress(1.0, f"{board}: {len(results)} timing(s) stored")
    return results


def _split_targets(health: Mapping[str, Any], spec: str | Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(targets to run, {target: reason} of the unavailable ones) for "all" or named targets."""
    if spec == TARGET_ALL:
        info = health.get("targets", {})
        chosen = [t for t in protocol.TARGETS if info.get(t, {}).get("available")]
        return chosen, {t: str(info.get(t, {}).get("reason") or "not reported by the agent")
                        for t in protocol.TARGETS if t not in chosen}
    names = [spec] if isinstance(spec, str) else list(spec)
    chosen, unavailable = [], {}
    for t in names:
        try:
            resolve_targets(health, [t])
            chosen.append(t)
        except QlabError as exc:
            if t not in protocol.TARGETS:
                raise
            unavailable[t] = str(exc)
    return chosen, unavailable


def accuracy_on_board(
    store: Store,
    board: str,
    model_bytes: bytes,
    dataset: Dataset,
    target: str = protocol.CPU,
    *,
    variant_id: int | None = None,
    dataset_id: int | None = None,
    threads: int = protocol.THREADS.default,
    progress: Progress = no_progress,
    timeout: float = DEFAULT_JOB_TIMEOUT_S,
) -> tuple[Evaluation, float]:
    """Runs the test split on the board, scores it, and compares it with the host's outputs.

    The board gets the preprocessed float inputs (`dataset.test_inputs()`); the agent quantizes
    them with the model's input scale and zero point and returns dequantized outputs. The host
    runs the same model with LiteRT on this machine. The evaluation is stored with
    device="board:<name>/<target>" and the metrics host_agreement, output_max_abs_diff and
    output_mean_abs_diff when the model is a known variant (by `variant_id` or sha256); the dataset
    is registered (idempotent) unless `dataset_id` is given.

    Returns:
        (the board's evaluation, agreement of its argmax with the host's, in [0, 1]).

    Raises:
        QlabError: unknown board, unavailable target, unreachable agent, a failed job, or data that
            does not fit the model.
    """

    x, y = dataset.test_inputs(), np.asarray(dataset.y_test)
    if len(x) == 0:
        raise QlabError(f"data {dataset.name!r} has no test samples to evaluate on")
    progress(0.05, f"running {len(x)} samples on this host")
    host_out, _ = litert_io.run_model(model_bytes, x)
    client = client_for(store, board)
    try:
        progress(0.3, f"asking {board} for its targets")
        resolve_targets(client.health(), target)
        progress(0.4, f"{board}: running {len(x)} samples on {target}")
        outputs, result = client.infer(model_bytes, x, target=target, threads=threads, timeout=timeout)
    finally:
        client.close()
    if not outputs or len(outputs[0]) != len(x):
        got = len(outputs[0]) if outputs else 0
        raise QlabError(f"board {board} returned {got} outputs for {len(x)} samples")
    board_out = outputs[0].astype(np.float32)
    pred = metrics.predictions(board_out)
    n_classes = max(dataset.num_classes, board_out.reshape(len(board_out), -1).shape[1])
    host_agreement = metrics.agreement(board_out, host_out)
    diff = np.abs(board_out.reshape(len(x), -1) - host_out.reshape(len(x), -1).astype(np.float32))
    max_diff, mean_diff = float(np.nanmax(diff)) if diff.size else 0.0, float(np.nanmean(diff)) if diff.size else 0.0
    sha = sha256_bytes(model_bytes)
    vid = variant_id if variant_id is not None else store.variant_id_for_sha(sha)
    io_types = result.get("io", {})
    runtime = result.get("runtime") or {}
    note = (f"{board}/{target} on {runtime.get('name', '?')} {runtime.get('version', '')}".rstrip()
            + f"; max |board - host| output {max_diff:.4g}")
    ev = Evaluation(
        accuracy=metrics.accuracy(board_out, y),
        top5=metrics.top_k(board_out, y, 5),
        agreement=None,
        confusion=tuple(tuple(int(v) for v in row) for row in metrics.confusion(pred, y, n_classes)),
        n_samples=len(x),
        batched=False,
        note=note,
        size_bytes=len(model_bytes),
        input_dtype=str(io_types.get("input_dtype", "")),
        output_dtype=str(io_types.get("output_dtype", "")),
    )
    if vid is not None:
        if dataset_id is None:
            dataset_id = store.add_dataset(
                name=dataset.name, source=dataset.source or dataset.name, sha256=dataset_sha256(dataset),
                input_scale=dataset.input_scale, input_offset=dataset.input_offset,
                n_train=len(dataset.x_train), n_test=len(dataset.x_test), num_classes=dataset.num_classes,
            )
        store.add_evaluation(
            vid, dataset_id, ev, device=f"board:{board}/{target}",
            extra_metrics={"host_agreement": host_agreement, "output_max_abs_diff": max_diff,
                           "output_mean_abs_diff": mean_diff},
        )
    progress(1.0, f"{board}/{target}: accuracy {ev.accuracy:.4f}, agreement with host {host_agreement:.4f}")
    return ev, host_agreement




@dataclass(frozen=True)
class AccuracyItem:
    """One variant to evaluate on a board: its model bytes and the data it was made for."""

    variant_id: int | None
    label: str
    model: bytes
    dataset: Dataset
    dataset_id: int | None = None


def accuracy_run(
    store: Store,
    board: str,
    items: Sequence[AccuracyItem],
    targets: Sequence[str],
    *,
    threads: int = protocol.THREADS.default,
    progress: Progress = no_progress,
    timeout: float = DEFAULT_JOB_TIMEOUT_S,
) -> list[MatrixCell]:
    """On-board accuracy of variants x targets; each cell succeeds or fails on its own and is stored.

    Returns:
        One cell per (variant, target), in order; a failed one carries its reason.

    Raises:
        QlabError: unknown board, or nothing to run.
    """

    if not items or not targets:
        raise QlabError("choose at least one variant and one target")
    store.board_token(board)
    if TARGET_ALL in targets:  # what the board can run now, as `qlab board accuracy` does by default
        client = client_for(store, board)
        try:
            health = client.health()
        finally:
            client.close()
        targets = _expand_all(targets, [set(resolve_targets(health, TARGET_ALL)[0])])
    run_id = store.create_board_run("accuracy", str(Placement.BOARD), board, {
        "targets": list(targets), "threads": threads, "variant_ids": [i.variant_id for i in items]})
    cells: list[MatrixCell] = []
    total = len(items) * len(targets)
    for n, (item, target) in enumerate((i, t) for i in items for t in targets):
        sha = sha256_bytes(item.model)
        step = progress_slice(progress, n / total, (n + 1) / total)
        try:
            ev, agreement = accuracy_on_board(store, board, item.model, item.dataset, target,
                                              variant_id=item.variant_id, dataset_id=item.dataset_id,
                                              threads=threads, progress=step, timeout=timeout)
            eval_id = store.latest_evaluation_id(item.variant_id, f"board:{board}/{target}") \
                if item.variant_id is not None else None
            cell = MatrixCell(n, item.variant_id, sha, target, board, CellStatus.DONE, evaluation_id=eval_id,
                              accuracy=ev.accuracy)
        except QlabError as exc:
            log.warning("%s on %s/%s: %s", item.label, board, target, exc)
            cell = MatrixCell(n, item.variant_id, sha, target, board, CellStatus.FAILED, str(exc))
        store.save_cell(run_id, cell)
        cells.append(cell)
    return cells


# ---------------------------------------------------------------------- a matrix over a pool
def variant_model(store: Store, variant_id: int) -> tuple[dict[str, Any], bytes]:
    """A stored variant's row and its .tflite bytes.

    Raises:
        QlabError: unknown variant, a failed one, or its file missing from the data directory.
    """

    row = store.variant(int(variant_id))
    if row["status"] != "ok" or not row.get("sha256"):
        raise QlabError(f"variant #{variant_id} ({row['variant']}) has no .tflite: {row.get('error') or 'failed'}")
    path = Path(str(row["path"])) if row.get("path") else store.blob_path(str(row["sha256"]))
    if not path.exists():
        raise QlabError(f"variant #{variant_id}: its file {path} is missing from the data directory")
    return row, path.read_bytes()


def pool_boards(store: Store, pool: str) -> list[str]:
    """Boards of a pool query, refreshing every board's health-derived labels first.

    Raises:
        QlabError: when no board matches (listing each board's labels).
    """
    board_health(store)
    names = store.boards_matching(pool)
    if not names:
        labels = store.board_labels()
        have = {b.name: sorted(f"{r.key}={r.value}" for r in labels.itertuples(index=False) if r.board == b.name)
                for b in store.boards()}
        listing = "; ".join(f"{k}: {', '.join(v) or 'no labels'}" for k, v in have.items()) or "no boards registered"
        raise QlabError(f"no board matches pool {pool!r} ({listing}); label one with `qlab board label NAME soc=imx8mp`")
    return names


def matrix(
    store: Store,
    variant_ids: Sequence[int],
    targets: Sequence[str],
    *,
    pool: str,
    placement: Placement | str = Placement.EACH,
    runs: int = protocol.RUNS.default,
    warmup: int = protocol.WARMUP.default,
    threads: int = protocol.THREADS.default,
    profile: bool = False,
    slots: int | None = None,
    progress: Progress = no_progress,
    timeout: float = DEFAULT_JOB_TIMEOUT_S,
    poll: float | None = None,
) -> MatrixResult:
    """Benchmarks variants x targets on a board, on every board of a pool, or on any free board of a pool.

    Each cell succeeds or fails on its own and is stored as it lands (benchmarks + board_cells),
    from this thread. Unreachable boards at the start fail their pinned cells ("each") or are left
    out ("any"); a board lost mid-run fails its cells, and with "any" they move to the survivors.

    Args:
        pool: the board's name for placement "board", else a label query (see `Store.boards_matching`).
        placement: "board", "each" or "any".
        slots: jobs in flight per board (default `board_farm.DEFAULT_SLOTS`, capped by each agent's queue).

    Returns:
        The run with every cell done or failed (with its reason).

    Raises:
        QlabError: unknown placement, board, target or variant; an empty pool; nothing to run.
    """

    try:
        place = Placement(str(placement))
    except ValueError:
        raise QlabError(f"unknown placement {placement!r}; known: {', '.join(p.value for p in Placement)}") from None
    if not variant_ids or not targets:
        raise QlabError("choose at least one variant and one target")
    unknown = [t for t in targets if t not in (*protocol.TARGETS, TARGET_ALL)]
    if unknown:
        raise QlabError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(protocol.TARGETS)}")
    models = [(int(v), *variant_model(store, int(v))) for v in variant_ids]
    if place == Placement.BOARD:
        store.board_token(pool)
        names = [pool]
    else:
        names = pool_boards(store, pool)
    states = board_health(store, boards=names)
    farm_boards: list[board_farm.FarmBoard] = []
    down: dict[str, str] = {}
    for st in states:
        if st.reachable and st.health is not None:
            url, token = store.board_token(st.board.name)
            farm_boards.append(board_farm.farm_board(st.board.name, url, token, st.health))
        else:
            down[st.board.name] = f"board {st.board.name} was unreachable at the start: {st.error}"
    targets = _expand_all(targets, [set(b.available) for b in farm_boards])
    run_id = store.create_board_run("benchmark", place.value, pool, {
        "variant_ids": [m[0] for m in models], "targets": list(targets), "runs": runs, "warmup": warmup,
        "threads": threads, "profile": profile, "boards": names})
    specs: list[board_farm.CellSpec] = []
    for vid, row, data in models:
        for t in targets:
            label = f"{row['model']} / {row['variant']}"
            boards_for_cell: list[str | None] = list(names) if place != Placement.ANY else [None]
            for b in boards_for_cell:
                specs.append(board_farm.CellSpec(len(specs), vid, label, str(row["sha256"]), data, t, b))
    cells: list[MatrixCell] = []
    started = time.perf_counter()
    total = len(specs)

    def store_cell(cell: MatrixCell) -> None:
        store.save_cell(run_id, cell)
        cells.append(cell)
        progress(len(cells) / total, f"{len(cells)}/{total} cells: {cell.board or '-'} {cell.target} {cell.status}")

    runnable = []
    for spec in specs:
        if spec.board is not None and spec.board in down:
            store_cell(MatrixCell(spec.cell, spec.variant_id, spec.sha256, spec.target, spec.board,
                                  CellStatus.FAILED, down[spec.board]))
        elif spec.board is None and not farm_boards:
            store_cell(MatrixCell(spec.cell, spec.variant_id, spec.sha256, spec.target, "", CellStatus.FAILED,
                                  f"no board of pool {pool!r} answered: " + "; ".join(down.values())))
        else:
            runnable.append(spec)
    outcomes: queue.Queue[board_farm.CellOutcome | None] = queue.Queue()
    stats_box: list[board_farm.FarmStats] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            stats_box.append(board_farm.run_cells(
                farm_boards, runnable, on_outcome=outcomes.put, runs=runs, warmup=warmup, threads=threads,
                profile=profile, slots=slots or board_farm.DEFAULT_SLOTS, timeout=timeout,
                poll=poll or board_farm.FARM_POLL_S))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            errors.append(exc)
        finally:
            outcomes.put(None)

    worker = threading.Thread(target=work, name="board-matrix", daemon=True)
    worker.start()
    while (out := outcomes.get()) is not None:
        spec = out.spec
        if out.latency is not None:
            bench_id = store.add_benchmark(out.latency, sha256=spec.sha256, board=out.board,
                                           variant_id=spec.variant_id)
            store_cell(MatrixCell(spec.cell, spec.variant_id, spec.sha256, spec.target, out.board, CellStatus.DONE,
                                  profile_missing(out.latency.extra, profile), attempts=out.attempts,
                                  benchmark_id=bench_id, p50_ms=out.latency.p50_ms))
        else:
            store_cell(MatrixCell(spec.cell, spec.variant_id, spec.sha256, spec.target, out.board, CellStatus.FAILED,
                                  out.reason, attempts=out.attempts))
    worker.join()
    if errors:
        raise errors[0]
    stats = stats_box[0] if stats_box else board_farm.FarmStats()
    for name in down:
        store.log_health(name, reachable=False, health=None, error=down[name])
    cells.sort(key=lambda c: c.cell)
    return MatrixResult(run_id=run_id, kind="benchmark", placement=place, pool=pool, boards=tuple(names),
                        cells=tuple(cells), wall_s=time.perf_counter() - started, retries_429=stats.retries_429,
                        max_inflight=dict(stats.max_inflight))


def profile_missing(extra: Mapping[str, Any], requested: bool) -> str:
    """Why a requested per-op profile is not there (a timed cell's note), or "" when it is or was not asked for.

    The agent says why (`{"available": false, "reason": "benchmark_model not found (...)"}`); a cell
    that kept its timing but lost its profile says so instead of dropping the request in silence.
    """
    if not requested:
        return ""
    prof = extra.get("profile")
    if isinstance(prof, Mapping) and prof.get("available"):
        return ""
    why = prof.get("reason") if isinstance(prof, Mapping) else None
    return f"timed, but no per-op profile: {why or 'the agent returned none'}"


def _expand_all(targets: Sequence[str], available: Sequence[set[str]]) -> list[str]:
    """Targets with "all" replaced by what some reachable board can run now (`qlab board bench`'s default).

    Args:
        available: the available targets of each reachable board; none reachable makes "all" every
            target, so each cell fails with its board's reason instead of vanishing.
    """
    if TARGET_ALL not in targets:
        return list(targets)
    can = set().union(*available) if available else set(protocol.TARGETS)
    return [t for t in protocol.TARGETS if t in can or t in targets]


def matrix_spread(store: Store, run_id: int) -> pd.DataFrame:
    """Per (variant, target) of a run: p50 per board, and min / median / max across the pool's boards.

    Returns:
        Rows (variant_id, target, board, p50_ms, pool_min_ms, pool_median_ms, pool_max_ms, boards,
        failed); `failed` counts that variant/target's failed cells.
    """
    return store.query(
        "WITH c AS (SELECT c.*, b.p50_ms FROM board_cells c LEFT JOIN v_bench_wide b ON b.benchmark_id = c.benchmark_id"
        "           WHERE c.run_id = ?),"
        " per_board AS (SELECT variant_id, target, board, median(p50_ms) AS p50_ms FROM c WHERE status = 'done'"
        "           GROUP BY ALL),"
        " pool AS (SELECT variant_id, target, min(p50_ms) AS pool_min_ms, median(p50_ms) AS pool_median_ms,"
        "           max(p50_ms) AS pool_max_ms, count(*) AS boards FROM per_board GROUP BY ALL),"
        " fails AS (SELECT variant_id, target, count(*) AS failed FROM c WHERE status = 'failed' GROUP BY ALL)"
        " SELECT p.variant_id, p.target, p.board, p.p50_ms, q.pool_min_ms, q.pool_median_ms, q.pool_max_ms, q.boards,"
        "        coalesce(f.failed, 0) AS failed"
        " FROM per_board p JOIN pool q USING (variant_id, target) LEFT JOIN fails f USING (variant_id, target)"
        " ORDER BY p.variant_id, p.target, p.board", [run_id])
