"""The lab restarts: the real server stopped with SIGTERM on a fresh lab, and killed with -9 in the middle
of a job on a used one, starts again with no network and nothing installed, and keeps what it had."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qcore.qtyping import LoadedModel
from tests.e2e.lab_server import LabServer, use_lab

pytestmark = pytest.mark.slow


def _no_wal(data: Path) -> bool:
    return not (data / "qlab.duckdb.wal").exists()


def test_lab_restarts_after_sigterm_and_after_kill_mid_job_offline(tmp_path: Path, demo: LoadedModel) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    (data / "demo").mkdir(parents=True)
    home.mkdir()
    shutil.copy(demo.path, data / "demo" / "demo.h5")  # the session's trained demo: nothing trains again
    server = LabServer(data, home)

    # a fresh lab: start, SIGTERM (Ctrl-C, systemd), start again later
    server.start()
    assert server.stop() == 0
    assert _no_wal(data), "the server left its schema in the WAL: the next start must replay it"

    # used in between (the CLI on that machine), then served again
    ids = use_lab(data)
    server.start()
    job = server.api("POST", "/jobs", json={"kind": "convert", "params": {
        "model_id": ids["model_id"], "dataset_id": ids["dataset_id"], "recipes": ["uint8", "int16x8"]}}).json()
    server.wait_job(job["id"], until=("running", "done", "failed"))
    server.kill()  # kill -9 of the server, its workers and its agent, mid-job

    server.start()
    ended = server.api("GET", f"/jobs/{job['id']}").json()
    if ended["status"] != "done":  # a loaded machine may finish it before the kill lands
        assert (ended["status"], ended["error"]) == ("failed", "the server restarted while this job ran")
    assert [m["id"] for m in server.api("GET", "/models").json()] == [ids["model_id"]]
    assert ids["variant_id"] in [v["variant_id"] for v in server.api("GET", "/variants").json()]
    assert server.api("GET", f"/reports/{ids['report_id']}/bundle").status_code == 200
    assert server.stop() == 0
    assert _no_wal(data)
    # no extension was looked for, installed or loaded: DuckDB's folder under HOME was never made
    assert not (home / ".duckdb").exists()
