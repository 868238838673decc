"""Schemathesis against /api/v1/openapi.json with the admin token: no 5xx, every answer conforms to the schema."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.serving import ADMIN_TOKEN, running_server

pytestmark = pytest.mark.slow
# a bounded run for make test; bench/api_fuzz.py runs without a limit
MAX_EXAMPLES = 8
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def schemathesis(base: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`schemathesis run` on the server's schema with the admin token (seeded, no example database)."""
    schemathesis_cli = Path(sys.executable).with_name("schemathesis")
    # schemathesis keeps a .schemathesis/ folder in its working directory: not in the repo
    with tempfile.TemporaryDirectory(prefix="qlab-schemathesis-") as cwd:
        return _run(schemathesis_cli, base, extra, cwd)


def _run(cli: Path, base: str, extra: tuple[str, ...], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cli), "run", f"{base}/api/v1/openapi.json", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
         "--checks", CHECKS, "--generation-database", "none", "--no-color", "--workers", "1",
         "--request-timeout", "60", *extra],
        capture_output=True, text=True, timeout=1200, cwd=cwd)


def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path) -> None:
    with running_server(tmp_path) as base:
        out = schemathesis(base, "--max-examples", str(MAX_EXAMPLES), "--seed", "1",
                           "--phases", "examples,coverage,fuzzing")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
