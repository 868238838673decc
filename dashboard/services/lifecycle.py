"""The server's start and stop: the bind-address rule, the local board agent, the lab, the admin token."""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# the address `make dashboard` binds unless told otherwise: this machine only
DEFAULT_HOST = "127.0.0.1"
# set to 0 to run without the local board agent (`python -m dashboard.serve --no-agent`)
ENV_AGENT = "QLAB_AGENT"
ENV_ADMIN_TOKEN = "QLAB_ADMIN_TOKEN"
# a secrets.toml other than the repo's .streamlit/secrets.toml (serve.py passes it to Streamlit)
ENV_SECRETS = "QLAB_SECRETS_FILE"


def secrets_files() -> list[Path]:
    """Where Streamlit reads secrets (and so the [auth] section) for this server."""
    if os.environ.get(ENV_SECRETS):
        return [Path(os.environ[ENV_SECRETS])]
    return [Path.home() / ".streamlit" / "secrets.toml", REPO_ROOT / ".streamlit" / "secrets.toml"]


def sign_in_configured(files: list[Path] | None = None) -> bool:
    """True when a secrets file has an [auth] section st.login can use (a client id, or a provider's)."""
    for path in files if files is not None else secrets_files():
        try:
            auth = tomllib.loads(path.read_text(encoding="utf-8")).get("auth")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        if isinstance(auth, dict) and (auth.get("client_id") or any(
                isinstance(v, dict) and v.get("client_id") for v in auth.values())):
            return True
    return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str) -> None:
    """Refuses to serve beyond this machine without sign-in.

    Raises:
        QlabError: one line, for a non-loopback address while no sign-in is configured.
    """
    if is_loopback(host) or sign_in_configured():
        return
    raise QlabError(f"QLAB_HOST={host} would let anyone who reaches this port upload models and run jobs; "
                    "configure sign-in ([auth] in .streamlit/secrets.toml, see the README) or bind 127.0.0.1")


@dataclass
class Running:
    """What the lifespan started and must stop."""

    lab: object
    agent: subprocess.Popen[bytes] | None


def current_lab():  # type: ignore[no-untyped-def]
    from dashboard.services.lab import lab

    return lab()


async def start() -> Running:
    """Starts the local agent (unless QLAB_AGENT=0), opens the lab and registers QLAB_ADMIN_TOKEN.

    Raises:
        QlabError: for a bind address refused by check_bind or a short QLAB_ADMIN_TOKEN.
    """
    from streamlit import config

    from dashboard import serve
    from dashboard.services.lab import ENV_AGENT_TOKEN_FILE, ENV_AGENT_URL
    from qcore.store import accounts, default_data_dir

    check_bind(str(config.get_option("server.address") or DEFAULT_HOST))
    admin_token = os.environ.get(ENV_ADMIN_TOKEN, "")
    if admin_token and len(admin_token.strip()) < accounts.MIN_ADMIN_TOKEN_CHARS:
        raise QlabError(f"{ENV_ADMIN_TOKEN} needs at least {accounts.MIN_ADMIN_TOKEN_CHARS} characters")
    agent = None
    if os.environ.get(ENV_AGENT, "1") != "0" and not os.environ.get(ENV_AGENT_URL):
        data_dir = default_data_dir().resolve()
        token_file = serve.ensure_token(data_dir / "agent" / "token")
        # started from this (the event loop's) thread, not a pool thread: the agent gets PR_SET_PDEATHSIG,
        # which fires when the *thread* that forked it exits, and pool threads come and go
        agent, url = serve.start_agent(data_dir, token_file)
        if agent is not None:
            os.environ[ENV_AGENT_URL], os.environ[ENV_AGENT_TOKEN_FILE] = url, str(token_file)
            log.info("local board agent at %s", url)
    the_lab = await run_in_threadpool(current_lab)
    if admin_token:
        accounts.register_admin_token(the_lab.store, admin_token)
        log.info("registered QLAB_ADMIN_TOKEN as an admin API token")
    return Running(lab=the_lab, agent=agent)


def stop(running: Running) -> None:
    """Stops the job runner and the local agent."""
    from dashboard import serve

    runner = getattr(running.lab, "runner", None)
    if runner is not None:
        runner.shutdown()
    serve.stop(running.agent)
