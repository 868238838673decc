"""Scale-out: qlab on an existing Dask cluster (a scheduler and two workers started here, one with a GPU).

The processes are real `dask scheduler` / `dask worker` commands on 127.0.0.1, started the way the
README tells a team to start them on its machines: mutual TLS with one key and certificate, qlab's preloads.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcore.jobs.cluster import ClusterSettings, make_credentials
from qcore.jobs.contract import DemoParams, QatParams
from qcore.jobs.runner import JobRunner, local_runner
from qcore.qtyping import JobStatus, LoadedModel
from qcore.store import Store

pytestmark = pytest.mark.slow

# two workers import TensorFlow at start; a busy 2-core machine needs a while
START_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _credentials(folder: Path) -> tuple[str, str]:
    """The README's one openssl line (a key and a self-signed certificate, its own CA); qlab's own maker
    where there is no openssl."""
    if not shutil.which("openssl"):
        return make_credentials(folder)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "3650", "-subj", "/CN=qlab-cluster", "-keyout", str(folder / "cluster-key.pem"),
                    "-out", str(folder / "cluster.pem")], check=True, capture_output=True)
    return str(folder / "cluster.pem"), str(folder / "cluster-key.pem")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The cluster's certificate and key."""
    return _credentials(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tls: tuple[str, str]) -> Iterator[str]:
    """A TLS `dask scheduler` and two `dask worker` processes on loopback, one with `--resources GPU=1`."""
    folder = tmp_path_factory.mktemp("dask")
    cert, key = tls
    tls_args = ["--tls-ca-file", cert, "--tls-cert", cert, "--tls-key", key]
    address = f"tls://127.0.0.1:{_free_port()}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    log = (folder / "cluster.log").open("ab")
    env_args = {"stdout": log, "stderr": subprocess.STDOUT, "cwd": Path(__file__).resolve().parents[2]}
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--protocol", "tls",
                               "--no-dashboard", *tls_args], **env_args)]  # type: ignore[call-overload]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
              "--no-dashboard", "--host", "127.0.0.1", "--preload", "qcore.jobs.worker",
              "--preload-nanny", "qcore.jobs.worker", "--memory-limit", "4GB", *tls_args]
    procs.append(subprocess.Popen([*worker, "--name", "cpu-box"], **env_args))  # type: ignore[call-overload]
    procs.append(subprocess.Popen([*worker, "--name", "gpu-box", "--resources", "GPU=1"],
                                  **env_args))  # type: ignore[call-overload]
    try:
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def runner(cluster: str, tls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
           demo: LoadedModel) -> Iterator[JobRunner]:
    """qlab's runner pointed at the cluster by address and credentials (QLAB_DASK_SCHEDULER, QLAB_DASK_TLS_*)."""
    folder = tmp_path_factory.mktemp("scale-out-lab")
    (folder / "demo").mkdir()
    shutil.copy(demo.path, folder / "demo" / "demo.h5")
    store = Store(folder / "qlab.duckdb")
    deadline = time.monotonic() + 60
    while True:  # the scheduler may still be starting
        try:
            with socket.create_connection(("127.0.0.1", int(cluster.rsplit(":", 1)[1])), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    settings = ClusterSettings.from_env({"QLAB_DASK_SCHEDULER": cluster, "QLAB_JOB_TIMEOUT": "900",
                                         "QLAB_DASK_TLS_CA": tls[0], "QLAB_DASK_TLS_CERT": tls[0],
                                         "QLAB_DASK_TLS_KEY": tls[1]})
    with local_runner(store, folder, settings) as r:
        r.cluster.wait_for_workers(2, timeout=START_S)
        yield r
    store.close()


def test_gpu_job_lands_on_the_gpu_worker_and_names_it(runner: JobRunner) -> None:
    demo = runner.submit(DemoParams(recipes="int8"))
    assert runner.wait(demo, timeout=600) is JobStatus.DONE, runner.store.job(demo).error
    # the scheduler's worker list can come back empty for a moment on a loaded machine (the runner's dispatch
    # simply tries again next round): ask until it names the workers
    deadline = time.monotonic() + 60
    while not (workers := runner.cluster.workers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    gpu = [a for a, w in workers.items() if (w.get("resources") or {}).get("GPU")]
    assert len(gpu) == 1, workers
    job_id = runner.submit(QatParams(model_id=1, dataset_id=1, epochs=1, train_samples=64, gpu=True))
    assert runner.wait(job_id, timeout=600) is JobStatus.DONE, runner.store.job(job_id).error
    job = runner.store.job(job_id)
    assert job.worker == gpu[0]
    assert job.worker_host == socket.gethostname()
    assert job.live and len(job.live["history"]) == 1  # the epoch's metrics came back as data
    assert runner.store.variant(int(job.result["variant_id"]))["variant"].startswith("qat")


def test_a_client_without_the_credentials_is_refused(runner: JobRunner, cluster: str) -> None:
    from distributed import Client
    from distributed.security import Security

    for security in (None, Security(require_encryption=True)):
        with pytest.raises(Exception):  # noqa: B017  (the handshake fails, however the library words it)
            Client(cluster, timeout=5, set_as_default=False, security=security).close()
            pytest.fail("a client without the cluster's certificate connected")
    assert runner.cluster.workers()  # qlab's own client, holding them, is connected
