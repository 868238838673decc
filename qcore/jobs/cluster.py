"""The Dask cluster jobs run on: an embedded LocalCluster (the default) or a team's scheduler.

Environment:
    QLAB_DASK_SCHEDULER  tcp://host:8786 to use an existing cluster; unset for an embedded LocalCluster
    QLAB_WORKERS         embedded workers (default: cores - 1, at least 1)
    QLAB_WORKER_MEMORY   memory limit per embedded worker, e.g. 4GB (default: a fair share of RAM)
    QLAB_JOB_TIMEOUT     seconds a job may run (default 3600)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

ENV_SCHEDULER = "QLAB_DASK_SCHEDULER"
ENV_WORKERS = "QLAB_WORKERS"
ENV_MEMORY = "QLAB_WORKER_MEMORY"
ENV_TIMEOUT = "QLAB_JOB_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0
# embedded workers and the scheduler can take this long to start (TensorFlow is imported first)
START_TIMEOUT_S = 180.0


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
