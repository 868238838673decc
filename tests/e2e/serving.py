"""Starts `python -m dashboard.serve` (what `make dashboard` runs) for a test, on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dashboard.services.children import free_port

REPO = Path(__file__).resolve().parents[2]
# the server imports Streamlit and starts the board agent before it answers
START_TIMEOUT_S = 90
# a CI token for tests: QLAB_ADMIN_TOKEN needs at least 32 characters
ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123"


@contextmanager
def running_server(data: Path, *, bootstrap: bool = False, **env: str) -> Iterator[str]:
    """The dashboard server on a temp data dir; yields its base URL and stops it after.

    Args:
        data: the data directory (its qlab.duckdb may be prepared before).
        bootstrap: run the first-start demo job.
        env: extra environment (QLAB_ADMIN_TOKEN is set to ADMIN_TOKEN unless given).
    """
    port = int(env.get("QLAB_PORT") or free_port())
    full = dict(os.environ, QLAB_PORT=str(port), QLAB_DATA_DIR=str(data), QLAB_DB=str(data / "qlab.duckdb"),
                QLAB_BOOTSTRAP="1" if bootstrap else "0", QLAB_ADMIN_TOKEN=ADMIN_TOKEN, QLAB_QUICK_WORKERS="0")
    for key in ("QLAB_HOST", "QLAB_SERVER", "QLAB_TOKEN", "QLAB_SECRETS_FILE", "QLAB_ADMINS"):
        full.pop(key, None)
    full.update(env)
    log = data / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dashboard.serve"], cwd=REPO, env=full, stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/v1/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer in {START_TIMEOUT_S} s") from None
                time.sleep(0.3)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def qlab(server: str, *argv: str, token: str = ADMIN_TOKEN) -> tuple[int, Any, str]:
    """Runs `qlab --server URL ... --json` as CI would; returns (exit code, parsed stdout, stderr)."""
    env = dict(os.environ, QLAB_TOKEN=token)
    env.pop("QLAB_SERVER", None)
    out = subprocess.run([sys.executable, "-m", "qcore.cli", "--server", server, *argv, "--json"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else None, out.stderr
