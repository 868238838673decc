"""The lab restarts and backs up: the real server stopped with SIGTERM on a fresh lab, backed up while a job
runs on a used one, killed with -9 mid-job, started again with no network and nothing installed; and the
backup restored into a fresh data dir, served, with everything it held."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from qcore.qtyping import LoadedModel
from qcore.store import Store
from tests.disk import fill, small_disk
from tests.e2e.lab_server import LabServer, use_lab
from tests.e2e.serving import ADMIN_TOKEN, REPO

pytestmark = pytest.mark.slow

RESTARTED = "the server restarted while this job ran"


@pytest.fixture()
def servers() -> Iterator[list[LabServer]]:
    """The servers a test starts; any still running when it ends (a failed assertion) is killed with its group."""
    started: list[LabServer] = []
    yield started
    for server in started:
        server.kill()


def _no_wal(data: Path) -> bool:
    return not (data / "qlab.duckdb.wal").exists()


def _qlab(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO), QLAB_TOKEN=ADMIN_TOKEN, **env)
    full.pop("QLAB_SERVER", None)
    return subprocess.run([sys.executable, "-m", "qcore.cli", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=300)


def test_lab_restarts_offline_and_its_backup_restores_elsewhere(tmp_path: Path, demo: LoadedModel,
                                                                servers: list[LabServer]) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    (data / "demo").mkdir(parents=True)
    home.mkdir()
    shutil.copy(demo.path, data / "demo" / "demo.h5")  # the session's trained demo: nothing trains again
    server = LabServer(data, home)
    servers.append(server)

    # a fresh lab: start, SIGTERM (Ctrl-C, systemd), start again later
    server.start()
    assert server.stop() == 0
    assert _no_wal(data), "the server left its schema in the WAL: the next start must replay it"

    # used in between (the CLI on that machine), then served again, with a conversion in flight
    ids = use_lab(data)
    server.start()
    job = server.api("POST", "/jobs", json={"kind": "convert", "params": {
        "model_id": ids["model_id"], "dataset_id": ids["dataset_id"], "recipes": ["all"]}}).json()
    server.wait_job(job["id"], until=("running", "done", "failed"))

    # back it up through the server while the job runs; a restore onto the served lab is refused
    out = _qlab("--server", server.base, "backup", str(tmp_path / "backup"), "--json")
    assert out.returncode == 0, out.stderr
    out = _qlab("restore", str(tmp_path / "backup"), "--db", str(data / "qlab.duckdb"), "--force")
    assert out.returncode == 2 and "stop it before restoring" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr

    server.kill()  # kill -9 of the server, its workers and its agent, mid-job
    server.start()
    ended = server.api("GET", f"/jobs/{job['id']}").json()
    if ended["status"] != "done":  # a loaded machine may finish it before the kill lands
        assert (ended["status"], ended["error"]) == ("failed", RESTARTED)
    assert [m["id"] for m in server.api("GET", "/models").json()] == [ids["model_id"]]
    assert ids["variant_id"] in [v["variant_id"] for v in server.api("GET", "/variants").json()]
    assert server.stop() == 0
    assert _no_wal(data)

    # the backup, restored into a fresh data dir (on a small disk of its own, where mounting is allowed)
    with ExitStack() as stack:
        fresh = tmp_path / "fresh"
        try:
            stack.enter_context(small_disk(fresh, size_mb=128))
        except pytest.skip.Exception:
            pass  # no mount here: the disk-full part below is skipped, the rest runs
        full_disk = os.path.ismount(fresh)
        out = _qlab("restore", str(tmp_path / "backup"), "--json", QLAB_DATA_DIR=str(fresh),
                    QLAB_DB=str(fresh / "qlab.duckdb"))
        assert out.returncode == 0, out.stderr
        restored = LabServer(fresh, home)
        servers.append(restored)
        restored.start()
        try:
            assert [m["id"] for m in restored.api("GET", "/models").json()] == [ids["model_id"]]
            variant = restored.api("GET", f"/variants/{ids['variant_id']}/tflite")
            assert variant.status_code == 200 and variant.content[4:8] == b"TFL3"
            assert restored.api("GET", f"/reports/{ids['report_id']}/bundle").status_code == 200
            in_flight = restored.api("GET", f"/jobs/{job['id']}").json()
            assert in_flight["status"] in ("done", "failed") and in_flight["error"] in ("", RESTARTED)
            if full_disk:  # the disk fills up under the running server: JSON errors in words, not a bare 500
                ballast = fill(fresh)
                # more than the free tail of the WAL's last page, which a full disk still takes
                report = {"title": "on a full disk", "variant_ids": [ids["variant_id"]], "notes": "n" * 200_000}
                refused = [restored.api("POST", "/reports", json=report),
                           restored.api("POST", "/models", files={"file": ("m.h5", (data / "demo" / "demo.h5").read_bytes())})]
                for r in refused:
                    assert r.status_code == 507 and "the disk is full" in r.json()["error"], r.text
                ballast.unlink()
                assert restored.api("POST", "/reports", json=report).status_code == 201
        finally:
            assert restored.stop() == 0
        with Store(fresh / "qlab.duckdb") as store:  # before the small disk goes away
            assert store.board_token("evk") == ("http://127.0.0.1:9", "board-secret-token")
            assert all(str(p).startswith(str(fresh)) for p in store.query("SELECT path FROM variants")["path"].dropna())
    # no extension was looked for, installed or loaded: DuckDB's folder under HOME was never made
    assert not (home / ".duckdb").exists()
