"""The owner's side of jobs: queue them on Dask workers, follow them, and write their results.

The owner process (the dashboard's server) is the only one that opens the DuckDB file. For each
job it reads the inputs' bytes, hands a `JobSpec` to Dask, mirrors the worker's progress events
into the `jobs` table, and publishes the value it returns in one transaction (`qcore.lab.publish`). A job whose worker
dies, that runs past its timeout, or that the user cancels ends in words, and its worker is
restarted; every other job goes on.

The cluster itself (embedded or a team's, and its QLAB_* settings) is `qcore.jobs.cluster`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import os
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
from qcore.jobs.contract import JobKind, JobParams, JobSpec, check_params, params_json
from qcore.jobs.inputs import gather_inputs
from qcore.jobs.worker import (
    EXIT_TOPIC,
    MEMORY_TOPIC,
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
    worker: str = ""


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
        if isinstance(cluster, Cluster):
            self._connect(cluster)
        else:  # workers import TensorFlow before they take jobs: start them without holding up the server
            threading.Thread(target=self._start, name="qlab-cluster-start", daemon=True).start()
        self._pump = threading.Thread(target=self._pump_events, name="qlab-job-events", daemon=True)
        self._pump.start()

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

    def _dispatch(self, watch: _Watch) -> bool:
        """Hands a job to Dask once the cluster is up; False when it ended before that."""
        while not self._ready.wait(timeout=WATCH_INTERVAL_S):
            if watch.cancel.is_set():
                self.store.update_job(watch.job_id, status=JobStatus.CANCELLED, message="cancelled",
                                      only_active=True)
                return False
        if self._cluster is None:
            self.store.update_job(watch.job_id, status=JobStatus.FAILED, message="failed", only_active=True,
                                  error=f"the job workers did not start: {self._start_error}")
            return False
        spec = watch.spec
        watch.future = self._cluster.client.submit(execute, spec, key=f"qlab-job-{spec.job_id}", pure=False,
                                                   resources=spec.resources or None, retries=0)
        if spec.resources:
            self._note_missing_resources(spec.job_id, spec.resources)
        elif self.store.job(spec.job_id).message.startswith("waiting for the job workers"):
            self.store.update_job(spec.job_id, message="", only_active=True)
        return True

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
        for event in starts:  # after the row says running, so a cancel that reads it sees the worker
            with self._lock:
                watch = self._watches.get(int(event.get("job", -1)))
                if watch is not None:
                    watch.worker, watch.started = str(event.get("worker", "")), time.monotonic()
        self.on_change()

    def _note_missing_resources(self, job_id: int, resources: dict[str, float]) -> None:
        have = [a for a, w in self.cluster.workers().items()
                if all(float((w.get("resources") or {}).get(r, 0)) >= n for r, n in resources.items())]
        if not have:
            wanted = ", ".join(f"{r}={n:g}" for r, n in resources.items())
            self.store.update_job(job_id, message=f"waiting for a worker with {wanted}: none is connected "
                                  f"(start one with `dask worker {self.cluster.address} --resources {wanted} "
                                  "--preload qcore.jobs.worker --preload-nanny qcore.jobs.worker`)", only_active=True)

    # ------------------------------------------------------------ following one job
    def _follow(self, watch: _Watch) -> None:
        try:
            if not self._dispatch(watch):
                return
            # woken by the future's end or a cancel; the interval only bounds how late a timeout is seen
            # (distributed.wait needs a default client and, without one, returned at once: a busy loop
            # per job that starved the owner's other threads of the GIL)
            watch.future.add_done_callback(lambda _f: watch.wake.set())
            while True:
                if watch.cancel.is_set():
                    self._stop(watch, JobStatus.CANCELLED, "cancelled")
                    return
                if watch.started and time.monotonic() - watch.started > watch.deadline_s:
                    self._stop(watch, JobStatus.FAILED, f"timed out after {watch.deadline_s:g} s")
                    return
                if watch.future.done():
                    break
                watch.wake.wait(WATCH_INTERVAL_S)
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
            self._notify_ended()
            self.on_change()

    def _stop(self, watch: _Watch, status: JobStatus, reason: str) -> None:
        """Ends a job the owner gave up on; kills its worker first if it was running there.

        The row changes only once the worker is gone, so a job submitted after a cancel never
        lands on the worker that is about to be killed.
        """
        was_running = bool(watch.started) or watch.future.status not in ("pending", "cancelled")
        watch.future.cancel()
        if was_running and watch.worker and self._cluster is not None:
            self._cluster.restart_worker(watch.worker)
            deadline = time.monotonic() + WORKER_GONE_S
            while watch.worker in self._cluster.workers() and time.monotonic() < deadline:
                time.sleep(0.05)
        error = "" if status == JobStatus.CANCELLED else reason
        self.store.update_job(watch.job_id, status=status, message=reason, error=error, only_active=True)
        log.info("job %s %s", watch.job_id, reason)

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
        runner.cluster.wait_for_workers(settings.workers if not settings.scheduler else 1)
        yield runner
    finally:
        runner.shutdown()
