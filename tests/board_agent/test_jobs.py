"""Job records: atomic JSON, restart semantics, pruning."""

from __future__ import annotations

import json
from pathlib import Path

from board_agent import protocol
from board_agent.jobs import JobStore


def test_jobstore_restart_marks_queued_and_running_failed(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.json")
    store = JobStore(path)
    running = store.create("benchmark", {"target": "cpu"})["id"]
    queued = store.create("benchmark", {"target": "cpu"})["id"]
    done = store.create("benchmark", {"target": "cpu"})["id"]
    store.update(running, status=protocol.RUNNING)
    store.update(done, status=protocol.DONE, result={"p50_ms": 1.0})
    reopened = JobStore(path)
    for job_id in (running, queued):
        rec = reopened.get(job_id)
        assert rec is not None and rec["status"] == "failed" and rec["error"] == "agent restarted"
    rec = reopened.get(done)
    assert rec is not None and rec["status"] == "done" and rec["result"] == {"p50_ms": 1.0}
    # the file itself says so too, for a third start
    saved = {r["id"]: r["status"] for r in json.loads(Path(path).read_text())["jobs"]}
    assert saved == {running: "failed", queued: "failed", done: "done"}


def test_jobstore_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text("{not json")
    store = JobStore(str(path))
    assert store.count(protocol.DONE) == 0
    assert len(list(tmp_path.glob("jobs.json.broken-*"))) == 1


def test_jobstore_prunes_oldest_finished_and_reports_them(tmp_path: Path) -> None:
    dropped: list[str] = []
    store = JobStore(str(tmp_path / "jobs.json"), keep=2, on_drop=dropped.append)
    ids = [store.create("inference", {})["id"] for _ in range(4)]
    for i, job_id in enumerate(ids):
        store.update(job_id, status=protocol.DONE, finished_at=float(i))
    assert dropped == ids[:2]
    assert store.get(ids[0]) is None and store.get(ids[3]) is not None


def test_jobstore_get_returns_a_copy(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "jobs.json"))
    job_id = store.create("benchmark", {"runs": 5})["id"]
    rec = store.get(job_id)
    assert rec is not None
    rec["params"]["runs"] = 999
    again = store.get(job_id)
    assert again is not None and again["params"]["runs"] == 5
