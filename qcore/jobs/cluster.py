"""The Dask cluster jobs run on: an embedded one (the default) or a team's scheduler.

The embedded cluster is a `dask scheduler` and `dask worker` processes, children of the owner, that speak
mutual TLS with a key and certificate made at each start (0600, under the data directory): only
processes holding them connect, and no scheduler runs inside the owner, where a remote call could
reach its secrets.

Environment:
    QLAB_DASK_SCHEDULER  tls://host:8786 (or tcp:// on loopback) to use an existing cluster; unset for the embedded one
    QLAB_DASK_TLS_CA, QLAB_DASK_TLS_CERT, QLAB_DASK_TLS_KEY
                         the client's credentials for an existing tls:// cluster (or Dask's distributed.comm.tls.*)
    QLAB_WORKERS         embedded workers (default: cores - 1, at least 1)
    QLAB_QUICK_WORKERS   embedded quick-lane workers that only load and inspect models (default 1; 0 for none)
    QLAB_WORKER_MEMORY   memory limit per embedded worker, e.g. 4GB (default: a fair share of RAM)
    QLAB_JOB_TIMEOUT     seconds a job may run (default 3600)
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.jobs.contract import QUICK_RESOURCE
from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

ENV_SCHEDULER = "QLAB_DASK_SCHEDULER"
ENV_TLS = ("QLAB_DASK_TLS_CA", "QLAB_DASK_TLS_CERT", "QLAB_DASK_TLS_KEY")
ENV_WORKERS = "QLAB_WORKERS"
ENV_QUICK = "QLAB_QUICK_WORKERS"
ENV_MEMORY = "QLAB_WORKER_MEMORY"
ENV_TIMEOUT = "QLAB_JOB_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0
# embedded workers and the scheduler can take this long to start (TensorFlow is imported first)
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ClusterSettings:
    """Where jobs run: the embedded TLS cluster of child processes (the default) or an existing scheduler."""

    scheduler: str = ""
    workers: int = 1
    memory_limit: str | int = "auto"
    # embedded workers write their own stdout/stderr (TensorFlow's C++ lines) here; "" keeps the terminal
    worker_log: str = ""
    threads_per_worker_pool: int = 1
    job_timeout_s: float = DEFAULT_TIMEOUT_S
    # embedded quick-lane workers (QUICK_KINDS only: an upload never waits behind a conversion)
    quick_workers: int = 0
    # where the embedded cluster's TLS key and certificate are made at start; "" for a private temporary folder
    tls_dir: str = ""
    # an existing tls:// cluster's CA, client certificate and key (QLAB_DASK_TLS_*); empty: Dask's own config
    tls_files: tuple[str, str, str] | None = None

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
        quick_text = env.get(ENV_QUICK, "").strip() or "1"
        if not quick_text.isdigit():
            raise QlabError(f"{ENV_QUICK}={quick_text!r} must be a whole number of workers (0 for none)")
        memory: str | int = env.get(ENV_MEMORY, "").strip() or _fair_share(workers + int(quick_text))
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
        tls_files = _tls_files(env)
        if scheduler:
            check_scheduler(scheduler, tls_files)
        return cls(scheduler=scheduler, workers=workers, memory_limit=memory,
                   threads_per_worker_pool=max(1, cores // workers), job_timeout_s=timeout,
                   quick_workers=int(quick_text), tls_files=tls_files)


def _tls_files(env: dict[str, str]) -> tuple[str, str, str] | None:
    """QLAB_DASK_TLS_CA/CERT/KEY: all three or none, each a readable file."""
    given = [env.get(name, "").strip() for name in ENV_TLS]
    if not any(given):
        return None
    for name, path in zip(ENV_TLS, given, strict=True):
        if not path:
            raise QlabError(f"{name} is not set: give all of {', '.join(ENV_TLS)} (or none)")
        if not os.access(path, os.R_OK):
            raise QlabError(f"{name}={path}: no such readable file")
    return (given[0], given[1], given[2])


def check_scheduler(address: str, tls_files: tuple[str, str, str] | None) -> None:
    """Refuses an existing scheduler anyone on the network could use to run code as qlab.

    Raises:
        QlabError: one line, for an address that is not tls:// or tcp://, a non-loopback tcp:// (plain text,
            no authentication), or a tls:// address with no credentials in QLAB_DASK_TLS_* or Dask's config.
    """
    scheme, _, rest = address.partition("://")
    host = rest.rsplit(":", 1)[0].strip("[]") if rest else ""
    if scheme not in ("tcp", "tls") or not host:
        raise QlabError(f"{ENV_SCHEDULER}={address!r} must be an address like tls://host:8786")
    if scheme == "tcp" and not _is_loopback(host):
        raise QlabError(f"{ENV_SCHEDULER}={address} is plain TCP beyond this machine: anyone who reaches it runs "
                        f"code as qlab; start the cluster with TLS and use tls:// with {', '.join(ENV_TLS)}")
    if scheme == "tls" and tls_files is None:
        import dask

        if not dask.config.get("distributed.comm.tls.ca-file", None):
            raise QlabError(f"{ENV_SCHEDULER}={address} needs credentials: set {', '.join(ENV_TLS)} "
                            "(or distributed.comm.tls.* in Dask's config)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        "distributed.admin.tick.limit": "10s",
        "distributed.comm.timeouts.connect": "30s",
    }


def _config_env(config: dict[str, Any]) -> dict[str, str]:
    """Dask settings as the DASK_* environment variables a `dask scheduler`/`dask worker` child reads."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): repr(value) for key, value in config.items()}


def make_credentials(folder: Path) -> tuple[str, str]:
    """A fresh key and self-signed certificate (its own CA) for the embedded cluster; returns (cert, key) paths.

    Every process of the embedded cluster (scheduler, workers, the owner's client) holds the pair; a
    connection without it fails the TLS handshake (mutual TLS: distributed requires a client certificate).
    Both files are readable by this user only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qlab-cluster")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("qlab-cluster")]), critical=False)
            .sign(key, hashes.SHA256()))
    paths = (folder / "cluster.pem", folder / "cluster-key.pem")
    blobs = (cert.public_bytes(serialization.Encoding.PEM),
             key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()))
    for path, blob in zip(paths, blobs, strict=True):
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
    return str(paths[0]), str(paths[1])


def _die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGTERM when the thread that started it ends (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Embedded:
    """The embedded cluster's processes: a TLS `dask scheduler` on loopback and `dask worker` children.

    A keeper thread starts them and lives until `close`: a child gets SIGTERM when the thread that
    started it ends (PR_SET_PDEATHSIG), so they die with the owner even when it is killed.
    """

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self._owned_dir = not settings.tls_dir
        self.folder = Path(settings.tls_dir or tempfile.mkdtemp(prefix="qlab-cluster-"))
        self.cert, self.key = make_credentials(self.folder)
        self.address = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._env: dict[str, str] = {}
        self._log_path = self.folder / "cluster.log"
        self._started = threading.Event()
        self._stop = threading.Event()
        self._quick = threading.Event()  # set once the general workers are up: then the quick lane starts
        self._error: BaseException | None = None
        self._keeper = threading.Thread(target=self._keep, name="qlab-cluster-children", daemon=True)
        self._keeper.start()
        self._started.wait()
        if self._error is not None:
            self.close()
            raise self._error

    def security(self) -> Any:
        from distributed.security import Security

        return Security(tls_ca_file=self.cert, tls_client_cert=self.cert, tls_client_key=self.key,
                        require_encryption=True)

    def _tls_args(self) -> list[str]:
        return ["--tls-ca-file", self.cert, "--tls-cert", self.cert, "--tls-key", self.key]

    def _keep(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # handed to the constructor, which raises it in the caller's thread
            self._error = exc
        finally:
            self._started.set()
        while not self._stop.is_set():
            if self._quick.is_set() and self._error is None:
                self._quick.clear()
                with contextlib.suppress(OSError):
                    self._spawn_quick()
            self._stop.wait(0.2)
        self._terminate()

    def start_quick_lane(self) -> None:
        """Starts the quick-lane workers (called once the general ones are up, so they import TensorFlow
        after them and a first start's demo job does not wait for both)."""
        self._quick.set()

    def _start(self) -> None:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        # preloads go on the command line; no HTTP routes: the diagnostics pages would show logs and call
        # stacks to anyone on the machine, and qlab reads nothing from them
        env.update(_config_env({**{k: v for k, v in _dask_config().items() if "preload" not in k},
                                "distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}))
        env.update(QLAB_WORKER_THREADS=str(s.threads_per_worker_pool), OMP_NUM_THREADS=str(s.threads_per_worker_pool),
                   TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", PYTHONWARNINGS="ignore",
                   DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True")
        log_path = Path(s.worker_log) if s.worker_log else self.folder / "cluster.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if s.worker_log:
            env["QLAB_WORKER_LOG"] = s.worker_log
        scheduler_file = self.folder / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        self._env, self._log_path = env, log_path
        self._child(["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--protocol",
                     "tls", "--no-dashboard", "--scheduler-file", str(scheduler_file), *self._tls_args()])
        self.address = self._wait_for_address(scheduler_file)
        self._child([*self._worker_args(), "--nworkers", str(s.workers), "--name", "qlab"])

    def _worker_args(self) -> list[str]:
        return ["-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1", "--host", "127.0.0.1",
                "--no-dashboard", "--memory-limit", str(self.settings.memory_limit), "--preload", "qcore.jobs.worker",
                "--preload-nanny", "qcore.jobs.worker", *self._tls_args()]

    def _spawn_quick(self) -> None:
        if self.settings.quick_workers:
            self._child([*self._worker_args(), "--nworkers", str(self.settings.quick_workers), "--name",
                         "qlab-quick", "--resources", f"{QUICK_RESOURCE}=1"])

    def _child(self, args: list[str]) -> None:
        """Starts one child from the keeper thread, its output appended to the cluster's log."""
        with self._log_path.open("ab") as out:
            self._procs.append(subprocess.Popen(
                [sys.executable, "-P", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self._env, cwd=self.folder, preexec_fn=_die_with_parent))

    def _wait_for_address(self, scheduler_file: Path) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._procs[0].poll() is not None:
                raise QlabError(f"the job scheduler exited with status {self._procs[0].returncode} at start "
                                f"(see {self.settings.worker_log or self.folder / 'cluster.log'})")
            with contextlib.suppress(OSError, ValueError, KeyError):
                return str(json.loads(scheduler_file.read_text())["address"])
            time.sleep(0.1)
        raise QlabError(f"the job scheduler did not start within {START_TIMEOUT_S:g} s")

    def _terminate(self) -> None:
        for proc in reversed(self._procs):  # workers first: their nannies close them, then the scheduler
            with contextlib.suppress(OSError):
                proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self._stop.set()
        self._keeper.join(timeout=60)
        if self._owned_dir:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:  # the next start makes new ones; nothing keeps a key that no process uses
            for path in (self.cert, self.key):
                with contextlib.suppress(OSError):
                    os.unlink(path)


class Cluster:
    """A Dask client on the embedded TLS cluster (child processes), or connected to an existing scheduler."""

    def __init__(self, settings: ClusterSettings) -> None:
        import dask
        from distributed import Client
        from distributed.security import Security

        self.settings = settings
        self._embedded: _Embedded | None = None
        self._workers_seen: dict[str, dict[str, Any]] = {}  # the scheduler's last list of its workers
        dask.config.set(_dask_config())
        warnings.filterwarnings("ignore", message=".*Large object of size.*")
        warnings.filterwarnings("ignore", message=".*Port 8787 is already in use.*")
        if settings.scheduler:
            check_scheduler(settings.scheduler, settings.tls_files)
            security = None
            if settings.tls_files:
                ca, cert, key = settings.tls_files
                security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                                    require_encryption=True)
            try:
                self.client = Client(settings.scheduler, timeout=30, set_as_default=False, security=security)
            except (OSError, TimeoutError) as exc:
                raise QlabError(f"cannot reach the Dask scheduler at {settings.scheduler}: {exc}") from None
            # the scheduler is the team's; make sure a crashing job is not retried there either
            with contextlib.suppress(Exception):
                self.client.run_on_scheduler(_no_retries)
        else:
            self._embedded = _Embedded(settings)
            try:
                self.client = Client(self._embedded.address, timeout=START_TIMEOUT_S, set_as_default=False,
                                     security=self._embedded.security())
            except BaseException:
                self._embedded.close()
                raise
            if settings.quick_workers:
                threading.Thread(target=self._quick_lane_after_general, name="qlab-quick-lane", daemon=True).start()

    def _quick_lane_after_general(self) -> None:
        with contextlib.suppress(Exception):  # a slow start still gets its quick lane, just later
            self.client.wait_for_workers(self.settings.workers, timeout=START_TIMEOUT_S)
        if self._embedded is not None:
            self._embedded.start_quick_lane()

    @property
    def address(self) -> str:
        return str(self.client.scheduler.address)

    @property
    def tls_files(self) -> tuple[str, str, str] | None:
        """The embedded cluster's (CA, certificate, key) files, what QLAB_DASK_TLS_* name for another
        process of this machine's qlab to join it (None for an existing cluster)."""
        e = self._embedded
        return (e.cert, e.cert, e.key) if e is not None else None

    def workers(self) -> dict[str, dict[str, Any]]:
        """Worker address → its info (host, resources, memory limit) as the scheduler knows it.

        When the scheduler does not answer (a slow moment on a loaded machine), the last answer it gave:
        an empty list would read as "no workers" to the dispatcher and the waiting words.
        """
        try:
            try:
                info = self.client.scheduler_info(n_workers=-1)
            except TypeError:  # older distributed without n_workers
                info = self.client.scheduler_info()
        except Exception:
            log.debug("the scheduler did not list its workers; using its last list", exc_info=True)
            return dict(self._workers_seen)
        self._workers_seen = dict(info.get("workers", {}))
        return dict(self._workers_seen)

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
        if self._embedded is not None:
            self._embedded.close()


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


def _no_retries(dask_scheduler: Any) -> None:
    dask_scheduler.allowed_failures = 0
