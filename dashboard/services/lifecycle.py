"""The server's start and stop (the ASGI lifespan): the local board agent, the lab, the admin token."""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from streamlit import config

from dashboard.services import children
from dashboard.services.lab import ENV_AGENT_TOKEN_FILE, ENV_AGENT_URL, Lab, lab
from dashboard.services.sign_in import DEFAULT_HOST, ENV_ADMIN_TOKEN, check_admin_token, check_bind
from qcore import defaults
from qcore.store import accounts

log = logging.getLogger(__name__)



@dataclass
class Running:
    """What the lifespan started and must stop."""

    lab: Lab
    agent: subprocess.Popen[bytes] | None


def current_lab() -> Lab:
    """The server process's lab (opened by `start`, or on first use)."""
    return lab()


async def start() -> Running:
    """Starts the local agent (unless QLAB_AGENT=0), opens the lab and registers QLAB_ADMIN_TOKEN.

    Raises:
        QlabError: for a bind address refused by check_bind or a short QLAB_ADMIN_TOKEN.
    """
    check_bind(str(config.get_option("server.address") or DEFAULT_HOST))
    admin_token = os.environ.get(ENV_ADMIN_TOKEN, "")
    check_admin_token(admin_token)
    agent = None
    if os.environ.get(children.ENV_AGENT, "1") != "0" and not os.environ.get(ENV_AGENT_URL):
        data_dir = defaults.data_dir().resolve()
        token_file = children.ensure_token(data_dir / "agent" / "token")
        # started from this (the event loop's) thread, not a pool thread: the agent gets PR_SET_PDEATHSIG,
        # which fires when the *thread* that forked it exits, and pool threads come and go
        agent, url = children.start_agent(data_dir, token_file)
        if agent is not None:
            os.environ[ENV_AGENT_URL], os.environ[ENV_AGENT_TOKEN_FILE] = url, str(token_file)
            log.info("local board agent at %s", url)
    the_lab = await run_in_threadpool(current_lab)
    if admin_token:
        accounts.register_admin_token(the_lab.store, admin_token)
        log.info("registered QLAB_ADMIN_TOKEN as an admin API token")
    return Running(lab=the_lab, agent=agent)


def stop(running: Running) -> None:
    """Stops the job runner and the local agent, then checkpoints and closes the store, so the next
    start finds no WAL to replay."""
    try:
        running.lab.runner.shutdown()
        children.stop(running.agent)
    finally:
        running.lab.store.close()
