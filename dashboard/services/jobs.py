"""Background jobs: threads in the server process, each one a row in the `jobs` table."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from qcore.qtyping import JobStatus, Progress, QlabError
from qcore.store import Store

log = logging.getLogger(__name__)

# a job function gets its params and a progress callback, and returns a JSON-able result
JobFn = Callable[[dict[str, Any], Progress], dict[str, Any]]

# progress rows are cheap, but a conversion reports many steps; one write per this many seconds
PROGRESS_MIN_INTERVAL_S = 0.25

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)

# the job the current worker thread runs, so a task can publish partial results
_current = threading.local()


def publish(partial: dict[str, Any]) -> None:
    """Stores a running job's partial result (e.g. QAT's epochs so far) for pages to show live.

    Does nothing outside a job thread.
    """
    runner, job_id = getattr(_current, "runner", None), getattr(_current, "job_id", None)
    if runner is not None and job_id is not None:
        runner.store.update_job(job_id, result=partial)


def error_text(exc: BaseException) -> str:
    """The words a user sees for a failed job: the QlabError itself, else its type and message."""
    if isinstance(exc, QlabError | ValueError):
        return str(exc) or type(exc).__name__
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"internal error ({type(exc).__name__}): {first}" if first else f"internal error ({type(exc).__name__})"


class JobRunner:
    """Runs job functions on a small thread pool and mirrors their state into the store.

    The store is the only state: a reload or a second browser reads the same row. A failed
    job stores its error in words; whatever its function stored before the failure stays.

    Args:
        store: the owner process's store.
        tasks: job kind → function.
        workers: threads; the machine is small and TF uses its own threads inside each job.
        on_change: called after a job finishes (e.g. to clear cached reads).
    """

    def __init__(
        self,
        store: Store,
        tasks: dict[str, JobFn],
        *,
        workers: int = 2,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.on_change = on_change or (lambda: None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qlab-job")
        self._futures: dict[int, Future[None]] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, params: dict[str, Any]) -> int:
        """Queues a job of a known kind; returns its id at once.

        Raises:
            QlabError: for an unknown kind.
        """
        if kind not in self.tasks:
            raise QlabError(f"unknown job kind {kind!r}; known: {', '.join(sorted(self.tasks))}")
        job_id = self.store.create_job(kind, params)
        # the job's thread acts for whoever submitted it (qcore.store.ACTOR → created_by)
        future = self._pool.submit(contextvars.copy_context().run, self._run, job_id, kind, params)
        with self._lock:
            self._futures[job_id] = future
        return job_id

    def wait(self, job_id: int, timeout: float | None = None) -> None:
        """Blocks until a job submitted here has finished (for tests and scripts)."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout=timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _progress(self, job_id: int) -> Progress:
        last = [0.0]

        def report(fraction: float, message: str) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_MIN_INTERVAL_S and fraction < 1.0:
                return
            last[0] = now
            try:
                self.store.update_job(job_id, progress=fraction, message=message[:500])
            except Exception:  # a progress write must never kill the job
                log.exception("progress update of job %s failed", job_id)

        return report

    def _run(self, job_id: int, kind: str, params: dict[str, Any]) -> None:
        self.store.update_job(job_id, status=JobStatus.RUNNING, message="started")
        _current.runner, _current.job_id = self, job_id
        try:
            result = self.tasks[kind](params, self._progress(job_id))
        except Exception as exc:  # every failure must reach the jobs table, in words
            if not isinstance(exc, QlabError | ValueError):
                log.exception("job %s (%s) failed", job_id, kind)
            self.store.update_job(job_id, status=JobStatus.FAILED, error=error_text(exc), message="failed")
        else:
            self.store.update_job(
                job_id, status=JobStatus.DONE, progress=1.0, message="done", result=result or {}
            )
        finally:
            _current.runner = _current.job_id = None
            with self._lock:
                self._futures.pop(job_id, None)
            self.on_change()
