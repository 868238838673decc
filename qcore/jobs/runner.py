"""The owner's side of jobs: queue them on Dask workers, follow them, and write their results.

The owner process (the dashboard's server) is the only one that opens the DuckDB file. For each
job it reads the inputs' bytes, hands a `JobSpec` to Dask, mirrors the worker's progress events
into the `jobs` table, and writes the returned journal in one transaction. A job whose worker
dies, that runs past its timeout, or that the user cancels ends in words, and its worker is
restarted; every other job goes on.

Environment:
    QLAB_DASK_SCHEDULER  tcp://host:8786 to use an existing cluster; unset for an embedded LocalCluster
    QLAB_WORKERS         embedded workers (default: cores - 1, at least 1)
    QLAB_WORKER_MEMORY   memory limit per embedded worker, e.g. 4GB (default: a fair share of RAM)
    QLAB_JOB_TIMEOUT     seconds a job may run (default 3600)
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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.jobs.contract import JobKind, JobParams, JobSpec, check_params, params_json, to_json
from qcore.jobs.journal import replay
from qcore.jobs.tasks import zip_dir
from qcore.jobs.worker import EXIT_TOPIC, MEMORY_TOPIC, PROGRESS_MIN_INTERVAL_S, PROGRESS_TOPIC
from qcore.qtyping import JobStatus, QlabError
from qcore.store import Store

log = logging.getLogger(__name__)

ENV_SCHEDULER = "QLAB_DASK_SCHEDULER"
ENV_WORKERS = "QLAB_WORKERS"
ENV_MEMORY = "QLAB_WORKER_MEMORY"
ENV_TIMEOUT = "QLAB_JOB_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0
# the nanny's exit report can reach the owner a moment after Dask says the worker died
DEATH_REPORT_WAIT_S = 3.0
# a killed worker leaves the scheduler's list within moments; a cancel waits this long for it at most
WORKER_GONE_S = 10.0
# how often a job's watcher looks at its future, its deadline and a cancel request
WATCH_INTERVAL_S = 0.2
# embedded workers and the scheduler can take this long to start (TensorFlow is imported first)
START_TIMEOUT_S = 180.0
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class ClusterSettings:
    """Where jobs run: an embedded LocalCluster (the default) or an existing scheduler."""

    scheduler: str = ""
    workers: int = 1
    memory_limit: str | int = "auto"
    # embedded workers write their own stdout/stderr (TensorFlow's C++ lines) here; "" keeps the terminal
    worker_log: str = ""
    threads_per_worker_pool: int = 1
    job_timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClusterSettings:
        """Reads QLAB_DASK_SCHEDULER, QLAB_WORKERS, QLAB_WORKER_MEMORY and QLAB_JOB_TIMEOUT.

        Raises:
            QlabError: naming the variable with a bad value.
        """
        env = dict(os.environ if env is None else env)
        cores = os.cpu_count() or 1
        workers_text = env.get(ENV_WORKERS, "").strip()
        if workers_text:
            if not workers_text.isdigit() or int(workers_text) < 1:
                raise QlabError(f"{ENV_WORKERS}={workers_text!r} must be a whole number of workers, at least 1")
            workers = int(workers_text)
        else:
            workers = max(1, cores - 1)
        memory: str | int = env.get(ENV_MEMORY, "").strip() or _fair_share(workers)
        if isinstance(memory, str):
            try:
                from dask.utils import parse_bytes

                parse_bytes(memory)
            except (ValueError, TypeError):
                raise QlabError(f"{ENV_MEMORY}={memory!r} is not a size like 4GB or 512MiB") from None
        timeout_text = env.get(ENV_TIMEOUT, "").strip()
        timeout = DEFAULT_TIMEOUT_S
        if timeout_text:
            try:
                timeout = float(timeout_text)
            except ValueError:
                timeout = -1.0
            if not timeout > 0:
                raise QlabError(f"{ENV_TIMEOUT}={timeout_text!r} must be a positive number of seconds")
        scheduler = env.get(ENV_SCHEDULER, "").strip()
        if scheduler and "://" not in scheduler:
            raise QlabError(f"{ENV_SCHEDULER}={scheduler!r} must be an address like tcp://host:8786")
        return cls(scheduler=scheduler, workers=workers, memory_limit=memory,
                   threads_per_worker_pool=max(1, cores // workers), job_timeout_s=timeout)


def _fair_share(workers: int) -> int:
    """Three quarters of RAM split across the workers (the web process and the OS keep the rest)."""
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except ImportError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * 0.75 / max(1, workers))


def _dask_config() -> dict[str, Any]:
    return {
        # a job whose worker dies fails; never retry it on the next worker (a crashing model would kill them all)
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.preload": ["qcore.jobs.worker"],
        "distributed.nanny.preload": ["qcore.jobs.worker"],
        # a worker that only holds results never spills them; the owner takes each result at once
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": 0.95,
        # a restarted worker imports TensorFlow before it registers again; on a busy machine that takes
        # longer than Dask's 15 s, after which a LocalCluster would close the nanny instead of waiting
        "distributed.deploy.lost-worker-timeout": "600s",
        "distributed.admin.tick.limit": "10s",
        "distributed.comm.timeouts.connect": "30s",
    }


class Cluster:
    """A Dask client with an embedded LocalCluster, or connected to an existing scheduler."""

    def __init__(self, settings: ClusterSettings) -> None:
        import dask
        from distributed import Client, LocalCluster

        self.settings = settings
        self._local: Any = None
        dask.config.set(_dask_config())
        warnings.filterwarnings("ignore", message=".*Large object of size.*")
        warnings.filterwarnings("ignore", message=".*Port 8787 is already in use.*")
        if settings.scheduler:
            try:
                self.client = Client(settings.scheduler, timeout=30, set_as_default=False)
            except OSError as exc:
                raise QlabError(f"cannot reach the Dask scheduler at {settings.scheduler}: {exc}") from None
            # the scheduler is the team's; make sure a crashing job is not retried there either
            with contextlib.suppress(Exception):
                self.client.run_on_scheduler(_no_retries)
        else:
            env = {"QLAB_WORKER_THREADS": str(settings.threads_per_worker_pool),
                   "OMP_NUM_THREADS": str(settings.threads_per_worker_pool),
                   "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "PYTHONWARNINGS": "ignore"}
            if settings.worker_log:
                Path(settings.worker_log).parent.mkdir(parents=True, exist_ok=True)
                env["QLAB_WORKER_LOG"] = settings.worker_log
            dask.config.set({"distributed.nanny.pre-spawn-environ": {
                **dask.config.get("distributed.nanny.pre-spawn-environ", {}), **env}})
            _spawn_without_main()
            self._local = LocalCluster(
                n_workers=settings.workers, threads_per_worker=1, processes=True,
                memory_limit=settings.memory_limit, dashboard_address=None, silence_logs=logging.CRITICAL,
                preload=["qcore.jobs.worker"], preload_nanny=["qcore.jobs.worker"], env=env,
                scheduler_kwargs={"allowed_failures": 0},
            )
            _keep_nannies(self._local)
            self.client = Client(self._local, set_as_default=False)

    @property
    def address(self) -> str:
        return str(self.client.scheduler.address)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Worker address → its info (host, resources, memory limit) as the scheduler knows it."""
        try:
            return dict(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        except TypeError:  # older distributed without n_workers
            return dict(self.client.scheduler_info().get("workers", {}))
        except Exception:
            return {}

    def wait_for_workers(self, n: int = 1, timeout: float = START_TIMEOUT_S) -> None:
        self.client.wait_for_workers(n, timeout=timeout)

    def restart_worker(self, address: str) -> None:
        """Kills a worker's process (SIGKILL, through its nanny) so the nanny starts a fresh one.

        A job stuck in native code (a WHILE loop in LiteRT that never ends) holds the worker's
        interpreter, so the worker cannot be asked to stop; its nanny, a separate process or
        event loop, can kill it.
        """
        nanny = str((self.workers().get(address) or {}).get("nanny") or "")
        try:
            if nanny:
                self.client.run(_kill_worker_process, workers=[address], nanny=True, wait=True)
            else:
                self.client.restart_workers([address], timeout=START_TIMEOUT_S, raise_for_error=False)
        except Exception as exc:  # the worker may be gone already; nothing else to do
            log.warning("restarting worker %s: %s", address, exc)

    def worker_pid(self, address: str) -> int:
        """The process id of a worker, asked of its nanny (a worker busy in native code cannot answer)."""
        got = self.client.run(_worker_pid, workers=[address], nanny=True)
        return int(next(iter(got.values())))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self._local is not None:
            with contextlib.suppress(Exception):
                self._local.close()


def _worker_pid(dask_worker: Any) -> int:
    """Runs on a nanny: its worker process's id."""
    return int(getattr(getattr(getattr(dask_worker, "process", None), "process", None), "pid", 0) or 0)


def _kill_worker_process(dask_worker: Any) -> int:
    """Runs on a nanny: SIGKILLs its worker process; the nanny then starts a new one."""
    process = getattr(getattr(dask_worker, "process", None), "process", None)
    pid = getattr(process, "pid", None)
    if pid:
        os.kill(int(pid), signal.SIGKILL)
    return int(pid or 0)


def _keep_nannies(cluster: Any) -> None:
    """A LocalCluster closes the nanny of a worker that left and did not come back within a
    timeout; a worker restarted after a crash imports TensorFlow first and can take longer on a
    busy machine. Its nanny restarts it anyway, so keep every nanny (the cluster closes them at shutdown)."""
    from distributed.deploy.cluster import Cluster as BaseCluster

    cluster._update_worker_status = lambda op, msg: BaseCluster._update_worker_status(cluster, op, msg)


def _spawn_without_main() -> None:
    """Worker processes never re-run this process's `__main__`.

    multiprocessing's spawn re-imports the parent's main module in the child. In the web process
    that is whatever Streamlit runs at the moment (it sets a page script as `__main__`), so a worker
    restarted after a crash would run a page and open the database. Workers need nothing from it:
    their preload imports qcore, and jobs are pickled by reference to qcore's modules.
    """
    import multiprocessing.spawn as mp_spawn

    if getattr(mp_spawn.get_preparation_data, "_qlab", False):
        return
    original = mp_spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data = dict(original(name))
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    preparation_data._qlab = True  # type: ignore[attr-defined]
    mp_spawn.get_preparation_data = preparation_data


def _no_retries(dask_scheduler: Any) -> None:
    dask_scheduler.allowed_failures = 0


# ---------------------------------------------------------------- gathering a job's inputs
def _model_file(store: Store, row: dict[str, Any]) -> tuple[str, bytes] | None:
    source = str(row.get("source_path") or "")
    if not source or row.get("format") == "tflite":
        return None
    path = Path(source)
    if path.is_dir():
        return f"{path.name or 'saved_model'}.zip", zip_dir(path)
    if not path.exists():
        raise QlabError(f"model #{row['id']} ({row['name']}): its file {path.name} is missing from the data directory")
    return path.name, path.read_bytes()


def _dataset_entry(store: Store, dataset_id: int, model_row: dict[str, Any] | None
                   ) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    row = _plain(store.dataset(int(dataset_id)))
    stored = row.get("stored_path")
    if model_row is not None:
        row["input_shape"] = _json_list(model_row.get("input_shape"))
    if isinstance(stored, str) and stored and Path(stored).exists():
        return row, (Path(stored).name, Path(stored).read_bytes())
    if row.get("source") != "digits":
        raise QlabError(f"dataset #{dataset_id} ({row['name']}): its file is missing from the data directory")
    return row, None


def _variant_entry(store: Store, variant_id: int) -> tuple[dict[str, Any], tuple[str, bytes]]:
    row = _plain(store.variant(int(variant_id)))
    if row.get("status") != "ok" or not row.get("sha256"):
        raise QlabError(f"variant #{variant_id} ({row.get('variant')}) has no .tflite: {row.get('error') or 'failed'}")
    path = Path(str(row["path"])) if row.get("path") else store.blob_path(str(row["sha256"]))
    if not path.exists():
        raise QlabError(f"variant #{variant_id}: its file {path.name} is missing from the data directory")
    return row, (f"{row['sha256']}.tflite", path.read_bytes())


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A store row with numpy and pandas values made plain (it travels to a worker)."""
    import json

    from qcore.jobs.contract import to_json

    return dict(json.loads(to_json({str(k): (None if _missing(v) else v) for k, v in row.items()})))


def _missing(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, list | tuple | dict) else False
    except (TypeError, ValueError):
        return False


def _json_list(value: Any) -> list[Any] | None:
    import json

    if value is None:
        return None
    return list(json.loads(value)) if isinstance(value, str) else list(value)


def gather_inputs(store: Store, kind: JobKind, params: Any, extra: dict[str, Any] | None = None
                  ) -> tuple[dict[str, tuple[str, bytes]], dict[str, dict[str, Any]]]:
    """The bytes and rows a job of this kind reads, from the store and the data directory.

    Raises:
        QlabError: for a missing model, dataset, variant, board or file, naming it.
    """
    files: dict[str, tuple[str, bytes]] = {}
    rows: dict[str, dict[str, Any]] = {}
    extra = extra or {}
    model_row = None
    if hasattr(params, "model_id") and kind != JobKind.ADD_MODEL:
        model_row = _plain(store.model(int(params.model_id)))
        rows["model"] = model_row
        model_file = _model_file(store, model_row)
        if model_file is not None:
            files["model"] = model_file
    if getattr(params, "dataset_id", None) is not None:  # a .tflite import may come without data
        rows["dataset"], data_file = _dataset_entry(store, int(params.dataset_id), model_row)
        if data_file is not None:
            files["dataset"] = data_file
    variant_ids: list[int] = list(getattr(params, "variant_ids", ()) or ())
    for name in ("float_variant_id", "quant_variant_id"):
        if hasattr(params, name):
            variant_ids.append(int(getattr(params, name)))
    for vid in variant_ids:
        rows[f"variant:{vid}"], files[f"variant:{vid}"] = _variant_entry(store, vid)
    if kind == JobKind.COMPARE_TENSORS:
        frow = rows[f"variant:{int(params.float_variant_id)}"]
        rows["dataset"], data_file = _dataset_entry(store, int(frow["dataset_id"]), None)
        if data_file is not None:
            files["dataset"] = data_file
    if kind == JobKind.BOARD_ACCURACY:
        for vid in variant_ids:
            did = int(rows[f"variant:{vid}"]["dataset_id"])
            model_row_v = _plain(store.model(int(rows[f"variant:{vid}"]["model_id"])))
            rows[f"dataset:{did}"], data_file = _dataset_entry(store, did, model_row_v)
            if data_file is not None:
                files[f"dataset:{did}"] = data_file
    if hasattr(params, "board"):
        url, token = store.board_token(str(params.board))
        rows[f"board:{params.board}"] = {"url": url, "token": token}
    if kind == JobKind.SELECTIVE:
        summary = store.variant_summary(model_ids=[int(params.model_id)])
        name = params.recipe if params.engine == "tf" else f"{params.recipe}@{params.engine}"
        same = summary[(summary["dataset_id"] == int(params.dataset_id)) & (summary["variant"] == name)
                       & (summary["status"] == "ok")]
        rows["baseline"] = {"variant_id": int(same["variant_id"].iloc[0]) if len(same) else None}
    if kind == JobKind.IMPORT_TFLITE:
        for role, name, path in (("tflite", params.filename, params.path),
                                 ("reference", params.reference_filename, params.reference_path)):
            if path:
                if not Path(path).is_file():
                    raise QlabError(f"{name}: the uploaded file is gone")
                files[role] = (name, Path(path).read_bytes())
    if kind == JobKind.ADD_MODEL:
        upload = Path(str(extra.get("upload_path", "")))
        if not upload.exists():
            raise QlabError(f"{params.filename}: the uploaded file is gone")
        rows["upload"] = {"path": str(extra.get("source_path") or upload)}
        files["model"] = (params.filename if upload.is_file() else f"{upload.name}.zip",
                          upload.read_bytes() if upload.is_file() else zip_dir(upload))
    return files, rows


# ---------------------------------------------------------------- the runner
@dataclass
class _Watch:
    job_id: int
    spec: JobSpec
    deadline_s: float
    future: Any = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
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
        from qcore.jobs.tasks import OWNER_TASKS

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
        from qcore.jobs.tasks import OWNER_TASKS

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
        from qcore.jobs.worker import execute

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
                topic, event = self._events.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._apply(event)
            except Exception:  # a progress write must never stop the pump
                log.exception("applying a job event failed")

    def _apply(self, event: dict[str, Any]) -> None:
        job_id = int(event.get("job", -1))
        kind = event.get("kind")
        if kind == "start":
            with self._lock:
                watch = self._watches.get(job_id)
                if watch is not None:
                    watch.worker, watch.started = str(event.get("worker", "")), time.monotonic()
            self.store.update_job(job_id, status=JobStatus.RUNNING, message="started",
                                  worker=str(event.get("worker", "")), worker_host=str(event.get("host", "")),
                                  only_active=True)
        elif kind == "progress":
            self.store.update_job(job_id, progress=float(event.get("fraction", 0.0)),
                                  message=str(event.get("message", "")), only_active=True)
        elif kind == "live":
            self.store.update_job(job_id, live=dict(event.get("data") or {}), only_active=True)
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
        from distributed import wait

        try:
            if not self._dispatch(watch):
                return
            while True:
                if watch.cancel.is_set():
                    self._stop(watch, JobStatus.CANCELLED, "cancelled")
                    return
                if watch.started and time.monotonic() - watch.started > watch.deadline_s:
                    self._stop(watch, JobStatus.FAILED, f"timed out after {watch.deadline_s:g} s")
                    return
                with contextlib.suppress(Exception):
                    wait(watch.future, timeout=WATCH_INTERVAL_S)
                if watch.future.done():
                    break
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
        output = future.result()
        self._settle_events(watch)
        try:
            with self.store.transaction():
                result = replay(output.journal, self.store, self.data_dir, output.result)
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
        """Lets the last progress events of a finished job reach the store before its result."""
        deadline = time.monotonic() + timeout
        while not self._events.empty() and time.monotonic() < deadline:
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
