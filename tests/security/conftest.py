"""Fixtures of the security tests: tiny real models and a real agent process on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.board_agent.harness import build_tiny_models

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """Puts back sys.modules["__main__"] after each test: Streamlit's AppTest replaces it with the page
    script, and a job worker spawned later (multiprocessing spawn re-runs __main__) would then run
    that page and open the test's database."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def agent_models() -> dict[str, bytes]:
    """float32 and int8 8x8 CNNs (and a hanging model), converted once per session."""
    return build_tiny_models()


@dataclass
class AgentProcess:
    """`python -m board_agent` running as its own process on a loopback port."""

    proc: subprocess.Popen[str]
    host: str
    port: int

    def rss_peak_mb(self) -> float:
        """VmHWM of the agent process (its peak resident memory), in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")


@pytest.fixture()
def agent_process(tmp_path: Path) -> Iterator[AgentProcess]:
    """A real agent process (no token, loopback) with a fresh workdir; killed after the test."""
    with start_agent_process(tmp_path / "work") as running:
        yield running


class start_agent_process:  # noqa: N801 - used like a function
    """Starts the agent with extra flags; waits for its 'listening on' line."""

    def __init__(self, workdir: Path, *flags: str) -> None:
        self.workdir, self.flags = workdir, flags

    def __enter__(self) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QLAB_AGENT_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "board_agent", "--host", "127.0.0.1", "--port", "0", "--insecure-no-token",
             "--workdir", str(self.workdir), "--log-level", "WARNING", *self.flags],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("listening on http://"):
                host, port = line.strip().removeprefix("listening on http://").rsplit(":", 1)
                return AgentProcess(self.proc, host, int(port))
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise AssertionError("the agent did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def lie_about_size(data: bytes, entry: str, size: int) -> bytes:
    """The zip `data` with the central directory declaring `size` uncompressed bytes for `entry`."""
    import struct

    out = bytearray(data)
    pos = 0
    while (pos := out.find(b"PK\x01\x02", pos)) >= 0:
        name_len = struct.unpack_from("<H", out, pos + 28)[0]
        name = bytes(out[pos + 46:pos + 46 + name_len]).decode()
        if name == entry:
            struct.pack_into("<I", out, pos + 24, size)
            return bytes(out)
        pos += 4
    raise AssertionError(f"no entry {entry} in the zip")
