"""The background job runner: state in the jobs table, errors in words, earlier writes kept."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dashboard.services.jobs import JobRunner, error_text, publish
from qcore.qtyping import Evaluation, JobStatus, QlabError
from qcore.store import Store


def _eval() -> Evaluation:
    return Evaluation(accuracy=0.9, top5=1.0, agreement=None, confusion=((1,),), n_samples=1, batched=True)


def _runner(store: Store, **tasks) -> JobRunner:
    return JobRunner(store, dict(tasks), workers=1)


def test_submit_done_stores_result_and_progress(tmp_store: Store) -> None:
    def task(params, progress):
        progress(0.5, "half way")
        return {"doubled": params["n"] * 2}

    runner = _runner(tmp_store, double=task)
    job_id = runner.submit("double", {"n": 21})
    runner.wait(job_id, timeout=10)
    job = tmp_store.job(job_id)
    assert job.status is JobStatus.DONE
    assert job.result == {"doubled": 42}
    assert job.progress == 1.0
    assert job.params == {"n": 21}


def test_submit_failed_keeps_what_was_stored_before(tmp_store: Store) -> None:
    model_id = tmp_store.add_model(name="m", format="h5", sha256="s" * 64, source_path="/m.h5",
                                   input_shape=[None, 8], output_shape=[None, 2], keras_major=2)
    dataset_id = tmp_store.add_dataset(name="d", source="d", sha256="d" * 64, input_scale=1.0, input_offset=0.0,
                                       n_train=1, n_test=1, num_classes=2)

    def task(params, progress):
        tmp_store.save_variant(model_id=model_id, dataset_id=dataset_id, name="first", kind="ptq",
                               tflite=b"TFL3-first", evaluation=_eval())
        raise QlabError("recipe int8 refused op CUSTOM_FOO; try int8-fallback")

    runner = _runner(tmp_store, convert=task)
    job_id = runner.submit("convert", {})
    runner.wait(job_id, timeout=10)
    job = tmp_store.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error == "recipe int8 refused op CUSTOM_FOO; try int8-fallback"
    assert tmp_store.variant_summary()["variant"].tolist() == ["first"]


def test_submit_internal_error_in_words_not_traceback(tmp_store: Store) -> None:
    def task(params, progress):
        return {}["missing"]

    runner = _runner(tmp_store, boom=task)
    job_id = runner.submit("boom", {})
    runner.wait(job_id, timeout=10)
    error = tmp_store.job(job_id).error
    assert error == "internal error (KeyError): 'missing'"
    assert "Traceback" not in error


def test_submit_unknown_kind_names_known(tmp_store: Store) -> None:
    runner = _runner(tmp_store, convert=lambda p, pr: {})
    with pytest.raises(QlabError, match="unknown job kind 'nope'; known: convert"):
        runner.submit("nope", {})
    assert tmp_store.jobs() == []


def test_submit_runs_off_the_calling_thread(tmp_store: Store) -> None:
    started, release = threading.Event(), threading.Event()

    def task(params, progress):
        started.set()
        release.wait(10)
        return {"thread": threading.current_thread().name}

    runner = _runner(tmp_store, slow=task)
    job_id = runner.submit("slow", {})
    assert started.wait(10)
    assert tmp_store.job(job_id).status is JobStatus.RUNNING  # the caller got control back at once
    release.set()
    runner.wait(job_id, timeout=10)
    assert tmp_store.job(job_id).result["thread"].startswith("qlab-job")


def test_publish_partial_result_while_running(tmp_store: Store) -> None:
    seen = {}

    def task(params, progress):
        publish({"history": [{"epoch": 1, "loss": 0.5}]})
        seen["while_running"] = tmp_store.jobs()[0].result  # what a polling page reads now
        return {"final": True}

    runner = _runner(tmp_store, qat=task)
    job_id = runner.submit("qat", {})
    runner.wait(job_id, timeout=10)
    assert seen["while_running"] == {"history": [{"epoch": 1, "loss": 0.5}]}
    assert tmp_store.job(job_id).result == {"final": True}


def test_publish_outside_a_job_does_nothing(tmp_store: Store) -> None:
    publish({"x": 1})
    assert tmp_store.jobs() == []


def test_on_change_called_after_each_job(tmp_store: Store) -> None:
    calls = []
    runner = JobRunner(tmp_store, {"ok": lambda p, pr: {}}, workers=1, on_change=lambda: calls.append(1))
    runner.wait(runner.submit("ok", {}), timeout=10)
    assert calls == [1]


def test_error_text_of_value_error_is_its_message() -> None:
    assert error_text(ValueError("unknown recipe 'x'")) == "unknown recipe 'x'"


def test_orphaned_jobs_failed_on_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.services.lab import close, lab

    store = Store(tmp_path / "qlab.duckdb")
    job_id = store.create_job("convert", {})
    store.update_job(job_id, status=JobStatus.RUNNING)
    store.close()
    monkeypatch.setenv("QLAB_DB", str(tmp_path / "qlab.duckdb"))
    monkeypatch.setenv("QLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QLAB_BOOTSTRAP", "0")
    the_lab = lab()
    try:
        job = the_lab.store.job(job_id)
        assert job.status is JobStatus.FAILED
        assert job.error == "the server restarted while this job ran"
    finally:
        close(the_lab)
