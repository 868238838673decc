"""The real dashboard server (started like `make dashboard`) and headless Chromium driving it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.services.children import free_port
from qcore.qtyping import LoadedModel

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# the server imports Streamlit and starts the board agent before it answers
SERVER_START_TIMEOUT_S = 90
# `make screenshots` points this at docs/screenshots; a plain test run must not rewrite committed files
SCREENSHOTS = Path(os.environ.get("QLAB_SCREENSHOTS") or Path(tempfile.gettempdir()) / "qlab-e2e-screenshots")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)")
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(skip)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the dashboard did not answer {url} in {SERVER_START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, demo: LoadedModel) -> Iterator[str]:
    """`python -m dashboard.serve` on a free port with a temporary database and data dir; its base URL.

    The session's trained demo .h5 is put where the first start looks for it, so the bootstrap
    converts the demo without training it again.
    """
    data = tmp_path_factory.mktemp("e2e-data")
    (data / "demo").mkdir()
    shutil.copy(demo.path, data / "demo" / "demo.h5")
    port = free_port()
    # the server starts its own embedded cluster, as `make dashboard` does; one worker on a small machine
    # (no quick-lane worker: one more TensorFlow import per server start on 2 cores; tests/qcore/test_job_runner.py
    # covers the quick lane)
    env = dict(os.environ, QLAB_PORT=str(port), QLAB_DATA_DIR=str(data), QLAB_DB=str(data / "qlab.duckdb"),
               QLAB_WORKERS="1", QLAB_QUICK_WORKERS="0")
    env.pop("QLAB_DASK_SCHEDULER", None)
    env.pop("QLAB_BOOTSTRAP", None)
    log = data / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dashboard.serve"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/_stcore/health", proc, log)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Debian Chromium through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def page(browser, server: str) -> Iterator[object]:
    """One browser tab (one Streamlit session) shared by the flow, in step order."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    try:
        yield tab
    finally:
        context.close()
