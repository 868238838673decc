"""Jobs on real Dask workers: two at once, a hang that times out, a crash, a job over its memory, cancels.

One embedded cluster (a TLS `dask scheduler` child, two general workers and one quick-lane worker; each
imports TensorFlow once, which is the slow part) serves the module; a real DuckDB store records every job.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qcore.jobs.cluster import ClusterSettings
from qcore.jobs.contract import (
    ConvertParams,
    DemoParams,
    HostBenchParams,
    ImportTfliteParams,
    QatParams,
)
from qcore.jobs.runner import JobRunner, local_runner
from qcore.qtyping import JobStatus, LoadedModel, QlabError, VariantKind
from qcore.store import Store
from tests.board_agent.harness import build_tiny_models

pytestmark = pytest.mark.slow

# each worker may hold this much; TensorFlow alone takes well under half of it
WORKER_MEMORY = "2GB"
# a restarted worker imports TensorFlow again before it takes work; slow on a busy 2-core machine
WORKER_START_S = 300
# two general workers and one quick-lane worker
ALL_WORKERS = 3


def _poll(predicate: Any, timeout: float, what: str) -> Any:
    """Waits for predicate() to be truthy; fails naming `what` after the deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _memory_hog() -> bytes:
    """A .tflite whose one invoke broadcasts its input to 3.2 GB of floats (over a 2 GB worker)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def hog(x: Any) -> Any:
        return tf.reduce_sum(tf.broadcast_to(x, [800_000_000]))

    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([hog.get_concrete_function()], hog).convert())


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory, demo: LoadedModel) -> Path:
    """A data dir with the demo model's .h5 where the demo job looks for it."""
    folder = tmp_path_factory.mktemp("jobs-lab")
    (folder / "demo").mkdir()
    shutil.copy(demo.path, folder / "demo" / "demo.h5")
    return folder


@pytest.fixture(scope="module")
def runner(lab_dir: Path) -> Iterator[JobRunner]:
    """A JobRunner on a fresh embedded cluster of two workers and a quick-lane one (2 GB each), with a real store."""
    store = Store(lab_dir / "qlab.duckdb")
    settings = ClusterSettings(workers=2, quick_workers=1, memory_limit=WORKER_MEMORY, job_timeout_s=600,
                               worker_log=str(lab_dir / "workers.log"), tls_dir=str(lab_dir / "cluster"))
    with local_runner(store, lab_dir, settings) as r:
        yield r
    store.close()


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, bytes]:
    """The agent harness's tiny .tflite files (an int8 CNN, a WHILE that never ends), made once."""
    return build_tiny_models()


@pytest.fixture(scope="module")
def variants(runner: JobRunner, tiny_models: dict[str, bytes]) -> dict[str, int]:
    """Variant ids of real .tflite files: a tiny CNN, one whose WHILE never ends, one that eats memory."""
    store = runner.store
    model_id = store.add_model(name="tiny", format="tflite", sha256="0" * 64, source_path="", input_shape=[1, 4],
                               output_shape=[1, 4], keras_major=None)
    dataset_id = store.add_dataset(name="none", source="digits", sha256="1" * 64, input_scale=1.0,
                                   input_offset=0.0, n_train=1, n_test=1, num_classes=10)
    models = dict(tiny_models)
    models["hog"] = _memory_hog()
    return {name: store.save_variant(model_id=model_id, dataset_id=dataset_id, name=name, kind=VariantKind.PTQ,
                                     tflite=data) for name, data in models.items() if name in ("int8", "hang", "hog")}


def _job(runner: JobRunner, job_id: int) -> Any:
    return runner.store.job(job_id)


def test_two_jobs_run_at_once_on_two_workers(runner: JobRunner) -> None:
    first = runner.submit(DemoParams(recipes="int8"))
    assert _job(runner, first).status in (JobStatus.QUEUED, JobStatus.RUNNING)
    runner.wait(first, timeout=300)
    ids = [runner.submit(ConvertParams(model_id=1, dataset_id=1, recipes=(r,), bench=False))
           for r in ("float16", "dynamic")]
    for job_id in ids:
        assert runner.wait(job_id, timeout=300) is JobStatus.DONE, _job(runner, job_id).error
    a, b = (_job(runner, i) for i in ids)
    assert a.worker and b.worker and a.worker != b.worker, (a.worker, b.worker)
    assert a.worker_host and b.worker_host
    # both ran at the same time: each started before the other finished
    assert a.started_at < b.finished_at and b.started_at < a.finished_at
    names = set(runner.store.variant_summary()["variant"])
    assert {"int8", "float16", "dynamic"} <= names
    assert {"variants", "recipes_total"} <= set(a.live or {})  # each recipe's row reached the store while it ran


def test_hang_times_out_and_frees_its_worker(runner: JobRunner, variants: dict[str, int]) -> None:
    job_id = runner.submit(HostBenchParams(variant_ids=(variants["hang"],), runs=1, warmup=0), timeout_s=5)
    assert runner.wait(job_id, timeout=120) is JobStatus.FAILED
    job = _job(runner, job_id)
    assert job.error == "timed out after 5 s"
    assert not runner.store.benchmarks(variant_ids=[variants["hang"]]).shape[0]  # nothing half-written
    # both workers take work again
    after = runner.submit(HostBenchParams(variant_ids=(variants["int8"],), runs=5, warmup=1))
    assert runner.wait(after, timeout=120) is JobStatus.DONE, _job(runner, after).error
    runner.cluster.wait_for_workers(ALL_WORKERS, timeout=WORKER_START_S)


def test_worker_crash_fails_only_its_job(runner: JobRunner, variants: dict[str, int]) -> None:
    doomed = runner.submit(HostBenchParams(variant_ids=(variants["hang"],), runs=1, warmup=0))
    worker = _poll(lambda: _job(runner, doomed).worker, 120, "the job to start on a worker")
    pid = runner.cluster.worker_pid(worker)
    os.kill(pid, signal.SIGSEGV)  # what a native crash in LiteRT or the converter does to the process
    assert runner.wait(doomed, timeout=60) is JobStatus.FAILED
    assert _job(runner, doomed).error == "the worker died: killed by SIGSEGV"
    runner.cluster.wait_for_workers(ALL_WORKERS, timeout=WORKER_START_S)
    after = runner.submit(HostBenchParams(variant_ids=(variants["int8"],), runs=5, warmup=1))
    assert runner.wait(after, timeout=120) is JobStatus.DONE, _job(runner, after).error


def test_job_over_the_memory_limit_fails_with_the_memory_reason(runner: JobRunner,
                                                                 variants: dict[str, int]) -> None:
    job_id = runner.submit(HostBenchParams(variant_ids=(variants["hog"],), runs=1, warmup=0))
    assert runner.wait(job_id, timeout=180) is JobStatus.FAILED
    error = _job(runner, job_id).error
    assert error.startswith("the worker died: out of memory at "), error
    assert "limit 2.0 GB" in error
    runner.cluster.wait_for_workers(ALL_WORKERS, timeout=WORKER_START_S)


def test_cancel_a_running_and_a_queued_job(runner: JobRunner, variants: dict[str, int]) -> None:
    running = [runner.submit(HostBenchParams(variant_ids=(variants["hang"],), runs=1, warmup=0))
               for _ in range(2)]
    _poll(lambda: all(_job(runner, j).status is JobStatus.RUNNING for j in running), 120, "both workers busy")
    queued = runner.submit(HostBenchParams(variant_ids=(variants["int8"],), runs=5, warmup=1))
    assert _job(runner, queued).status is JobStatus.QUEUED
    assert runner.cancel(queued)
    assert runner.wait(queued, timeout=10) is JobStatus.CANCELLED
    started = time.monotonic()
    for job_id in running:
        assert runner.cancel(job_id)
    for job_id in running:
        assert runner.wait(job_id, timeout=60) is JobStatus.CANCELLED
    assert time.monotonic() - started < 60
    assert not runner.cancel(running[0])  # already ended
    runner.cluster.wait_for_workers(ALL_WORKERS, timeout=WORKER_START_S)
    after = runner.submit(HostBenchParams(variant_ids=(variants["int8"],), runs=5, warmup=1))
    assert runner.wait(after, timeout=120) is JobStatus.DONE, _job(runner, after).error


def test_gpu_job_waits_and_says_why_without_a_gpu_worker(runner: JobRunner) -> None:
    job_id = runner.submit(QatParams(model_id=1, dataset_id=1, epochs=1, gpu=True))
    job = _poll(lambda: (j := _job(runner, job_id)).message and j, 30, "the waiting message")
    assert job.status is JobStatus.QUEUED
    assert "waiting for a worker with GPU=1" in job.message
    runner.cancel(job_id)
    assert runner.wait(job_id, timeout=10) is JobStatus.CANCELLED


def test_bad_params_are_refused_before_queueing(runner: JobRunner) -> None:
    before = len(runner.store.jobs(limit=1000))
    with pytest.raises(QlabError, match="got dict"):  # JSON becomes a dataclass at the boundary (parse_params)
        runner.submit({"model_id": 1, "dataset_id": 1, "recipes": "int8"})  # type: ignore[arg-type]
    with pytest.raises(QlabError, match="field 'recipes' is declared tuple"):
        runner.submit(ConvertParams(model_id=1, dataset_id=1, recipes=["int8"]))  # type: ignore[arg-type]
    with pytest.raises(QlabError, match="no variant with id 999"):
        runner.submit(HostBenchParams(variant_ids=(999,)))
    assert len(runner.store.jobs(limit=1000)) == before


def _assert_kept_what_finished(runner: JobRunner, job_id: int) -> None:
    """A stopped conversion stored the recipes it finished, and its result names them."""
    job = _job(runner, job_id)
    live_names = [v["name"] for v in (job.live or {}).get("variants", [])]
    kept = job.result["kept"] if job.result else []
    # every row the page showed is kept (one more may have been on its way when the worker died)
    assert kept[: len(live_names)] == live_names and len(kept) <= len(live_names) + 1, (kept, live_names)
    assert 2 <= len(kept) < job.live["recipes_total"]  # stopped halfway
    assert f"kept {len(kept)} finished" in job.message, job.message
    stored = runner.store.variant_summary(variant_ids=[int(v["variant_id"]) for v in job.result["variants"]])
    assert sorted(stored["variant"]) == sorted(kept)  # each finished recipe is a stored variant


def test_cancel_and_timeout_end_only_their_own_job_and_keep_finished_recipes(
        runner: JobRunner, variants: dict[str, int], tiny_models: dict[str, bytes], tmp_path: Path) -> None:
    """Both general workers busy: H hangs, A converts every recipe; B and T wait. Cancelling A (after two
    recipes) keeps A's two and must not touch B; T's timeout keeps T's and must not touch D queued behind it.
    Dask used to hand queued jobs to a busy worker ahead of time and a killed worker took them down ("the
    worker died: killed by SIGKILL"), and a cancel threw finished recipes away. Meanwhile an import, a quick
    job, runs at once on the quick-lane worker."""
    convert_all = ConvertParams(model_id=1, dataset_id=1, recipes=("all",), bench=True)
    bench = HostBenchParams(variant_ids=(variants["int8"],), runs=5, warmup=1)
    held = runner.submit(HostBenchParams(variant_ids=(variants["hang"],), runs=1, warmup=0), timeout_s=400)
    doomed = runner.submit(convert_all)
    _poll(lambda: all(_job(runner, j).status is JobStatus.RUNNING for j in (held, doomed)), 120, "both busy")
    innocent = runner.submit(bench)
    slow = runner.submit(convert_all)
    tflite = tmp_path / "tiny.tflite"
    tflite.write_bytes(tiny_models["int8"])
    quick = runner.submit(ImportTfliteParams(filename=tflite.name, path=str(tflite)))
    assert runner.wait(quick, timeout=120) is JobStatus.DONE, _job(runner, quick).error
    quick_workers = [a for a, w in runner.cluster.workers().items() if (w.get("resources") or {}).get("QUICK")]
    assert _job(runner, quick).worker in quick_workers
    assert _job(runner, innocent).status is JobStatus.QUEUED  # the quick-lane worker takes no timing job
    words = _poll(lambda: (m := _job(runner, innocent).message).startswith("waiting for a free worker:") and m,
                  30, "the waiting words")
    assert f"job {held} (host_bench, " in words and f"job {doomed} (convert, " in words, words
    assert "ahead, " in words, words

    _poll(lambda: len((_job(runner, doomed).live or {}).get("variants", [])) >= 2, WORKER_START_S, "2 recipes")
    assert runner.cancel(doomed)
    assert runner.wait(doomed, timeout=60) is JobStatus.CANCELLED
    _assert_kept_what_finished(runner, doomed)
    assert runner.wait(innocent, timeout=WORKER_START_S) is JobStatus.DONE, _job(runner, innocent).error

    _poll(lambda: len((_job(runner, slow).live or {}).get("variants", [])) >= 2, WORKER_START_S, "2 recipes")
    behind = runner.submit(bench)
    runner._watches[slow].deadline_s = 0.0  # its deadline passes now; the watcher sees it as any timeout
    assert runner.wait(slow, timeout=120) is JobStatus.FAILED
    assert _job(runner, slow).error.startswith("timed out after 0 s; kept "), _job(runner, slow).error
    _assert_kept_what_finished(runner, slow)
    assert runner.wait(behind, timeout=WORKER_START_S) is JobStatus.DONE, _job(runner, behind).error

    assert runner.cancel(held)
    assert runner.wait(held, timeout=60) is JobStatus.CANCELLED
    runner.cluster.wait_for_workers(ALL_WORKERS, timeout=WORKER_START_S)


def test_embedded_cluster_refuses_clients_without_its_credentials(runner: JobRunner, lab_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Anyone on the host could once run code as qlab with `Client('tcp://127.0.0.1:PORT').run(...)`, and
    `run_on_scheduler` ran it inside the web process."""
    from distributed import Client
    from distributed.security import Security

    from qcore.jobs.cluster import make_credentials

    address = runner.cluster.address
    assert address.startswith("tls://127.0.0.1:"), address
    key = lab_dir / "cluster" / "cluster-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    # the scheduler is a child process: a remote call cannot reach the owner's memory
    assert runner.cluster.client.run_on_scheduler(os.getpid) != os.getpid()
    cert, other_key = make_credentials(tmp_path / "other")  # a stranger's own pair
    attempts = {"plain": (f"tcp://127.0.0.1:{address.rsplit(':', 1)[1]}", None),
                "no certificate": (address, Security(require_encryption=True)),
                "another certificate": (address, Security(tls_ca_file=cert, tls_client_cert=cert,
                                                          tls_client_key=other_key, require_encryption=True))}
    for what, (target, security) in attempts.items():
        with pytest.raises(Exception):  # noqa: B017  (refused in whichever way the handshake fails)
            client = Client(target, timeout=5, set_as_default=False, security=security)
            client.close()
            pytest.fail(f"a client with {what} connected")
