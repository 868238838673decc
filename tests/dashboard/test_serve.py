"""`make dashboard` (python -m dashboard.serve) refuses what it cannot run with in one line, before it
starts or creates anything: a short QLAB_ADMIN_TOKEN, a data directory it cannot write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.disk import read_only

REPO = Path(__file__).resolve().parents[2]


def _serve(tmp_path: Path, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, QLAB_DATA_DIR=str(data), QLAB_DB=str(data / "qlab.duckdb"),
                QLAB_SECRETS_FILE=str(tmp_path / "none"), PYTHONPATH=str(REPO), **env)
    for key in ("QLAB_HOST", "QLAB_ADMIN_TOKEN"):
        if key not in env:
            full.pop(key, None)
    return subprocess.run([sys.executable, "-m", "dashboard.serve"], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=60)


def test_serve_short_admin_token_refused_in_one_line(tmp_path: Path) -> None:
    out = _serve(tmp_path, tmp_path / "data", QLAB_ADMIN_TOKEN="too-short")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "qlab dashboard: error: QLAB_ADMIN_TOKEN has 9 characters; it needs at least 32 "
        "(make one with: python -c 'import secrets; print(secrets.token_hex(24))')"]
    assert not (tmp_path / "data").exists()  # nothing was created or started


def test_serve_read_only_data_dir_refused_in_one_line(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    (parent / "keep").write_text("x")
    with read_only(parent):
        out = _serve(tmp_path, parent / "data")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"qlab dashboard: error: cannot write {parent / 'data'}: ")
    assert "read-only" in lines[0] or "permission denied" in lines[0]
