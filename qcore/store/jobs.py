"""Jobs: what was queued, by whom, on which worker, how far it got and what it returned."""

from __future__ import annotations

from typing import Any

import pandas as pd

from qcore.qtyping import Job, JobStatus, QlabError
from qcore.store.actor import ACTOR
from qcore.store.base import StoreBase, dump_json, load_json


class JobRows(StoreBase):
    """Job rows: the owner creates them, follows a worker's progress into them, and ends them."""

    def create_job(self, kind: str, params: dict[str, Any] | None = None) -> int:
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO jobs (kind, status, params, created_by) VALUES (?, 'queued', ?, ?) RETURNING id",
                [kind, dump_json(params or {}), ACTOR.get()],
            ).fetchone()
            assert got is not None
            return int(got[0])

    def update_job(
        self,
        job_id: int,
        *,
        status: JobStatus | None = None,
        progress: float | None = None,
        message: str | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        worker: str | None = None,
        worker_host: str | None = None,
        live: dict[str, Any] | None = None,
        only_active: bool = False,
    ) -> bool:
        """Updates a job row; returns False when nothing changed.

        Args:
            only_active: change the row only while it is queued or running, so a late progress
                event never reopens a job that already ended (failed, cancelled, done).
        """
        sets: list[str] = ["updated_at = current_timestamp"]
        params: list[Any] = []
        if status is not None:
            sets.append("status = ?")
            params.append(str(status))
            if status == JobStatus.RUNNING:
                sets.append("started_at = coalesce(started_at, current_timestamp)")
            elif status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
                sets.append("finished_at = current_timestamp")
        if progress is not None:
            sets.append("progress = ?")
            params.append(min(1.0, max(0.0, float(progress))))
        for column, value in (("message", message), ("error", error), ("worker", worker),
                              ("worker_host", worker_host)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        for column, obj in (("result", result), ("live", live)):
            if obj is not None:
                sets.append(f"{column} = ?")
                params.append(dump_json(obj))
        where = " WHERE id = ?" + (" AND status IN ('queued', 'running')" if only_active else "")
        with self.transaction() as cur:
            got = cur.execute(f"UPDATE jobs SET {', '.join(sets)}{where} RETURNING id", [*params, job_id]).fetchall()
        return bool(got)

    def job(self, job_id: int) -> Job:
        df = self.query("SELECT * FROM jobs WHERE id = ?", [job_id])
        if df.empty:
            raise QlabError(f"no job with id {job_id}")
        return _job_from_row(dict(df.iloc[0]))

    def jobs(self, limit: int = 50, kind: str | None = None, active: bool = False) -> list[Job]:
        """The newest jobs first; `active` keeps only queued and running ones."""
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if active:
            sql += " AND status IN ('queued', 'running')"
        df = self.query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [_job_from_row(dict(r)) for _, r in df.iterrows()]

    def fail_orphaned_jobs(self, reason: str = "the server restarted while this job ran") -> int:
        """Marks queued/running jobs failed; called once when the owner process starts."""
        with self.transaction() as cur:
            got = cur.execute(
                "UPDATE jobs SET status = 'failed', error = ?, updated_at = current_timestamp,"
                " finished_at = current_timestamp WHERE status IN ('queued', 'running') RETURNING id",
                [reason],
            ).fetchall()
        return len(got)


def _job_from_row(r: dict[str, Any]) -> Job:
    return Job(
        id=int(r["id"]),
        kind=str(r["kind"]),
        status=JobStatus(r["status"]),
        progress=float(r["progress"]),
        message=str(r["message"] or ""),
        params=load_json(r["params"]) or {},
        result=load_json(r["result"]),
        error=str(r["error"] or ""),
        created_at=str(r["created_at"]),
        updated_at=str(r["updated_at"]),
        worker=str(r.get("worker") or ""),
        worker_host=str(r.get("worker_host") or ""),
        started_at=_text(r.get("started_at")),
        finished_at=_text(r.get("finished_at")),
        live=load_json(r.get("live")),
        created_by=None if pd.isna(r.get("created_by")) else str(r.get("created_by")),
    )


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) or str(value) == "NaT" else str(value)
