"""Jobs on real Dask workers: two at once, a hang that times out, a crash, a job over its memory, cancels.

One embedded LocalCluster of two process workers serves the module (each worker imports
TensorFlow once, which is the slow part); a real DuckDB store records every job.
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
from qcore.jobs.contract import ConvertParams, DemoParams, HostBenchParams, QatParams
from qcore.jobs.runner import JobRunner, local_runner
from qcore.qtyping import JobStatus, LoadedModel, QlabError, VariantKind
from qcore.store import Store
from tests.board_agent.harness import build_tiny_models

pytestmark = pytest.mark.slow

# each worker may hold this much; TensorFlow alone takes well under half of it
WORKER_MEMORY = "2GB"
# a restarted worker imports TensorFlow again before it takes work; slow on a busy 2-core machine
WORKER_START_S = 300


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
    """A JobRunner on a fresh LocalCluster of two workers (2 GB each), with a real store."""
    store = Store(lab_dir / "qlab.duckdb")
    settings = ClusterSettings(workers=2, memory_limit=WORKER_MEMORY, job_timeout_s=600,
                               worker_log=str(lab_dir / "workers.log"))
    with local_runner(store, lab_dir, settings) as r:
        yield r
    store.close()


@pytest.fixture(scope="module")
def variants(runner: JobRunner) -> dict[str, int]:
    """Variant ids of real .tflite files: a tiny CNN, one whose WHILE never ends, one that eats memory."""
    store = runner.store
    model_id = store.add_model(name="tiny", format="tflite", sha256="0" * 64, source_path="", input_shape=[1, 4],
                               output_shape=[1, 4], keras_major=None)
    dataset_id = store.add_dataset(name="none", source="digits", sha256="1" * 64, input_scale=1.0,
                                   input_offset=0.0, n_train=1, n_test=1, num_classes=10)
    models = build_tiny_models()
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
    runner.cluster.wait_for_workers(2, timeout=WORKER_START_S)


def test_worker_crash_fails_only_its_job(runner: JobRunner, variants: dict[str, int]) -> None:
    doomed = runner.submit(HostBenchParams(variant_ids=(variants["hang"],), runs=1, warmup=0))
    worker = _poll(lambda: _job(runner, doomed).worker, 120, "the job to start on a worker")
    pid = runner.cluster.worker_pid(worker)
    os.kill(pid, signal.SIGSEGV)  # what a native crash in LiteRT or the converter does to the process
    assert runner.wait(doomed, timeout=60) is JobStatus.FAILED
    assert _job(runner, doomed).error == "the worker died: killed by SIGSEGV"
    runner.cluster.wait_for_workers(2, timeout=WORKER_START_S)
    after = runner.submit(HostBenchParams(variant_ids=(variants["int8"],), runs=5, warmup=1))
    assert runner.wait(after, timeout=120) is JobStatus.DONE, _job(runner, after).error


def test_job_over_the_memory_limit_fails_with_the_memory_reason(runner: JobRunner,
                                                                 variants: dict[str, int]) -> None:
    job_id = runner.submit(HostBenchParams(variant_ids=(variants["hog"],), runs=1, warmup=0))
    assert runner.wait(job_id, timeout=180) is JobStatus.FAILED
    error = _job(runner, job_id).error
    assert error.startswith("the worker died: out of memory at "), error
    assert "limit 2.0 GB" in error
    runner.cluster.wait_for_workers(2, timeout=WORKER_START_S)


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
    runner.cluster.wait_for_workers(2, timeout=WORKER_START_S)
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


def test_cancel_and_timeout_end_only_their_own_job(runner: JobRunner, variants: dict[str, int]) -> None:
    """Both workers busy (H and A hang), B and T wait. Cancelling A must not touch B; T's timeout must not
    touch D queued behind it. Dask used to hand queued jobs to a busy worker ahead of time, and a killed
    worker took them down: "the worker died: killed by SIGKILL"."""
    hang = HostBenchParams(variant_ids=(variants["hang"],), runs=1, warmup=0)
    quick = HostBenchParams(variant_ids=(variants["int8"],), runs=5, warmup=1)
    held = runner.submit(hang, timeout_s=400)
    doomed = runner.submit(hang)
    _poll(lambda: all(_job(runner, j).status is JobStatus.RUNNING for j in (held, doomed)), 120, "both busy")
    innocent = runner.submit(quick)
    slow = runner.submit(hang, timeout_s=4)
    words = _poll(lambda: _job(runner, innocent).message.startswith("waiting for a free worker:")
                  and _job(runner, innocent).message, 30, "the waiting words")
    assert f"job {doomed} (host_bench," in words and "ahead, " in words, words
    assert runner.cancel(doomed)
    assert runner.wait(doomed, timeout=60) is JobStatus.CANCELLED
    assert runner.wait(innocent, timeout=WORKER_START_S) is JobStatus.DONE, _job(runner, innocent).error
    _poll(lambda: _job(runner, slow).status is JobStatus.RUNNING, WORKER_START_S, "the slow job to start")
    behind = runner.submit(quick)
    assert runner.wait(slow, timeout=120) is JobStatus.FAILED
    assert _job(runner, slow).error == "timed out after 4 s"
    assert runner.wait(behind, timeout=WORKER_START_S) is JobStatus.DONE, _job(runner, behind).error
    assert runner.cancel(held)
    assert runner.wait(held, timeout=60) is JobStatus.CANCELLED
    runner.cluster.wait_for_workers(2, timeout=WORKER_START_S)
