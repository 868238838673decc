"""Repair as the lab runs it: `qlab repair` here (the job's task and publish in this process), the job on real
Dask workers (progress per AdaRound layer, a time estimate, a cancel while another repair waits), bad input."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from qcore.cli import main
from qcore.inputs.models import load_model
from qcore.jobs.cluster import ClusterSettings
from qcore.jobs.contract import RepairParams
from qcore.jobs.runner import local_runner
from qcore.lab.publish import register
from qcore.qtyping import Dataset, JobStatus
from qcore.store import Store

# the spread network's per-tensor int8 loses this much at least before repair (tests/qcore/test_repair.py)
FAILURE = 0.30
# and is within this of float after CLE + bias (360 test digits: a point is 3.6 samples)
TOLERANCE = 0.02


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def repaired_here(spread_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    """`qlab repair spread.h5 --data digits --methods cle,bias --json --out r.tflite` into a fresh store:
    (its document, the store, the written file)."""
    root = tmp_path_factory.mktemp("repair-cli")
    db, out = root / "qlab.duckdb", root / "repaired.tflite"
    code, stdout, stderr = _cli(["repair", str(spread_h5), "--data", "digits", "--methods", "cle,bias",
                                 "--debug-samples", "40", "--db", str(db), "--out", str(out), "--json"])
    assert code == 0, stderr
    return json.loads(stdout), db, out


@pytest.mark.slow
def test_repair_cli_brings_per_tensor_back_and_stays_integer(repaired_here: tuple[dict[str, Any], Path, Path]
                                                             ) -> None:
    doc, _, _ = repaired_here
    plain, repaired = doc["plain"], doc["repaired"]
    assert plain["name"] == "int8-per-tensor" and repaired["name"] == "int8-per-tensor + CLE + bias"
    assert plain["accuracy"] < doc["float_accuracy"] - FAILURE
    assert repaired["accuracy"] >= doc["float_accuracy"] - TOLERANCE
    assert doc["accuracy_gain"] == pytest.approx(repaired["accuracy"] - plain["accuracy"])
    assert repaired["agreement"] > plain["agreement"]
    assert repaired["npu_ready"] is True and doc["weights"] == "per-tensor"
    assert doc["npu_verdict"] == "all ops integer, per-tensor weights"
    assert repaired["size_bytes"] > 0 and doc["seconds"]["total"] > 0 and doc["seconds"]["estimate"] > 0
    assert doc["methods"] == ["cle", "bias"] and [s["method"] for s in doc["repair"]["steps"]] == ["fold", "cle",
                                                                                                      "bias"]


@pytest.mark.slow
def test_repair_cli_per_layer_error_before_and_after_each_repair(repaired_here: tuple[dict[str, Any], Path, Path]
                                                                 ) -> None:
    """Every layer has a figure at every stage; CLE is what brings the worst layer's error down."""
    doc, _, _ = repaired_here
    assert [s["stage"] for s in doc["stages"]] == ["plain", "cle", "bias"]  # the implied fold is not measured
    rows = doc["layers"]
    assert rows and all(all(r.get(s) is not None for s in ("plain", "cle", "bias")) for r in rows)
    assert max(r["cle"] for r in rows) < max(r["plain"] for r in rows) / 2
    agreement = {s["stage"]: s["model_metrics"].get("argmax_agreement") for s in doc["stages"]}
    assert agreement["cle"] > agreement["plain"]


@pytest.mark.slow
def test_repair_cli_stores_the_repaired_variant_beside_the_plain_one(
        repaired_here: tuple[dict[str, Any], Path, Path]) -> None:
    doc, db, out = repaired_here
    with Store(db) as store:
        repaired, plain = store.variant(doc["variant_id"]), store.variant(doc["plain_variant_id"])
        assert repaired["kind"] == "repair" and plain["kind"] == "ptq"
        parent = store.query("SELECT parent_variant_id FROM variants WHERE id = ?", [doc["variant_id"]]).iloc[0, 0]
        assert parent == plain["variant_id"] == doc["plain_variant_id"]
        assert repaired["model_id"] == plain["model_id"] and repaired["dataset_id"] == plain["dataset_id"]
        settings = json.loads(repaired["settings"])
        assert settings["methods"] == ["cle", "bias"] and settings["repair"]["label"] == repaired["variant"]
        assert [s["method"] for s in settings["repair"]["steps"]] == ["fold", "cle", "bias"]
        assert out.read_bytes() == Path(repaired["path"]).read_bytes()


@pytest.mark.parametrize("argv,words", [
    (["--methods", "cle,smooth"], "unknown repair method 'smooth'; known methods: fold, cle, absorb, adaround, bias"),
    (["--recipe", "float16"], "recipe float16: the repairs target the int8 weight grid"),
    (["--recipe", "int9"], "int9"),
    (["--adaround-iterations", "0"], "--adaround-iterations must be at least 1, got 0"),
    (["--debug-samples", "0"], "--debug-samples must be at least 1, got 0"),
])
def test_repair_cli_bad_input_one_line_nothing_stored(argv: list[str], words: str, tmp_path: Path) -> None:
    db = tmp_path / "qlab.duckdb"
    code, stdout, stderr = _cli(["repair", "no-such-model.h5", "--data", "digits", "--db", str(db), *argv])
    assert code == 2 and stdout == ""
    assert words in stderr and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    if db.exists():  # refused before anything was uploaded or stored
        with Store(db) as store:
            assert store.query("SELECT count(*) FROM models").iloc[0, 0] == 0


@pytest.mark.slow
def test_repair_job_on_workers_progress_estimate_and_a_cancel_while_another_waits(
        spread_h5: Path, digits: Dataset, tmp_path: Path) -> None:
    """One worker: a long AdaRound repair reports each layer and its time left, is cancelled mid-way and leaves
    nothing stored; the CLE repair queued behind it then runs and is published beside the plain variant."""
    settings = ClusterSettings(workers=1, memory_limit="2GB", job_timeout_s=600, worker_log=str(tmp_path / "w.log"))
    with Store(tmp_path / "qlab.duckdb") as store:
        model_id, dataset_id = register(store, load_model(spread_h5), digits)
        with local_runner(store, tmp_path, settings) as runner:
            slow = runner.submit(RepairParams(model_id=model_id, dataset_id=dataset_id, methods=("adaround",),
                                              adaround_iterations=50_000, debug_samples=20))
            quick = runner.submit(RepairParams(model_id=model_id, dataset_id=dataset_id, methods=("cle",),
                                               debug_samples=20))
            deadline, seen = time.monotonic() + 300, [""]
            while time.monotonic() < deadline:
                job = store.job(slow)
                seen.append(job.message)
                if "AdaRound" in job.message and (job.live or {}).get("estimate_s"):
                    break
                assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING), (job.status, job.error)
                time.sleep(0.2)
            else:
                raise AssertionError(f"no AdaRound progress in {seen[-5:]}")
            assert "s left of" in job.message and store.job(quick).status is JobStatus.QUEUED
            assert runner.cancel(slow)
            assert runner.wait(slow, timeout=120) is JobStatus.CANCELLED
            assert runner.wait(quick, timeout=300) is JobStatus.DONE, store.job(quick).error
        result = store.job(quick).result or {}
        rows = store.variant_summary(model_ids=[model_id])
    assert result["label"] == "int8-per-tensor + CLE" and result["repaired"]["npu_ready"] is True
    assert result["repaired"]["accuracy"] > result["plain"]["accuracy"] + FAILURE
    kinds = dict(zip(rows["variant"], rows["kind"], strict=True))
    assert kinds == {"int8-per-tensor": "ptq", "int8-per-tensor + CLE": "repair"}  # nothing of the cancelled one
