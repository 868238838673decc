"""Job tasks against real components: the local board agent over HTTP, the first-start bootstrap."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard import serve
from dashboard.services import children
from dashboard.services import lab as lab_mod
from dashboard.services.lab import LOCAL_BOARD, Lab, close, register_local_agent
from qcore.engines import resolve_recipes
from qcore.inputs.data import load_stored_dataset
from qcore.jobs.contract import BoardAccuracyParams, BoardBenchParams, ConvertParams
from qcore.qtyping import JobStatus, LoadedModel, QlabError
from tests.dashboard.conftest import point_env, run_job


@pytest.fixture(scope="session")
def local_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The real board agent on a free loopback port, started as the server's lifespan starts it: (url, token file)."""
    folder = tmp_path_factory.mktemp("agent")
    token_file = children.ensure_token(folder / "token")
    proc, url = children.start_agent(folder, token_file)
    assert proc is not None, (folder / "agent" / "agent.log").read_text()
    try:
        yield url, token_file
    finally:
        children.stop(proc)


@pytest.fixture()
def with_agent(converted: Lab, local_agent: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The converted lab with the local agent registered as "this machine (CPU only)"."""
    url, token_file = local_agent
    monkeypatch.setenv(lab_mod.ENV_AGENT_URL, url)
    monkeypatch.setenv(lab_mod.ENV_AGENT_TOKEN_FILE, str(token_file))
    assert register_local_agent(converted)
    return converted


def _vid(the_lab: Lab, name: str) -> int:
    df = the_lab.store.variant_summary()
    return int(df[df["variant"] == name]["variant_id"].iloc[0])


def test_register_local_agent_stores_url_and_token(with_agent: Lab, local_agent: tuple[str, Path]) -> None:
    url, token_file = local_agent
    assert with_agent.store.board_token(LOCAL_BOARD) == (url, token_file.read_text().strip())


def test_board_bench_task_stores_cpu_timings_beside_a_failed_npu_cell(with_agent: Lab) -> None:
    # picking npu, cpu and cpu-plain on a board without the NPU: the CPU timings are stored, the npu cell says why
    vid = _vid(with_agent, "int8")
    job = run_job(with_agent, BoardBenchParams(board=LOCAL_BOARD, variant_ids=(vid,),
                                                targets=("npu", "cpu", "cpu-plain"), runs=10, warmup=1))
    assert job.status is JobStatus.DONE, job.error
    assert (job.result["cells"], job.result["failed"]) == (3, 1)
    assert set(job.result["results"][0]["timings"]) == {"cpu", "cpu-plain"}
    assert "libvx_delegate" in job.result["results"][0]["failed"]["npu"]
    assert job.result["reasons"][0]["target"] == "npu" and "libvx_delegate" in job.result["reasons"][0]["reason"]
    cells = with_agent.store.board_cells(job.result["run_id"])
    assert dict(zip(cells["target"], cells["status"], strict=True)) == {"npu": "failed", "cpu": "done",
                                                                         "cpu-plain": "done"}
    rows = with_agent.store.benchmarks(variant_ids=[vid], board=LOCAL_BOARD)
    assert {"cpu", "cpu-plain"} <= set(rows["target"])
    assert (rows["p50_ms"] > 0).all() and rows["first_ms"].notna().all()


def test_board_bench_requested_profile_that_cannot_run_says_why(with_agent: Lab, page) -> None:
    """This host has no benchmark_model: the timing is kept and the job's reasons say why there is no profile."""
    vid = _vid(with_agent, "int8")
    job = run_job(with_agent, BoardBenchParams(board=LOCAL_BOARD, variant_ids=(vid,), targets=("cpu",), runs=5,
                                                warmup=1, profile=True))
    assert job.status is JobStatus.DONE, job.error
    assert job.result["failed"] == 0 and job.result["results"][0]["timings"]["cpu"] > 0
    (reason,) = job.result["reasons"]
    assert reason["target"] == "cpu" and reason["reason"].startswith("timed, but no per-op profile: ")
    assert "benchmark_model not found" in reason["reason"]
    cells = with_agent.store.board_cells(job.result["run_id"])
    assert cells["status"].tolist() == ["done"] and "benchmark_model" in cells["reason"].iloc[0]
    # the page says so before anything runs: the checkbox is off with the agent's reason
    from dashboard.services import reads
    from tests.dashboard.conftest import texts

    reads.clear()
    at = page("boards")
    box = next(c for c in at.checkbox if c.label == "per-op profile")
    assert box.disabled
    assert any(t.startswith(f"per-op profile is unavailable on {LOCAL_BOARD}: benchmark_model not found")
               for t in texts(at, "caption"))


def test_board_bench_task_npu_unavailable_in_words(with_agent: Lab) -> None:
    vid = _vid(with_agent, "int8")
    before = len(with_agent.store.benchmarks(board=LOCAL_BOARD))
    job = run_job(with_agent, BoardBenchParams(board=LOCAL_BOARD, variant_ids=(vid,), targets=("npu",)))
    assert job.status is JobStatus.FAILED
    assert "npu is unavailable" in job.error and "libvx_delegate" in job.error
    assert len(with_agent.store.benchmarks(board=LOCAL_BOARD)) == before


def test_board_accuracy_task_and_drift(with_agent: Lab) -> None:
    vid = _vid(with_agent, "int8")
    job = run_job(with_agent, BoardAccuracyParams(board=LOCAL_BOARD, variant_ids=(vid,), target="cpu"))
    assert job.status is JobStatus.DONE, job.error
    evals = with_agent.store.device_evaluations([vid]).set_index("device")
    board_row = evals.loc[f"board:{LOCAL_BOARD}/cpu"]
    assert board_row["host_agreement"] == pytest.approx(1.0)
    assert board_row["accuracy"] == pytest.approx(evals.loc["host", "accuracy"])


def test_board_bench_task_unreachable_board(converted: Lab) -> None:
    port = children.free_port()
    converted.store.add_board("gone", f"http://127.0.0.1:{port}", "t")
    vid = _vid(converted, "int8")
    job = run_job(converted, BoardBenchParams(board="gone", variant_ids=(vid,), targets=("cpu",)))
    assert job.status is JobStatus.FAILED
    assert "unreachable" in job.error and f"127.0.0.1:{port}" in job.error
    assert converted.store.benchmarks(board="gone").empty
    converted.store.remove_board("gone")


def test_convert_of_a_tflite_only_model_fails_in_words(empty_lab: Lab) -> None:
    model_id = empty_lab.store.add_model(name="shared", format="tflite", sha256="t" * 64, source_path="imported",
                                         input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=None)
    from dashboard.services import uploads

    dataset_id = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    job = run_job(empty_lab, ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=("int8",)))
    assert job.status is JobStatus.FAILED
    assert "is tflite-only" in job.error


def test_a_job_on_a_missing_model_file_is_refused_before_queueing(empty_lab: Lab, tmp_path: Path) -> None:
    model_id = empty_lab.store.add_model(name="m", format="h5", sha256="h" * 64, source_path=str(tmp_path / "x.h5"),
                                         input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    with pytest.raises(QlabError, match="x.h5 is missing"):
        empty_lab.runner.submit(ConvertParams(model_id=model_id, dataset_id=1, recipes=("int8",)))
    assert empty_lab.store.jobs() == []


def test_stored_digits_keep_their_preprocessing(empty_lab: Lab) -> None:
    from dashboard.services import uploads

    dataset_id = uploads.add_digits(empty_lab, input_scale=2.0, input_offset=-1.0)
    ds = load_stored_dataset(empty_lab.store.dataset(dataset_id))
    assert (ds.input_scale, ds.input_offset, len(ds.y_test)) == (2.0, -1.0, 360)


@pytest.mark.slow
def test_bootstrap_first_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo: LoadedModel,
                               local_agent: tuple[str, Path]) -> None:
    """An empty store gets the local board and the demo model converted with every recipe."""
    point_env(monkeypatch, tmp_path)
    monkeypatch.setenv(lab_mod.ENV_BOOTSTRAP, "1")
    monkeypatch.setenv(lab_mod.ENV_AGENT_URL, local_agent[0])
    monkeypatch.setenv(lab_mod.ENV_AGENT_TOKEN_FILE, str(local_agent[1]))
    (tmp_path / "demo").mkdir()
    shutil.copy(demo.path, tmp_path / "demo" / "demo.h5")  # the session's trained demo: no retraining
    the_lab = lab_mod.lab()
    try:
        assert [b.name for b in the_lab.store.boards()] == [LOCAL_BOARD]
        jobs = the_lab.store.jobs(kind="demo")
        assert len(jobs) == 1
        the_lab.runner.wait(jobs[0].id, timeout=600)
        assert the_lab.store.job(jobs[0].id).status is JobStatus.DONE
        summary = the_lab.store.variant_summary()
        assert set(summary["variant"]) == {r.name for r in resolve_recipes("all", "tf")}
        assert summary["host_p50_ms"].notna().sum() == (summary["status"] == "ok").sum()
    finally:
        close(the_lab)
    # a second start of a non-empty store queues nothing
    again = lab_mod.lab()
    try:
        assert len(again.store.jobs(kind="demo")) == 1
    finally:
        close(again)


def test_serve_rejects_bad_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("QLAB_PORT", "eighty")
    monkeypatch.setenv("QLAB_DATA_DIR", str(tmp_path))
    assert serve.main(["--no-agent"]) == 2
    assert "QLAB_PORT='eighty' is not a TCP port" in capsys.readouterr().err


def test_ensure_token_private_and_stable(tmp_path: Path) -> None:
    path = children.ensure_token(tmp_path / "agent" / "token")
    first = path.read_text()
    assert len(first.strip()) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert children.ensure_token(path).read_text() == first


def test_stop_ends_a_child(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    children.stop(proc, timeout=5)
    assert proc.poll() is not None
