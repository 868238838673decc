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
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from dashboard.services.children import (
    ENV_AGENT,
    REPO_ROOT,
    child_env,
    die_with_parent,
    import_root,
    python_command,
    stop,
)
from dashboard.services.sign_in import (
    DEFAULT_HOST,
    ENV_ADMIN_TOKEN,
    ENV_SECRETS,
    check_admin_token,
    check_bind,
)
from qcore.qtyping import QlabError
from qcore.store.files import disk_words

APP = REPO_ROOT / "dashboard" / "asgi.py"
DEFAULT_PORT = 8501

log = logging.getLogger("qlab.serve")


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
    # refused before anything is created or started: one line, no traceback
    host = os.environ.get("QLAB_HOST") or DEFAULT_HOST
    try:
        check_bind(host)
        check_admin_token(os.environ.get(ENV_ADMIN_TOKEN, ""))
    except QlabError as exc:
        print(f"qlab dashboard: error: {exc}", file=sys.stderr)
        return 2
    # everything the server writes (database, uploads, tokens) is readable by this user only
    os.umask(0o077)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
    except OSError as exc:
        print(f"qlab dashboard: error: {disk_words(exc, data_dir)}", file=sys.stderr)
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
    app = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, preexec_fn=die_with_parent)

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
