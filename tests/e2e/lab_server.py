"""A real `python -m dashboard.serve` a test can stop gently (SIGTERM) or kill (-9, every process it
started), and start again on the same data dir: restarts, backups and disk errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from dashboard.services.children import free_port
from tests.e2e.serving import ADMIN_TOKEN, REPO, START_TIMEOUT_S

# a job or a server stop on a loaded 2-core machine
WAIT_S = 240


class LabServer:
    """One server process group on `data`, started with `HOME` at `home` (DuckDB's extension folder
    lives under it, so a test sees whether anything was installed) and the test's admin token."""

    def __init__(self, data: Path, home: Path, **env: str) -> None:
        self.data, self.home, self.env = data, home, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.starts = 0

    def start(self, bootstrap: bool = False) -> str:
        """Starts the server (a new process group) and waits for its health; returns the base URL."""
        port = free_port()
        env = dict(os.environ, QLAB_PORT=str(port), QLAB_DATA_DIR=str(self.data),
                   QLAB_DB=str(self.data / "qlab.duckdb"), QLAB_BOOTSTRAP="1" if bootstrap else "0",
                   QLAB_ADMIN_TOKEN=ADMIN_TOKEN, QLAB_WORKERS="1", QLAB_QUICK_WORKERS="0", HOME=str(self.home),
                   PYTHONPATH=str(REPO))
        for key in ("QLAB_HOST", "QLAB_SERVER", "QLAB_TOKEN", "QLAB_SECRETS_FILE", "QLAB_ADMINS",
                    "QLAB_DASK_SCHEDULER"):
            env.pop(key, None)
        env.update(self.env)
        self.starts += 1
        self.log = self.data.parent / f"{self.data.name}-server-{self.starts}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "dashboard.serve"], cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.base}/api/v1/health", timeout=2).status_code == 200:
                    return self.base
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the server did not answer in {START_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C or a service manager does; returns serve.py's exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.kill()

    def kill(self) -> None:
        """kill -9 of every process the server started (its process group), then waits for them to go."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            time.sleep(0.2)
        self.proc = None

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        """An API call with the admin token."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kw.pop("headers", {})}
        return requests.request(method, f"{self.base}/api/v1{path}", headers=headers, timeout=60, **kw)

    def wait_job(self, job_id: int, until: tuple[str, ...] = ("done", "failed", "cancelled")) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            job = self.api("GET", f"/jobs/{job_id}").json()
            if job["status"] in until:
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} never reached {until}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def use_lab(data: Path) -> dict[str, Any]:
    """Makes `data` a used lab, as `qlab` on that machine would (no server holds it): the demo model and
    digits, an int8 variant converted for real, a report of it, a board with a token. Returns their ids."""
    from qcore.cli.local import LocalLab
    from qcore.jobs.contract import ConvertParams
    from qcore.lab.reports import make_report
    from qcore.store import Store

    with Store(data / "qlab.duckdb") as store:
        here = LocalLab(store, data)
        model_id = here.model("demo")
        dataset_id = here.dataset("digits", input_scale=1.0, input_offset=0.0, model_id=model_id)
        result = here.run(ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=("int8",), bench=False))
        variant_id = int(result["variants"][0]["variant_id"])
        report_id = make_report(store, "int8 of the demo", "kept across restarts", [variant_id])
        store.add_board("evk", "http://127.0.0.1:9", "board-secret-token")
    return {"model_id": model_id, "dataset_id": dataset_id, "variant_id": variant_id, "report_id": report_id}
