"""The owner process's lab: one Store, one job runner (Dask workers), and the first-start bootstrap."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from dashboard.services import reads
from dashboard.services.jobs import ACTIVE, make_runner
from qcore import defaults
from qcore.jobs.contract import DemoParams
from qcore.jobs.runner import JobRunner
from qcore.store import Store

log = logging.getLogger(__name__)

# the board serve.py starts beside the dashboard
LOCAL_BOARD = "this machine (CPU only)"
# serve.py passes the local agent to the server process through these
ENV_AGENT_URL = "QLAB_AGENT_URL"
ENV_AGENT_TOKEN_FILE = "QLAB_AGENT_TOKEN_FILE"
# set to 0 to start on an empty store (tests, benchmarks)
ENV_BOOTSTRAP = "QLAB_BOOTSTRAP"


@dataclass(frozen=True)
class Lab:
    """What every page works with: the store, the data dir and the job runner."""

    store: Store
    data_dir: Path
    runner: JobRunner

    @property
    def db_key(self) -> str:
        """The key cached reads are stored under (one per database file)."""
        return str(self.store.path)


def lab() -> Lab:
    """The lab of this server process, created on first use (from QLAB_DB / QLAB_DATA_DIR)."""
    return _lab(str(defaults.db_path().resolve()), str(defaults.data_dir().resolve()))


@st.cache_resource(show_spinner=False)
def _lab(db_path: str, data_dir: str) -> Lab:
    store = Store(db_path)
    reads.register(store)
    orphans = store.fail_orphaned_jobs()
    if orphans:
        log.warning("marked %d unfinished job(s) of a previous server failed", orphans)
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    runner = make_runner(store, folder, on_change=reads.clear)
    the_lab = Lab(store=store, data_dir=folder, runner=runner)
    bootstrap(the_lab)
    return the_lab


def bootstrap(the_lab: Lab) -> None:
    """First start: register the local agent, and the demo model with all recipes if the store is empty."""
    register_local_agent(the_lab)
    if os.environ.get(ENV_BOOTSTRAP, "1") == "0":
        return
    store = the_lab.store
    if store.models().empty and not any(j.status in ACTIVE for j in store.jobs(kind="demo")):
        job_id = the_lab.runner.submit(DemoParams(recipes="all"))
        log.info("empty store: queued job %d to build the demo model and convert all recipes", job_id)


def register_local_agent(the_lab: Lab) -> bool:
    """Points the board "this machine (CPU only)" at the agent serve.py started (its port changes per start)."""
    url = os.environ.get(ENV_AGENT_URL, "")
    token_file = os.environ.get(ENV_AGENT_TOKEN_FILE, "")
    if not url:
        return False
    token = Path(token_file).read_text().strip() if token_file and Path(token_file).exists() else None
    the_lab.store.add_board(LOCAL_BOARD, url, token)
    reads.clear()
    return True


def close(the_lab: Lab) -> None:
    """Stops a lab's workers, closes its store and forgets it (tests and scripts; a server never closes)."""
    the_lab.runner.shutdown()
    the_lab.store.close()
    _lab.clear(str(the_lab.store.path), str(the_lab.data_dir))
