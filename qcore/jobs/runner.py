"""The owner's side of jobs: queue them on Dask workers, follow them, and write their results.

The owner process (the dashboard's server) is the only one that opens the DuckDB file. For each
job it reads the inputs' bytes, hands a `JobSpec` to Dask, mirrors the worker's progress events
into the `jobs` table, and publishes the value it returns in one transaction (`qcore.lab.publish`). A job whose worker
dies, that runs past its timeout, or that the user cancels ends in words, and its worker is
restarted; every other job goes on.

The runner, not Dask, decides where a job runs: it hands a job to a worker only when that worker
is idle (pinned to it), so no job ever waits in the queue of a worker that may be killed for
another one. Quick kinds (`QUICK_KINDS`) go first and may use quick-lane workers; every waiting
job says what it waits for and roughly how long.

The cluster itself (embedded or a team's, and its QLAB_* settings) is `qcore.jobs.cluster`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import pickle
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.jobs.boards import OWNER_TASKS
from qcore.jobs.cluster import START_TIMEOUT_S, Cluster, ClusterSettings
from qcore.jobs.contract import (
    QUICK_RESOURCE,
    JobKind,
    JobParams,
    JobSpec,
    check_params,
    params_json,
)
from qcore.jobs.inputs import gather_inputs
from qcore.jobs.tasks import KEEPS
from qcore.jobs.worker import (
    EXIT_TOPIC,
    MEMORY_TOPIC,
    PARTIAL_TOPIC,
    PROGRESS_MIN_INTERVAL_S,
    PROGRESS_TOPIC,
    execute,
)
from qcore.lab.documents import document
from qcore.lab.publish import publish
from qcore.qtyping import JobStatus, QlabError
from qcore.serialize import to_json
from qcore.store import Store

log = logging.getLogger(__name__)

# the nanny's exit report can reach the owner a moment after Dask says the worker died
DEATH_REPORT_WAIT_S = 3.0
# a killed worker leaves the scheduler's list within moments; a cancel waits this long for it at most
WORKER_GONE_S = 10.0
# how often a job's watcher looks at its future, its deadline and a cancel request
WATCH_INTERVAL_S = 0.2
# how often the dispatcher looks for idle workers and refreshes the waiting jobs' words
DISPATCH_INTERVAL_S = 1.0
# a job that never started on a worker that died (or that left before it started) is queued again,
# this many times at most (a job that kills its worker before it says "start" must not loop forever)
MAX_REQUEUES = 2
# a kind never seen to finish is guessed to take this long, for the waiting words
UNKNOWN_KIND_S = 120.0
# pieces a worker sent just before it was killed are still on their way through the scheduler
PARTIAL_SETTLE_S = 0.5
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


# ---------------------------------------------------------------- the runner
@dataclass
class _Watch:
    job_id: int
    spec: JobSpec
    deadline_s: float
    future: Any = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    # set when the future ends or a cancel comes: the watcher sleeps on it instead of polling
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)
    started: float = 0.0
    # the worker the runner pinned it to (set at dispatch, before the worker says it started)
    worker: str = ""
    queued: float = dataclasses.field(default_factory=time.monotonic)
    requeue: str = ""  # set by the dispatcher: why this job goes back to the queue
    requeues: int = 0
    fraction: float = 0.0  # its latest progress, and a few words of it ("3 of 9 recipes")
    detail: str = ""
    # finished pieces of its value the worker sent (KEEPS), still pickled: read only when a cancel or a timeout
    # keeps them (most jobs finish, and their result carries the same pieces)
    kept: list[bytes] = dataclasses.field(default_factory=list)


def error_text(exc: BaseException) -> str:
    """The words a user sees for a failed job: the QlabError itself, else its type and first line."""
    if isinstance(exc, QlabError | ValueError):
        return str(exc) or type(exc).__name__
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"internal error ({type(exc).__name__}): {first}" if first else f"internal error ({type(exc).__name__})"


class JobRunner:
    """Queues jobs on Dask workers and mirrors their state into the store (the only writer).

    Args:
        store: the owner process's store.
        data_dir: where files a job made are kept (e.g. the trained demo model).
        cluster: where jobs run.
        on_change: called after a job ends (e.g. to clear cached reads).
    """

    def __init__(self, store: Store, data_dir: str | os.PathLike[str], cluster: Cluster | ClusterSettings, *,
                 on_change: Callable[[], None] | None = None) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.on_change = on_change or (lambda: None)
        self._watches: dict[int, _Watch] = {}
        self._lock = threading.Lock()
        self._events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._deaths: dict[str, dict[str, Any]] = {}
        self._closed = threading.Event()
        self._ended = threading.Condition()
        self._ready = threading.Event()
        self._start_error = ""
        self.settings = cluster.settings if isinstance(cluster, Cluster) else cluster
        self._cluster: Cluster | None = None
        self._kick = threading.Event()  # wakes the dispatcher: a job came, ended or was cancelled
        # workers being killed to stop a job: never idle, and who killed them (for the reason a victim gets)
        self._stopping: set[str] = set()
        self._kills: dict[str, str] = {}
        self._typical: dict[str, float] | None = None  # seconds a kind usually runs, for the waiting words
        self._waiting_said: dict[int, str] = {}
        if isinstance(cluster, Cluster):
            self._connect(cluster)
        else:  # workers import TensorFlow before they take jobs: start them without holding up the server
            threading.Thread(target=self._start, name="qlab-cluster-start", daemon=True).start()
        self._pump = threading.Thread(target=self._pump_events, name="qlab-job-events", daemon=True)
        self._pump.start()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="qlab-job-dispatch", daemon=True)
        self._dispatcher.start()

    @property
    def cluster(self) -> Cluster:
        """The cluster, once started (waits for it).

        Raises:
            QlabError: when it could not start, with the reason.
        """
        if not self._ready.wait(timeout=START_TIMEOUT_S) or self._cluster is None:
            raise QlabError(f"the job workers did not start: {self._start_error or 'still starting'}")
        return self._cluster

    def _start(self) -> None:
        try:
            self._connect(Cluster(self.settings))
        except Exception as exc:  # every job then fails with this reason, in words
            self._start_error = error_text(exc)
            log.error("the job cluster could not start: %s", self._start_error)
            self._ready.set()

    def _connect(self, cluster: Cluster) -> None:
        client = cluster.client
        client.subscribe_topic(PROGRESS_TOPIC, lambda ev: self._events.put((PROGRESS_TOPIC, ev[1])))
        client.subscribe_topic(EXIT_TOPIC, lambda ev: self._on_death(ev[1]))
        client.subscribe_topic(MEMORY_TOPIC, lambda ev: self._on_death(dict(ev[1], memory=True)))
        client.subscribe_topic(PARTIAL_TOPIC, lambda ev: self._on_partial(ev[1]))
        self._cluster = cluster
        self._ready.set()

    # ------------------------------------------------------------ public
    def submit(self, params: JobParams, *, timeout_s: float | None = None,
               extra: dict[str, Any] | None = None) -> int:
        """Checks and queues a job; returns its id at once.

        Args:
            params: the job's params dataclass (`qcore.jobs.contract`); its type names the kind.
                JSON from a client becomes one with `parse_params` first, at the boundary.
            timeout_s: this job's limit; default QLAB_JOB_TIMEOUT.
            extra: owner-side facts a kind needs (an upload's path for add_model).

        Raises:
            QlabError: for anything but a params dataclass, a field of the wrong type, or a missing
                input, before anything is queued.
        """
        k = check_params(params)
        context = contextvars.copy_context()  # the job acts for whoever submitted it (created_by)
        if k in OWNER_TASKS:
            job_id = self.store.create_job(k.value, params_json(params))
            limit = float(timeout_s or self.settings.job_timeout_s)
            owner = _Watch(job_id=job_id, spec=JobSpec(job_id=job_id, kind=k, params=params), deadline_s=limit)
            with self._lock:
                self._watches[job_id] = owner
            threading.Thread(target=context.run, args=(self._run_here, owner), name=f"qlab-job-{job_id}",
                             daemon=True).start()
            return job_id
        files, rows = gather_inputs(self.store, k, params, extra)
        demo = self.data_dir / "demo" / "demo.h5"
        if k == JobKind.DEMO and demo.exists():  # trained before: the worker converts it, no retraining
            files["model"] = (demo.name, demo.read_bytes())
        job_id = self.store.create_job(k.value, params_json(params))
        spec = JobSpec(job_id=job_id, kind=k, params=params, files=files, rows=rows,
                       blob_dir=str(self.store.blob_dir))
        watch = _Watch(job_id=job_id, spec=spec, deadline_s=float(timeout_s or self.settings.job_timeout_s))
        with self._lock:
            self._watches[job_id] = watch
        if not self._ready.is_set():
            self.store.update_job(job_id, message="waiting for the job workers to start", only_active=True)
        threading.Thread(target=context.run, args=(self._follow, watch), name=f"qlab-job-{job_id}",
                         daemon=True).start()
        self._kick.set()
        return job_id

    def _run_here(self, watch: _Watch) -> None:
        """Runs an owner-side job (a board run: HTTP to the agents) on this thread, with the real store.

        Cancel and the timeout take effect at its next progress report.
        """
        job_id, started = watch.job_id, time.monotonic()
        last = [0.0]

        def progress(fraction: float, message: str) -> None:
            if watch.cancel.is_set():
                raise _Stopped(JobStatus.CANCELLED, "cancelled")
            if time.monotonic() - started > watch.deadline_s:
                raise _Stopped(JobStatus.FAILED, f"timed out after {watch.deadline_s:g} s")
            now = time.monotonic()
            if now - last[0] >= PROGRESS_MIN_INTERVAL_S or fraction >= 1.0:
                last[0] = now
                self.store.update_job(job_id, progress=fraction, message=message[:500], only_active=True)

        self.store.update_job(job_id, status=JobStatus.RUNNING, message="started", worker="web process",
                              worker_host=socket.gethostname(), only_active=True)
        try:
            result = OWNER_TASKS[watch.spec.kind](self.store, watch.spec.params, progress)
        except _Stopped as stop:
            self.store.update_job(job_id, status=stop.status, message=stop.reason,
                                  error="" if stop.status == JobStatus.CANCELLED else stop.reason, only_active=True)
        except Exception as exc:  # every failure reaches the jobs table, in words
            if not isinstance(exc, QlabError | ValueError):
                log.exception("job %s failed", job_id)
            self.store.update_job(job_id, status=JobStatus.FAILED, error=error_text(exc), message="failed",
                                  only_active=True)
        else:
            self.store.update_job(job_id, status=JobStatus.DONE, progress=1.0, message="done",
                                  result=json.loads(to_json(result)), only_active=True)
        finally:
            with self._lock:
                self._watches.pop(job_id, None)
            self._notify_ended()
            self.on_change()

    def _await_dispatch(self, watch: _Watch) -> bool:
        """Waits until the dispatcher hands the job to an idle worker; False when it ended before that."""
        while True:
            if watch.cancel.is_set():
                self.store.update_job(watch.job_id, status=JobStatus.CANCELLED, message="cancelled",
                                      only_active=True)
                return False
            if self._ready.is_set() and self._cluster is None:
                self.store.update_job(watch.job_id, status=JobStatus.FAILED, message="failed", only_active=True,
                                      error=f"the job workers did not start: {self._start_error}")
                return False
            if watch.future is not None:
                return True
            watch.wake.wait(WATCH_INTERVAL_S)
            watch.wake.clear()

    # ------------------------------------------------------------ the dispatcher
    def _dispatch_loop(self) -> None:
        while not self._closed.is_set():
            self._kick.wait(DISPATCH_INTERVAL_S)
            self._kick.clear()
            if not self._ready.is_set() or self._cluster is None or self._closed.is_set():
                continue
            try:
                self._dispatch_round(self._cluster)
            except Exception:  # a failed round is retried at the next tick; never stop dispatching
                log.exception("dispatching jobs failed")

    def _dispatch_round(self, cluster: Cluster) -> None:
        """Hands waiting jobs to idle workers (quick kinds first, then by id), one job per worker."""
        with self._lock:
            watches = [w for w in self._watches.values() if w.spec.kind not in OWNER_TASKS]
        pending = sorted((w for w in watches if w.future is None and not w.cancel.is_set()),
                         key=lambda w: (not w.spec.quick, w.job_id))
        placed = [w for w in watches if w.future is not None and not w.started and not w.requeue]
        if not pending and not placed:
            return
        workers = {a: info for a, info in cluster.workers().items()
                   if str(info.get("status", "running")).lower().endswith("running")}
        for w in placed:  # pinned to a worker that left before the job started: queue it again
            if w.worker not in workers and w.worker not in self._stopping:
                w.requeue = "its worker left before the job started"
                w.wake.set()
        with self._lock:
            busy = {w.worker for w in self._watches.values()
                    if w.future is not None and not w.future.done()} | self._stopping
        idle = [a for a in sorted(workers) if a not in busy]
        waiting = []
        for w in pending:
            fits = [a for a in idle if _takes(workers[a], w.spec)]
            if not fits:
                waiting.append(w)
                continue
            # a quick job prefers a quick-lane worker, so the general ones stay free for the rest
            address = sorted(fits, key=lambda a: not _is_quick(workers[a]))[0] if w.spec.quick else fits[0]
            idle.remove(address)
            self._hand_over(cluster, w, address)
        self._say_waiting(waiting, workers, busy)

    def _hand_over(self, cluster: Cluster, watch: _Watch, address: str) -> None:
        spec = watch.spec
        with self._lock:
            watch.worker, watch.requeue = address, ""
            watch.future = cluster.client.submit(
                execute, spec, key=f"qlab-job-{spec.job_id}-{watch.requeues}", pure=False,
                resources=spec.resources or None, retries=0, workers=[address], allow_other_workers=False)
        self._waiting_said.pop(spec.job_id, None)
        if self.store.job(spec.job_id).message.startswith("waiting"):
            self.store.update_job(spec.job_id, message="starting on a worker", only_active=True)
        watch.wake.set()

    def _say_waiting(self, waiting: list[_Watch], workers: dict[str, dict[str, Any]], busy: set[str]) -> None:
        """Writes what each waiting job waits for and about how long (only when the words change)."""
        if not waiting:
            return
        with self._lock:
            running = {w.worker: w for w in self._watches.values() if w.future is not None and not w.future.done()}
        typical = self._typical_seconds()
        queue_ahead: list[_Watch] = []
        for w in waiting:
            able = [a for a in workers if _takes(workers[a], w.spec)]
            if not able and not w.spec.resources:  # starting (or restarting) workers, or none connected yet
                text = ("waiting for the job workers to start" if self.settings.scheduler == ""
                        else f"waiting for a worker to connect to {self.cluster.address}")
            elif not able:
                wanted = ", ".join(f"{r}={n:g}" for r, n in w.spec.resources.items())
                text = (f"waiting for a worker with {wanted}: none is connected (start one with `dask worker "
                        f"{self.cluster.address} --resources {wanted} --preload qcore.jobs.worker "
                        "--preload-nanny qcore.jobs.worker`)")
            else:
                ahead = [running[a] for a in able if a in running]
                ahead += [q for q in queue_ahead if any(_takes(workers[a], q.spec) for a in able)]
                # each able worker is free after its current job's rest; queued jobs ahead take the first free one
                free = sorted(_remaining(running[a], typical) if a in running else
                              (UNKNOWN_KIND_S if a in busy else 0.0) for a in able)
                for q in ahead[len([a for a in able if a in running]):]:
                    free[0] += typical.get(q.spec.kind.value, UNKNOWN_KIND_S)
                    free.sort()
                text = waiting_words([(q.job_id, q.spec.kind.value, _doing(q)) for q in ahead], free[0])
            queue_ahead.append(w)
            if self._waiting_said.get(w.job_id) != text:
                self._waiting_said[w.job_id] = text
                self.store.update_job(w.job_id, message=text, only_active=True)

    def _typical_seconds(self) -> dict[str, float]:
        """Seconds each kind took lately (the median of its last finished jobs here), read once, then kept."""
        if self._typical is None:
            runs: dict[str, list[float]] = {}
            with contextlib.suppress(Exception):
                for job in self.store.jobs(limit=200):
                    took = _seconds_between(job.started_at, job.finished_at)
                    if job.status == JobStatus.DONE and took is not None:
                        runs.setdefault(job.kind, []).append(took)
            self._typical = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
        return self._typical

    def cancel(self, job_id: int) -> bool:
        """Asks a queued or running job to stop; it ends `cancelled` within seconds.

        Returns:
            False when the job is not active (already ended, or not this server's).
        """
        with self._lock:
            watch = self._watches.get(int(job_id))
        if watch is None:
            job = self.store.job(int(job_id))
            if job.status in ACTIVE:  # a job row left by a previous server: nothing runs it any more
                self.store.update_job(job.id, status=JobStatus.CANCELLED, message="cancelled", only_active=True)
                return True
            return False
        watch.cancel.set()
        watch.wake.set()
        self._kick.set()
        return True

    def wait(self, job_id: int, timeout: float | None = None) -> JobStatus:
        """Blocks until a job has ended (for tests and scripts); returns its status.

        Raises:
            TimeoutError: when it is still active after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.store.job(int(job_id)).status
            if status not in ACTIVE:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {status} after {timeout} s")
            with self._ended:  # woken when any job ends; a row ended elsewhere is seen within 0.5 s
                self._ended.wait(timeout=0.5)

    def _notify_ended(self) -> None:
        with self._ended:
            self._ended.notify_all()

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            watches = list(self._watches.values())
        for w in watches:
            w.cancel.set()
        self._kick.set()
        self._ready.wait(timeout=START_TIMEOUT_S)
        if self._cluster is not None:
            self._cluster.close()

    # ------------------------------------------------------------ events from workers
    def _on_death(self, event: dict[str, Any]) -> None:
        worker = str(event.get("worker") or "")
        if worker:
            with self._lock:
                previous = self._deaths.get(worker, {})
                # the memory event comes first; keep it when the plain exit report follows
                self._deaths[worker] = {**event, "memory": True, "rss": previous["rss"]} if previous.get(
                    "memory") and not event.get("memory") else dict(event, time=time.time())

    def _on_partial(self, event: dict[str, Any]) -> None:
        """Keeps a finished piece of a running job's value (from the worker it was handed to)."""
        with self._lock:
            watch = self._watches.get(int(event.get("job", -1)))
            if watch is None or watch.worker != str(event.get("worker", "")):
                return
        if isinstance(event.get("value"), bytes):
            watch.kept.append(event["value"])

    def _pump_events(self) -> None:
        while not self._closed.is_set():
            try:
                batch = [self._events.get(timeout=0.5)[1]]
            except queue.Empty:
                continue
            while True:  # what else is queued goes in the same write
                try:
                    batch.append(self._events.get_nowait()[1])
                except queue.Empty:
                    break
            try:
                self._apply(batch)
            except Exception:  # a progress write must never stop the pump
                log.exception("applying job events failed")

    def _apply(self, events: list[dict[str, Any]]) -> None:
        """Writes a batch of worker events in one transaction: every start, and each job's latest progress
        and live data (a burst of progress from several workers is one write, not one each)."""
        latest: dict[tuple[int, str], dict[str, Any]] = {}
        starts = []
        for event in events:
            if event.get("kind") == "start":
                starts.append(event)
            else:
                latest[(int(event.get("job", -1)), str(event.get("kind")))] = event
        with self.store.transaction():
            for event in starts:
                job_id = int(event.get("job", -1))
                self.store.update_job(job_id, status=JobStatus.RUNNING, message="started",
                                      worker=str(event.get("worker", "")), worker_host=str(event.get("host", "")),
                                      only_active=True)
            for (job_id, kind), event in latest.items():
                if kind == "progress":
                    self.store.update_job(job_id, progress=float(event.get("fraction", 0.0)),
                                          message=str(event.get("message", "")), only_active=True)
                elif kind == "live":
                    self.store.update_job(job_id, live=dict(event.get("data") or {}), only_active=True)
        with self._lock:
            for event in starts:  # after the row says running, so a cancel that reads it sees the worker
                watch = self._watches.get(int(event.get("job", -1)))
                if watch is not None and watch.worker == str(event.get("worker", "")):
                    watch.started = time.monotonic()
            for (job_id, kind), event in latest.items():  # what the waiting words say of the jobs ahead
                watch = self._watches.get(job_id)
                if watch is None:
                    continue
                if kind == "progress":
                    watch.fraction = float(event.get("fraction", 0.0))
                elif kind == "live":
                    watch.detail = _live_detail(dict(event.get("data") or {}))
        self.on_change()

    # ------------------------------------------------------------ following one job
    def _follow(self, watch: _Watch) -> None:
        try:
            while True:
                if not self._await_dispatch(watch):
                    return
                outcome = self._await_future(watch)
                if outcome != "requeue":
                    break
            if outcome == "done":
                self._finish(watch)
        except Exception as exc:
            log.exception("following job %s failed", watch.job_id)
            self.store.update_job(watch.job_id, status=JobStatus.FAILED, error=error_text(exc), message="failed",
                                  only_active=True)
        finally:
            with self._lock:
                self._watches.pop(watch.job_id, None)
            if watch.future is not None:
                with contextlib.suppress(Exception):
                    watch.future.release()
            self._waiting_said.pop(watch.job_id, None)
            if watch.kept and self._cluster is not None:  # the scheduler keeps events: drop these bytes there
                with contextlib.suppress(Exception):
                    self._cluster.client.run_on_scheduler(_forget_partials)
            self._kick.set()
            self._notify_ended()
            self.on_change()

    def _await_future(self, watch: _Watch) -> str:
        """Follows a dispatched job: "done" when its future ended, "stopped" when the owner ended it,
        "requeue" when it goes back to the queue (its worker left before it started)."""
        # woken by the future's end or a cancel; the interval only bounds how late a timeout is seen
        # (distributed.wait needs a default client and, without one, returned at once: a busy loop
        # per job that starved the owner's other threads of the GIL)
        watch.future.add_done_callback(lambda _f: watch.wake.set())
        while True:
            if watch.cancel.is_set():
                self._stop(watch, JobStatus.CANCELLED, "cancelled")
                return "stopped"
            if watch.started and time.monotonic() - watch.started > watch.deadline_s:
                self._stop(watch, JobStatus.FAILED, f"timed out after {watch.deadline_s:g} s")
                return "stopped"
            if watch.requeue:
                return self._requeue(watch, watch.requeue)
            if watch.future.done():
                if self._innocent(watch):
                    return self._requeue(watch, self._kills.get(watch.worker) or "its worker died before it started")
                return "done"
            watch.wake.wait(WATCH_INTERVAL_S)
            watch.wake.clear()

    def _innocent(self, watch: _Watch) -> bool:
        """Whether a job whose worker died was not the cause: the owner killed that worker for another job,
        or the job had not started there (and has not been queued again too often)."""
        if watch.future.status != "error" or watch.requeues >= MAX_REQUEUES:
            return False
        from distributed.scheduler import KilledWorker

        if not isinstance(watch.future.exception(), KilledWorker):
            return False
        return watch.worker in self._kills or not watch.started

    def _requeue(self, watch: _Watch, reason: str) -> str:
        log.info("job %s goes back to the queue: %s", watch.job_id, reason)
        with self._lock:
            with contextlib.suppress(Exception):
                watch.future.cancel()
            watch.future, watch.worker, watch.started, watch.requeue = None, "", 0.0, ""
            watch.requeues += 1
            watch.kept.clear()
        self.store.update_job(watch.job_id, status=JobStatus.QUEUED, message=f"queued again: {reason}",
                              only_active=True)
        self._kick.set()
        return "requeue"

    def _stop(self, watch: _Watch, status: JobStatus, reason: str) -> None:
        """Ends a job the owner gave up on; kills its worker first if the job was handed to one.

        A job pinned to a worker may already run there even before its start event arrives, and Dask
        cannot stop a running task, so its worker is killed. Until that worker is gone it counts as busy,
        so no other job is handed to it.
        """
        worker = watch.worker if not watch.future.done() else ""
        if worker and self._cluster is not None:
            with self._lock:
                self._stopping.add(worker)
                self._kills[worker] = f"its worker was restarted to stop job {watch.job_id} ({reason})"
            try:
                watch.future.cancel()
                self._cluster.restart_worker(worker)
                deadline = time.monotonic() + WORKER_GONE_S
                while worker in self._cluster.workers() and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                with self._lock:
                    self._stopping.discard(worker)
        else:
            watch.future.cancel()
        if worker and watch.spec.kind in KEEPS:
            time.sleep(PARTIAL_SETTLE_S)
        error = "" if status == JobStatus.CANCELLED else reason
        if not self._keep_what_finished(watch, status, reason):
            self.store.update_job(watch.job_id, status=status, message=reason, error=error, only_active=True)
        log.info("job %s %s", watch.job_id, reason)

    def _keep_what_finished(self, watch: _Watch, status: JobStatus, reason: str) -> bool:
        """Publishes what a stopped job finished (a conversion's finished recipes), if its kind keeps any;
        the job ends with `reason` and a result that says what it kept. False when there was nothing."""
        assemble = KEEPS.get(watch.spec.kind)
        if assemble is None:
            return False
        try:
            # from qlab's own worker, as every job result is
            value = assemble(watch.spec.params, [pickle.loads(piece) for piece in watch.kept])
        except Exception:
            log.exception("the finished pieces of job %s could not be read", watch.job_id)
            return False
        if value is None:
            return False
        try:
            with self.store.transaction():
                result = json.loads(to_json(document(publish(self.store, value, self.data_dir))))
                names = [str(v.get("name")) for v in result.get("variants", [])]
                words = f"{reason}; kept {len(names)} finished: {', '.join(names)}"
                result.update(stopped=reason, kept=names)
                if not self.store.update_job(watch.job_id, status=status, message=words[:500], result=result,
                                             error="" if status == JobStatus.CANCELLED else words,
                                             only_active=True):
                    raise _Ended()
        except _Ended:
            return True
        except Exception:
            log.exception("keeping what job %s finished failed", watch.job_id)
            return False
        return True

    def _finish(self, watch: _Watch) -> None:
        future = watch.future
        if future.status == "error":
            exc = future.exception()
            from distributed.scheduler import KilledWorker

            if isinstance(exc, KilledWorker):
                reason = self._death_reason(watch)
            else:
                reason = error_text(exc)
            self.store.update_job(watch.job_id, status=JobStatus.FAILED, error=reason, message="failed",
                                  only_active=True)
            return
        if future.status == "cancelled":
            self.store.update_job(watch.job_id, status=JobStatus.CANCELLED, message="cancelled", only_active=True)
            return
        value = future.result()
        self._settle_events(watch)
        try:
            with self.store.transaction():
                result = json.loads(to_json(document(publish(self.store, value, self.data_dir))))
                if not self.store.update_job(watch.job_id, status=JobStatus.DONE, progress=1.0, message="done",
                                             result=result, only_active=True):
                    raise _Ended()
        except _Ended:  # cancelled or timed out while the result travelled: keep nothing of it
            return
        except Exception as exc:
            log.exception("writing the results of job %s failed", watch.job_id)
            self.store.update_job(watch.job_id, status=JobStatus.FAILED, message="failed",
                                  error=f"its results could not be stored: {error_text(exc)}", only_active=True)

    def _settle_events(self, watch: _Watch, timeout: float = 2.0) -> None:
        """Lets a finished job's start event (the worker that ran it) reach the store before its result;
        later progress does not matter once the job is done."""
        deadline = time.monotonic() + timeout
        while not watch.started and time.monotonic() < deadline:
            time.sleep(0.02)

    def _death_reason(self, watch: _Watch) -> str:
        if watch.worker in self._kills:
            return self._kills[watch.worker]
        deadline = time.monotonic() + DEATH_REPORT_WAIT_S
        worker = watch.worker or _last_worker(watch.future)
        while True:
            with self._lock:
                death = self._deaths.get(worker)
            if death is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if death is None:
            return "the worker died while running this job (no exit report reached the server)"
        if death.get("memory"):
            limit = _worker_memory_limit(self.cluster, worker)
            text = f"the worker died: out of memory at {float(death.get('rss', 0)) / 1e9:.1f} GB"
            return text + (f" (limit {limit / 1e9:.1f} GB per worker, QLAB_WORKER_MEMORY)" if limit else "")
        code = int(death.get("exitcode", 0) or 0)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
            return f"the worker died: killed by {name}{hint}"
        return f"the worker died: its process exited with status {code}"


class _Stopped(Exception):
    """An owner-side job was cancelled or ran out of time (raised from its progress callback)."""

    def __init__(self, status: JobStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Ended(Exception):
    """The job ended (cancelled, timed out) before its result could be written."""


def _forget_partials(dask_scheduler: Any) -> None:
    """Runs on the scheduler: empties its history of PARTIAL_TOPIC (subscribers had them as they came)."""
    dask_scheduler._broker.truncate(PARTIAL_TOPIC)


def _takes(info: dict[str, Any], spec: JobSpec) -> bool:
    """Whether a worker (as the scheduler describes it) may run a job: it has the resources the job
    asks for, and a quick-lane worker takes only quick kinds."""
    have = info.get("resources") or {}
    if _is_quick(info) and not spec.quick:
        return False
    return all(float(have.get(r, 0)) >= n for r, n in spec.resources.items())


def _is_quick(info: dict[str, Any]) -> bool:
    return float((info.get("resources") or {}).get(QUICK_RESOURCE, 0)) > 0


def _remaining(watch: _Watch, typical: dict[str, float]) -> float:
    """Seconds a running job probably still needs: from its pace once it has made some progress,
    else what its kind usually takes."""
    usual = typical.get(watch.spec.kind.value, UNKNOWN_KIND_S)
    if not watch.started:
        return usual
    elapsed = time.monotonic() - watch.started
    if watch.fraction >= 0.05:
        return max(0.0, elapsed * (1.0 - watch.fraction) / watch.fraction)
    return max(0.0, usual - elapsed)


def _doing(watch: _Watch) -> str:
    if watch.future is None:
        return "queued"
    return watch.detail or (f"{watch.fraction:.0%} done" if watch.started else "starting")


def _live_detail(live: dict[str, Any]) -> str:
    """A few words of a job's live data: how many recipes or epochs it has done."""
    if "recipes_total" in live:
        return f"{len(live.get('variants') or [])} of {live['recipes_total']} recipes"
    if "epochs" in live:
        return f"epoch {len(live.get('history') or [])} of {live['epochs']}"
    return ""


def waiting_words(ahead: list[tuple[int, str, str]], wait_s: float) -> str:
    """What a queued job says: the jobs ahead of it and roughly how long it waits.

    Args:
        ahead: (job id, kind, what it is doing) of each job that runs or waits before this one.
        wait_s: the estimated seconds until a worker is free for it.
    """
    if not ahead:
        return "waiting for a free worker"
    shown = ", ".join(f"job {i} ({kind}, {doing})" for i, kind, doing in ahead[:3])
    more = f" and {len(ahead) - 3} more" if len(ahead) > 3 else ""
    return f"waiting for a free worker: {shown}{more} ahead, {_about(wait_s)}"


def _about(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 120 else f"about {minutes / 60:.0f} h"


def _seconds_between(start: str, end: str) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
    except (TypeError, ValueError):
        return None


def _last_worker(future: Any) -> str:
    try:
        exc = future.exception()
        return str(exc.last_worker.address)
    except Exception:
        return ""


def _worker_memory_limit(cluster: Cluster, worker: str) -> int:
    info = cluster.workers().get(worker) or {}
    if not info and cluster.settings.memory_limit not in ("auto", ""):
        from dask.utils import parse_bytes

        limit = cluster.settings.memory_limit
        return int(parse_bytes(limit)) if isinstance(limit, str) else int(limit)
    return int(info.get("memory_limit") or 0)


@contextlib.contextmanager
def local_runner(store: Store, data_dir: str | os.PathLike[str], settings: ClusterSettings
                 ) -> Iterator[JobRunner]:
    """A runner on a fresh cluster for a script or a test; closes both after."""
    runner = JobRunner(store, data_dir, settings)
    try:
        runner.cluster.wait_for_workers(settings.workers + settings.quick_workers if not settings.scheduler else 1)
        yield runner
    finally:
        runner.shutdown()
