"""A matrix of benchmark cells fanned out across boards: each agent's queue respected, lost boards survived.

Pure over HTTP: no store. `qcore.boards.runs.matrix` resolves a pool from the store, calls
`run_cells`, and writes each finished cell from the calling thread (the store has one writer).

Per board, at most `slots` jobs are in flight (submitted, not yet finished): never more than the
agent's queue limit plus the one it runs. A 429 (another client filled the queue) waits and
retries; it is never a failure. A board that stops answering fails only its cells, with the
reason; with placement "any" those cells go back to the shared queue for the surviving boards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from board_agent import protocol
from qcore.boards.client import (
    DEFAULT_JOB_TIMEOUT_S,
    BoardBusyError,
    BoardClient,
    BoardUnreachableError,
    latency_from_result,
)
from qcore.qtyping import Latency, QlabError

log = logging.getLogger(__name__)

# a job of a small model ends in well under a second; poll often so boards do not idle between cells
FARM_POLL_S = 0.05
# a 429 that names no Retry-After: wait this long before asking again
BUSY_WAIT_S = 0.5
# the longest a slot sleeps on one 429, whatever Retry-After says: a matrix should not stall
BUSY_WAIT_MAX_S = 5.0
# one running job plus one queued keeps an agent busy between cells without hoarding "any" cells
DEFAULT_SLOTS = 2


@dataclass(frozen=True)
class FarmBoard:
    """A board as the farm needs it: where it is, what it can run now, how many jobs it may hold."""

    name: str
    url: str
    token: str | None
    available: dict[str, str]  # target -> reason, for the targets the board can run
    unavailable: dict[str, str]  # target -> reason, for the others
    queue_limit: int  # the agent's `queue` setting (jobs that may wait behind the running one)


@dataclass(frozen=True)
class CellSpec:
    """One cell to run: a model on a target, pinned to a board or (board=None) on any board of the pool."""

    cell: int
    variant_id: int | None
    label: str
    sha256: str
    model: bytes = field(repr=False)
    target: str
    board: str | None


@dataclass(frozen=True)
class CellOutcome:
    """How a cell ended: `latency` when done, else `reason`; `attempts` are boards that went away under it."""

    spec: CellSpec
    board: str
    latency: Latency | None
    reason: str = ""
    attempts: tuple[dict[str, str], ...] = ()


@dataclass
class FarmStats:
    """What the run did to each agent: most jobs in flight at once, 429s received, jobs submitted."""

    max_inflight: dict[str, int] = field(default_factory=dict)
    retries_429: int = 0
    submitted: dict[str, int] = field(default_factory=dict)


class _Farm:
    """Shared state of one run: the queues of cells, the live boards, the outcomes."""

    def __init__(self, boards: Sequence[FarmBoard], cells: Sequence[CellSpec], on_outcome: Callable[[CellOutcome], None],
                 slots: int) -> None:
        self.boards = {b.name: b for b in boards}
        self.cond = threading.Condition()
        self.pinned: dict[str, deque[CellSpec]] = {b.name: deque() for b in boards}
        self.shared: deque[CellSpec] = deque()
        self.attempts: dict[int, list[dict[str, str]]] = {}
        self.alive = set(self.boards)
        self.gone: dict[str, str] = {}
        self.open = len(cells)
        self.on_outcome = on_outcome
        self.inflight: dict[str, int] = {b.name: 0 for b in boards}
        self.stats = FarmStats(max_inflight={b.name: 0 for b in boards}, submitted={b.name: 0 for b in boards})
        self.slots = {b.name: max(1, min(slots, b.queue_limit + 1)) for b in boards}
        for c in cells:
            if c.board is None:
                self.shared.append(c)
            elif c.board not in self.boards:
                self._finish(CellOutcome(c, c.board, None, f"board {c.board} is not part of this run"))
            else:
                self.pinned[c.board].append(c)

    # every method below that touches shared state runs under self.cond
    def _finish(self, outcome: CellOutcome) -> None:
        self.open -= 1
        self.on_outcome(outcome)
        self.cond.notify_all()

    def _fail_stranded(self) -> None:
        """Shared cells that no live board can run fail now, naming why each board cannot."""
        keep: deque[CellSpec] = deque()
        for c in self.shared:
            if any(c.target in self.boards[b].available for b in self.alive):
                keep.append(c)
                continue
            why = "; ".join(f"{name}: {self.gone.get(name) or self.boards[name].unavailable.get(c.target, '?')}"
                            for name in sorted(self.boards))
            self._finish(CellOutcome(c, "", None, f"no board of the pool can run {c.target} now ({why})",
                                     tuple(self.attempts.get(c.cell, []))))
        self.shared = keep

    def take(self, board: str) -> CellSpec | None:
        """The next cell for a slot of `board`, waiting while others may still hand some back; None: done."""
        with self.cond:
            while True:
                if board not in self.alive or self.open <= 0:
                    return None
                queue = self.pinned[board]
                if queue:
                    return queue.popleft()
                for c in self.shared:
                    if c.target in self.boards[board].available:
                        self.shared.remove(c)
                        return c
                self._fail_stranded()
                if self.open <= 0:
                    return None
                self.cond.wait(timeout=0.5)

    def done(self, board: str, outcome: CellOutcome) -> None:
        with self.cond:
            self._finish(outcome)

    def lost(self, board: str, spec: CellSpec, reason: str) -> None:
        """`board` went away while holding `spec`: the board leaves the run, its cells fail or move."""
        with self.cond:
            if board in self.alive:
                log.warning("board %s went away: %s", board, reason)
                self.alive.discard(board)
                self.gone[board] = reason
                for c in list(self.pinned[board]):
                    self._finish(CellOutcome(c, board, None, f"board {board} went away: {reason}"))
                self.pinned[board].clear()
            self.attempts.setdefault(spec.cell, []).append({"board": board, "error": reason})
            if spec.board is None and self.alive:
                self.shared.append(spec)
                self._fail_stranded()
                self.cond.notify_all()
            else:
                self._finish(CellOutcome(spec, board, None, f"board {board} went away: {reason}",
                                         tuple(self.attempts.get(spec.cell, []))))

    def enter(self, board: str) -> None:
        with self.cond:
            self.inflight[board] += 1
            self.stats.submitted[board] += 1
            self.stats.max_inflight[board] = max(self.stats.max_inflight[board], self.inflight[board])

    def leave(self, board: str) -> None:
        with self.cond:
            self.inflight[board] -= 1

    def busy(self) -> None:
        with self.cond:
            self.stats.retries_429 += 1


def _slot(farm: _Farm, board: FarmBoard, *, runs: int, warmup: int, threads: int, profile: bool, timeout: float,
          poll: float) -> None:
    client = BoardClient(board.url, board.token, name=board.name, retries=1)
    try:
        while (spec := farm.take(board.name)) is not None:
            if spec.target not in board.available:
                farm.done(board.name, CellOutcome(spec, board.name, None,
                                                  f"target {spec.target} is unavailable on {board.name}: "
                                                  f"{board.unavailable.get(spec.target, 'not reported')}"))
                continue
            try:
                while True:
                    try:
                        job_id = client.submit_benchmark(spec.model, target=spec.target, runs=runs, warmup=warmup,
                                                         threads=threads, profile=profile, label=spec.label)
                        break
                    except BoardBusyError as exc:
                        # another client filled the agent's queue: wait, never count it as a failure
                        farm.busy()
                        time.sleep(min(BUSY_WAIT_MAX_S, max(poll, exc.retry_after or BUSY_WAIT_S)))
                farm.enter(board.name)
                try:
                    result = client.wait(job_id, timeout=timeout, poll=poll)
                finally:
                    farm.leave(board.name)
                lat = latency_from_result(result, board=board.name, job_id=job_id)
            except BoardUnreachableError as exc:
                farm.lost(board.name, spec, str(exc))
                return
            except QlabError as exc:
                if _agent_went_away(str(exc)):
                    farm.lost(board.name, spec, str(exc))
                    return
                farm.done(board.name, CellOutcome(spec, board.name, None, str(exc),
                                                  tuple(farm.attempts.get(spec.cell, []))))
                continue
            farm.done(board.name, CellOutcome(spec, board.name, lat, "", tuple(farm.attempts.get(spec.cell, []))))
    finally:
        client.close()


def _agent_went_away(reason: str) -> bool:
    """A job the agent failed because it stopped or restarted: the board left, not the model's fault."""
    return "agent stopped while the job ran" in reason or protocol.RESTARTED_REASON in reason


def run_cells(
    boards: Sequence[FarmBoard],
    cells: Sequence[CellSpec],
    *,
    on_outcome: Callable[[CellOutcome], None],
    runs: int = protocol.RUNS.default,
    warmup: int = protocol.WARMUP.default,
    threads: int = protocol.THREADS.default,
    profile: bool = False,
    slots: int = DEFAULT_SLOTS,
    timeout: float = DEFAULT_JOB_TIMEOUT_S,
    poll: float = FARM_POLL_S,
) -> FarmStats:
    """Runs every cell on its board (or any board of `boards`) until each has an outcome.

    Args:
        boards: the boards of the run with what their health said at the start.
        cells: pinned (spec.board set) or shared (None) cells.
        on_outcome: called once per cell, from a worker thread, under the farm's lock; keep it quick
            (hand the outcome to a queue).
        slots: jobs in flight per board, capped at the agent's queue limit + 1.

    Returns:
        What the run did to each agent (for the "never overfilled" check and the bench).
    """
    farm = _Farm(boards, cells, on_outcome, slots)
    workers = [
        threading.Thread(target=_slot, name=f"farm-{b.name}-{i}", daemon=True, args=(farm, b),
                         kwargs={"runs": runs, "warmup": warmup, "threads": threads, "profile": profile,
                                 "timeout": timeout, "poll": poll})
        for b in boards for i in range(farm.slots[b.name])
    ]
    with farm.cond:
        farm._fail_stranded()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with farm.cond:
        # every board went away before the last shared cells found one
        while farm.shared:
            c = farm.shared.popleft()
            farm._finish(CellOutcome(c, "", None, "every board of the pool went away: "
                                     + "; ".join(f"{k}: {v}" for k, v in farm.gone.items()),
                                     tuple(farm.attempts.get(c.cell, []))))
    return farm.stats


def farm_board(name: str, url: str, token: str | None, health: dict[str, Any]) -> FarmBoard:
    """A FarmBoard from an agent's health answer."""
    targets = health.get("targets", {}) if isinstance(health, dict) else {}
    available = {t: str(i.get("reason", "")) for t, i in targets.items() if i.get("available")}
    unavailable = {t: str(i.get("reason") or "not reported") for t, i in targets.items() if not i.get("available")}
    for t in protocol.TARGETS:
        if t not in available and t not in unavailable:
            unavailable[t] = "not reported by the agent"
    limit = int((health.get("limits") or {}).get("queue", 1)) if isinstance(health, dict) else 1
    return FarmBoard(name, url, token, available, unavailable, max(1, limit))
