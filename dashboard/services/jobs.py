"""The lab's job runner: jobs run on Dask workers (an embedded TLS cluster unless QLAB_DASK_SCHEDULER is set).

The runner itself is `qcore.jobs.runner.JobRunner`; this module only builds it for the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from qcore.jobs.cluster import ClusterSettings
from qcore.jobs.runner import ACTIVE, JobRunner
from qcore.store import Store

__all__ = ["ACTIVE", "make_runner"]


def make_runner(store: Store, data_dir: Path, on_change: Callable[[], None] | None = None) -> JobRunner:
    """A runner on the cluster QLAB_* settings describe, started in the background (jobs wait for it).

    Embedded workers log to `<data>/logs/workers.log`; the embedded cluster's TLS key and certificate are
    made at each start in `<data>/cluster/` (0600).

    Raises:
        QlabError: for a bad QLAB_* value or an unreachable scheduler.
    """
    settings = ClusterSettings.from_env()
    if not settings.scheduler:
        settings = replace(settings, worker_log=str(data_dir / "logs" / "workers.log"),
                           tls_dir=str(data_dir / "cluster"))
    return JobRunner(store, data_dir, settings, on_change=on_change)
