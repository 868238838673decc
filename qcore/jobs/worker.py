"""The Dask side of a job: the worker preload (TensorFlow imported once, threads capped) and `execute`.

Start a remote worker with this module as both preloads, so it is ready like the embedded ones:

    dask worker tcp://server:8786 --preload qcore.jobs.worker --preload-nanny qcore.jobs.worker [--resources GPU=1]

The nanny half reports how a worker process ended (signal, exit status) as a Dask event, so
the owner can say in words why a job's worker died.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import time
from typing import Any

from qcore.jobs.contract import JobSpec
from qcore.jobs.tasks import run_task
from qcore.serialize import to_json

# the events a job's worker publishes (start, progress, live data) and the nanny's exit reports
PROGRESS_TOPIC = "qlab-progress"
# finished pieces of a job's value (each recipe's variant with its bytes), pickled: kept if the job is stopped
PARTIAL_TOPIC = "qlab-partial"
EXIT_TOPIC = "qlab-worker-exit"
# Dask's own event when a nanny restarts a worker over its memory budget
MEMORY_TOPIC = "worker-restart-memory"
# progress is cheap to send but a conversion reports many steps; one event per this many seconds
PROGRESS_MIN_INTERVAL_S = 0.25
# the threads each worker gives TensorFlow's and LiteRT's pools (set by the owner for embedded workers)
ENV_THREADS = "QLAB_WORKER_THREADS"
# a file for the worker's own stdout/stderr: TensorFlow's C++ lines stay out of the user's terminal
ENV_LOG = "QLAB_WORKER_LOG"
# how much a worker yields the CPU to the web process beside it (os.nice increment; 0 = none)
ENV_NICE = "QLAB_WORKER_NICE"
DEFAULT_NICE = 10

log = logging.getLogger(__name__)


def _quiet_native_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _setup_worker(worker: Any) -> None:
    """Imports TensorFlow, tf_keras and LiteRT once per worker process, with its share of threads."""
    _quiet_native_logs()
    nice = os.environ.get(ENV_NICE, str(DEFAULT_NICE))
    if nice.isdigit() and int(nice) > 0:  # pages stay responsive while jobs use every core
        os.nice(int(nice))
    logfile = os.environ.get(ENV_LOG, "")
    if logfile:
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import warnings

    warnings.filterwarnings("ignore")
    threads = os.environ.get(ENV_THREADS, "")
    if threads.isdigit() and int(threads) > 0:
        for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            os.environ[var] = threads
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    started = time.monotonic()
    import qcore  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    import tensorflow as tf
    import tf_keras  # noqa: F401
    from ai_edge_litert import interpreter  # noqa: F401

    if threads.isdigit() and int(threads) > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialized by an earlier import in this process
            pass
    tf.get_logger().setLevel(logging.ERROR)
    log.info("worker %s ready in %.1f s", getattr(worker, "address", "?"), time.monotonic() - started)


def _setup_nanny(nanny: Any) -> None:
    """Makes the nanny publish how its worker process ended, before it starts a new one."""
    original = getattr(nanny, "_on_worker_exit", None)
    if original is None:  # another distributed version: the owner then says "the worker died"
        return

    async def on_exit(exitcode: int) -> Any:
        from distributed.core import Status

        try:
            if exitcode != 0 and nanny.status == Status.running:  # not when the nanny itself is closing
                nanny.log_event(EXIT_TOPIC, {"worker": nanny.worker_address, "exitcode": exitcode,
                                             "host": socket.gethostname(), "time": time.time()})
        except Exception:  # reporting must never stop the nanny from restarting its worker
            log.exception("could not report a worker exit")
        return await original(exitcode)

    nanny._on_worker_exit = on_exit


def dask_setup(server: Any) -> None:
    """Dask's preload hook: called with the Worker (`--preload`) or the Nanny (`--preload-nanny`)."""
    from distributed import Nanny

    if isinstance(server, Nanny):
        _setup_nanny(server)
    else:
        _setup_worker(server)


def execute(spec: JobSpec) -> Any:
    """Runs one job on this Dask worker and returns its value (the owner publishes it).

    Sends, on PROGRESS_TOPIC: a start event naming this worker, then progress and live data; on
    PARTIAL_TOPIC: each finished piece of the value, so a job stopped halfway keeps them.
    """
    from distributed import get_worker

    worker = get_worker()

    def emit(kind: str, **fields: Any) -> None:
        worker.log_event(PROGRESS_TOPIC, {"job": spec.job_id, "kind": kind, **fields})

    emit("start", worker=worker.address, host=socket.gethostname(), pid=os.getpid())
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_MIN_INTERVAL_S and fraction < 1.0:
            return
        last[0] = now
        emit("progress", fraction=float(fraction), message=str(message)[:500])

    def live(data: dict[str, Any]) -> None:
        emit("live", data=json.loads(to_json(data)))  # events travel as msgpack: plain values only

    def keep(value: Any) -> None:  # the owner unpickles it as it unpickles the job's result
        worker.log_event(PARTIAL_TOPIC, {"job": spec.job_id, "worker": worker.address, "value": pickle.dumps(value)})

    return run_task(spec, progress, live, keep)
