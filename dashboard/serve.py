"""`make dashboard`: the pages and the REST API on one port (dashboard/asgi.py), bound to 127.0.0.1.

The server's lifespan starts the local board agent on loopback and stops it on exit.
Environment: QLAB_DB (default <data>/qlab.duckdb), QLAB_PORT (default 8501), QLAB_DATA_DIR
(default data/), QLAB_HOST (default 127.0.0.1; any other address needs sign-in configured),
QLAB_ADMIN_TOKEN (>= 32 characters: an admin API token for CI), QLAB_ADMINS (a@x,b@y: the admins),
QLAB_SECRETS_FILE (a secrets.toml with [auth], instead of .streamlit/secrets.toml).
The dashboard's server process is the only one that opens the database.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "dashboard" / "asgi.py"
DEFAULT_PORT = 8501
# the agent imports a TFLite runtime before it listens; give it this long to answer /v1/health
AGENT_START_TIMEOUT_S = 30.0
# Linux: deliver SIGTERM to a child when this process dies, even by SIGKILL
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("qlab.serve")


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


# the packages a child needs; only they are put on its import path (see import_root)
PACKAGES = ("qcore", "dashboard", "board_agent")


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


def _die_with_parent() -> None:
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
                                preexec_fn=_die_with_parent)
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
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-agent", action="store_true", help="do not start the local board agent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    data_dir = Path(os.environ.get("QLAB_DATA_DIR") or REPO_ROOT / "data").resolve()
    db = Path(os.environ.get("QLAB_DB") or data_dir / "qlab.duckdb").resolve()
    port_text = os.environ.get("QLAB_PORT") or str(DEFAULT_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        print(f"qlab dashboard: error: QLAB_PORT={port_text!r} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    # everything the server writes (database, uploads, tokens) is readable by this user only
    os.umask(0o077)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)

    from dashboard.services.lifecycle import DEFAULT_HOST, ENV_AGENT, ENV_SECRETS, check_bind
    from qcore.qtyping import QlabError

    host = os.environ.get("QLAB_HOST") or DEFAULT_HOST
    try:
        check_bind(host)
    except QlabError as exc:
        print(f"qlab dashboard: error: {exc}", file=sys.stderr)
        return 2
    root = import_root()
    env = child_env(data_dir, db, root)
    if args.no_agent:
        env[ENV_AGENT] = "0"
    cmd = [*python_command(), "-m", "streamlit", "run", str(APP), "--server.port", port_text,
           "--server.address", host, "--server.headless", "true"]
    if os.environ.get(ENV_SECRETS):
        cmd += ["--secrets.files", os.environ[ENV_SECRETS]]
    shown = "localhost" if host == DEFAULT_HOST else host
    log.info("qlab dashboard and API on http://%s:%s (database %s)", shown, port_text, db)
    app = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, preexec_fn=_die_with_parent)

    def _forward(signum: int, _frame: object) -> None:
        app.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    try:
        code = app.wait()
    finally:
        stop(app)
        shutil.rmtree(root, ignore_errors=True)
    return 0 if code in (0, -signal.SIGTERM) else code


if __name__ == "__main__":
    sys.exit(main())
