"""Cluster settings: where jobs run, and the one-line refusals of a cluster anyone could use."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcore.jobs.cluster import ClusterSettings, check_scheduler
from qcore.qtyping import QlabError


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "tcp://lab.example:8786", "tcp://0.0.0.0:8786"])
def test_check_scheduler_refuses_plain_tcp_beyond_this_machine(address: str) -> None:
    with pytest.raises(QlabError, match=r"is plain TCP beyond this machine.*use tls:// with QLAB_DASK_TLS_CA"):
        check_scheduler(address, None)


def test_check_scheduler_takes_loopback_tcp_and_tls_with_credentials(tmp_path: Path) -> None:
    check_scheduler("tcp://127.0.0.1:8786", None)
    check_scheduler("tcp://localhost:8786", None)
    check_scheduler("tls://10.0.0.5:8786", ("ca.pem", "cert.pem", "key.pem"))


def test_check_scheduler_refuses_tls_without_credentials_and_other_schemes() -> None:
    with pytest.raises(QlabError, match="needs credentials: set QLAB_DASK_TLS_CA"):
        check_scheduler("tls://10.0.0.5:8786", None)
    with pytest.raises(QlabError, match="must be an address like tls://host:8786"):
        check_scheduler("ws://10.0.0.5:8786", None)


def test_from_env_reads_tls_files_all_or_none(tmp_path: Path) -> None:
    files = []
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
        files.append(str(tmp_path / name))
    env = {"QLAB_DASK_SCHEDULER": "tls://10.0.0.5:8786", "QLAB_DASK_TLS_CA": files[0],
           "QLAB_DASK_TLS_CERT": files[1], "QLAB_DASK_TLS_KEY": files[2]}
    assert ClusterSettings.from_env(env).tls_files == tuple(files)
    with pytest.raises(QlabError, match="QLAB_DASK_TLS_KEY is not set"):
        ClusterSettings.from_env({**env, "QLAB_DASK_TLS_KEY": ""})
    with pytest.raises(QlabError, match="QLAB_DASK_TLS_CA=/nope: no such readable file"):
        ClusterSettings.from_env({**env, "QLAB_DASK_TLS_CA": "/nope"})
    with pytest.raises(QlabError, match="is plain TCP beyond this machine"):
        ClusterSettings.from_env({"QLAB_DASK_SCHEDULER": "tcp://10.0.0.5:8786"})


def test_from_env_quick_workers() -> None:
    assert ClusterSettings.from_env({}).quick_workers == 1  # the server's default: one quick lane
    assert ClusterSettings.from_env({"QLAB_QUICK_WORKERS": "0"}).quick_workers == 0
    with pytest.raises(QlabError, match="QLAB_QUICK_WORKERS='many' must be a whole number"):
        ClusterSettings.from_env({"QLAB_QUICK_WORKERS": "many"})
