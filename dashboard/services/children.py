"""The server's child processes: Streamlit and the local board agent, each on a private import path, each dying
with its parent."""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# set to 0 to run without the local board agent (`python -m dashboard.serve --no-agent`)
ENV_AGENT = "QLAB_AGENT"
# the agent imports a TFLite runtime before it listens; give it this long to answer /v1/health
AGENT_START_TIMEOUT_S = 30.0
# Linux: deliver SIGTERM to a child when this process dies, even by SIGKILL
_PR_SET_PDEATHSIG = 1
# the packages a child needs; only they are put on its import path (see import_root)
PACKAGES = ("qcore", "dashboard", "board_agent")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_token(path: Path) -> Path:
    """Creates a random agent token readable only by this user, once; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path


def python_command() -> list[str]:
    """The interpreter for children: `-P` keeps the working directory (the repo, holding data/)
    off sys.path, so nothing under the data directory can ever be imported by name."""
    return [sys.executable, "-P"]


def import_root() -> Path:
    """A fresh private directory holding only links to qlab's packages: the children's PYTHONPATH.

    Putting the repo itself there would make `data/` (the default data dir, with uploads) an
    importable namespace package, and a model config may name any module.
    """
    root = Path(tempfile.mkdtemp(prefix="qlab-import-"))
    for name in PACKAGES:
        (root / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    return root


def child_env(data_dir: Path, db: Path, root: Path | None = None) -> dict[str, str]:
    """The environment of the Streamlit and agent children (no repo or data dir on PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(QLAB_DATA_DIR=str(data_dir), QLAB_DB=str(db), PYTHONSAFEPATH="1")
    if root is not None:
        env["PYTHONPATH"] = str(root)
    return env


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGTERM when the thread that started it ends (Linux; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_agent(data_dir: Path, token_file: Path,
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Starts `python -m board_agent` on a free loopback port; returns (process, url), or (None, '')."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir = data_dir / "agent"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [*python_command(), "-m", "board_agent", "--host", "127.0.0.1", "--port", str(port),
           "--token-file", str(token_file), "--workdir", str(workdir)]
    logfile = (workdir / "agent.log").open("ab")
    try:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=die_with_parent)
    except OSError as exc:
        log.warning("could not start the local board agent: %s", exc)
        return None, ""
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.warning("the local board agent exited with code %s; see %s", proc.returncode,
                        workdir / "agent.log")
            return None, ""
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    log.warning("the local board agent did not answer within %.0f s; going on without it",
                AGENT_START_TIMEOUT_S)
    stop(proc)
    return None, ""


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Terminates a child and waits for it; kills it after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
