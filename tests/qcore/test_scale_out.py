"""Scale-out: qlab on an existing Dask cluster (a scheduler and two workers started here, one with a GPU).

The processes are real `dask scheduler` / `dask worker` commands on 127.0.0.1, started the way a
team starts them on its machines, with qlab's preloads.
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

from qcore.jobs.cluster import ClusterSettings
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes on loopback, one with `--resources GPU=1`."""
    folder = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    log = (folder / "cluster.log").open("ab")
    env_args = {"stdout": log, "stderr": subprocess.STDOUT, "cwd": Path(__file__).resolve().parents[2]}
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard"], **env_args)]  # type: ignore[call-overload]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
              "--no-dashboard", "--host", "127.0.0.1", "--preload", "qcore.jobs.worker",
              "--preload-nanny", "qcore.jobs.worker", "--memory-limit", "4GB"]
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
def runner(cluster: str, tmp_path_factory: pytest.TempPathFactory, demo: LoadedModel) -> Iterator[JobRunner]:
    """qlab's runner pointed at the cluster by address (what QLAB_DASK_SCHEDULER does)."""
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
    settings = ClusterSettings.from_env({"QLAB_DASK_SCHEDULER": cluster, "QLAB_JOB_TIMEOUT": "900"})
    with local_runner(store, folder, settings) as r:
        r.cluster.wait_for_workers(2, timeout=START_S)
        yield r
    store.close()


def test_gpu_job_lands_on_the_gpu_worker_and_names_it(runner: JobRunner) -> None:
    demo = runner.submit(DemoParams(recipes="int8"))
    assert runner.wait(demo, timeout=600) is JobStatus.DONE, runner.store.job(demo).error
    workers = runner.cluster.workers()
    gpu = [a for a, w in workers.items() if (w.get("resources") or {}).get("GPU")]
    assert len(gpu) == 1, workers
    job_id = runner.submit(QatParams(model_id=1, dataset_id=1, epochs=1, train_samples=64, gpu=True))
    assert runner.wait(job_id, timeout=600) is JobStatus.DONE, runner.store.job(job_id).error
    job = runner.store.job(job_id)
    assert job.worker == gpu[0]
    assert job.worker_host == socket.gethostname()
    assert job.live and len(job.live["history"]) == 1  # the epoch's metrics came back as data
    assert runner.store.variant(int(job.result["variant_id"]))["variant"].startswith("qat")
