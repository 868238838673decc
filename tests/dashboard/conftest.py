"""Fixtures for the dashboard: labs on temporary databases, and AppTest runs of single pages."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.services.lab import Lab, close, lab
from qcore.jobs.contract import DemoParams, JobParams
from qcore.qtyping import JobStatus, LoadedModel

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "app_pages"
# page scripts import TensorFlow-backed modules on first run; later runs take well under a second
PAGE_TIMEOUT_S = 120


@pytest.fixture(autouse=True, scope="session")
def job_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Dask cluster (a worker that imports TensorFlow once) for every lab of the session.

    Labs reach it by QLAB_DASK_SCHEDULER and its TLS files in QLAB_DASK_TLS_*, the way a team server
    reaches its cluster.
    """
    import os

    from qcore.jobs.cluster import ENV_SCHEDULER, ENV_TLS, Cluster, ClusterSettings

    log = tmp_path_factory.mktemp("workers") / "workers.log"
    cluster = Cluster(ClusterSettings(workers=1, memory_limit="4GB", worker_log=str(log)))
    names = (ENV_SCHEDULER, *ENV_TLS)
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update(zip(names, (cluster.address, *(cluster.tls_files or ())), strict=True))
    try:
        yield cluster.address
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        cluster.close()


def point_env(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("QLAB_DB", str(folder / "qlab.duckdb"))
    monkeypatch.setenv("QLAB_DATA_DIR", str(folder))
    monkeypatch.setenv("QLAB_BOOTSTRAP", "0")
    monkeypatch.delenv("QLAB_AGENT_URL", raising=False)
    monkeypatch.delenv("QLAB_AGENT_TOKEN_FILE", raising=False)


def run_job(the_lab: Lab, params: JobParams, timeout: float = 600) -> Any:
    """Submits a job through the lab's runner and waits for it; returns the finished job row."""
    job_id = the_lab.runner.submit(params)
    the_lab.runner.wait(job_id, timeout=timeout)
    return the_lab.store.job(job_id)


@pytest.fixture()
def empty_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """A fresh lab (store, data dir, job runner) as the server process sees it, with no bootstrap."""
    point_env(monkeypatch, tmp_path)
    the_lab = lab()
    try:
        yield the_lab
    finally:
        close(the_lab)


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory: pytest.TempPathFactory, demo: LoadedModel) -> Path:
    """A lab folder holding the demo model converted with float32, int8 and uint8 (timed on the host).

    The session's trained demo .h5 is copied in, so the job does not train it again.
    """
    folder = tmp_path_factory.mktemp("converted-lab")
    (folder / "demo").mkdir()
    shutil.copy(demo.path, folder / "demo" / "demo.h5")
    with pytest.MonkeyPatch.context() as mp:
        point_env(mp, folder)
        job = run_job(lab(), DemoParams(recipes="float32,int8,uint8"))
        assert job.status is JobStatus.DONE, job.error
    return folder


@pytest.fixture()
def converted(converted_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The converted lab, with the environment pointing at it (pages see the same store)."""
    point_env(monkeypatch, converted_dir)
    return lab()


@pytest.fixture()
def page() -> Callable[..., AppTest]:
    """Runs one page script with AppTest: page("compare", query={"report": "x"})."""

    def run(name: str, query: dict[str, str] | None = None) -> AppTest:
        at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=PAGE_TIMEOUT_S)
        for key, value in (query or {}).items():
            at.query_params[key] = value
        return at.run()

    return run


def plotly_specs(at: AppTest) -> list[dict[str, Any]]:
    """The Plotly figures a page rendered, as JSON dicts."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def values(encoded: Any) -> list[Any]:
    """A Plotly array from a figure's JSON: plain lists, or numpy's base64 `{"dtype", "bdata"}` form."""
    if isinstance(encoded, dict) and "bdata" in encoded:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(encoded["bdata"]), dtype=encoded["dtype"]).tolist()
    return list(encoded)


def texts(at: AppTest, kind: str) -> list[str]:
    """The messages of one element kind (error, warning, info, success, caption, markdown)."""
    return [str(el.value) for el in getattr(at, kind)]


@pytest.fixture(autouse=True, scope="session")
def _quiet_cache_warnings() -> None:
    """Job threads clear st.cache_data outside a Streamlit runtime (AppTest has none); that warning is noise."""
    import logging

    logging.getLogger("streamlit.runtime.caching.cache_data_api").addFilter(
        lambda record: "No runtime found" not in record.getMessage())
