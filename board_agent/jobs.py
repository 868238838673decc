"""Job records in one JSON file of the workdir: survive restarts, running ones become failed."""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from board_agent import protocol

log = logging.getLogger(__name__)


def new_job_id() -> str:
    """16 hex digits from the OS's CSPRNG: unguessable, and safe as a file name."""
    return secrets.token_hex(8)


class JobStore:
    """Thread-safe job records, rewritten atomically to `path` on every change.

    Args:
        path: the JSON file (created if missing).
        keep: finished records kept; older finished ones are dropped, `on_drop(id)` is called for each.
    """

    def __init__(self, path: str, keep: int = 200, on_drop: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.keep = keep
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            jobs = data.get("jobs", []) if isinstance(data, dict) else []
        except FileNotFoundError:
            jobs = []
        except (OSError, ValueError) as exc:
            broken = f"{self.path}.broken-{int(time.time())}"
            log.warning("job records %s are unreadable (%s); moved to %s", self.path, exc, broken)
            os.replace(self.path, broken)
            jobs = []
        restarted = 0
        for rec in jobs:
            if not isinstance(rec, dict) or not protocol.JOB_ID_RE.match(str(rec.get("id", ""))):
                continue
            if rec.get("status") in (protocol.QUEUED, protocol.RUNNING):
                rec.update(status=protocol.FAILED, error=protocol.RESTARTED_REASON, finished_at=time.time())
                restarted += 1
            self._jobs[rec["id"]] = rec
        if restarted:
            log.warning("%d job(s) were queued or running when the agent stopped; marked failed", restarted)
        self._save()

    def _save(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": protocol.VERSION, "jobs": list(self._jobs.values())}, f)
        os.replace(tmp, self.path)

    def create(self, kind: str, params: dict[str, Any], *, label: str = "", sha256: str = "",
               size_bytes: int = 0) -> dict[str, Any]:
        """A new queued record (its id chosen here)."""
        with self._lock:
            job_id = new_job_id()
            while job_id in self._jobs:
                job_id = new_job_id()
            rec = {"id": job_id, "kind": kind, "status": protocol.QUEUED, "params": params, "label": label,
                   "sha256": sha256, "size_bytes": size_bytes, "created_at": time.time(), "started_at": None,
                   "finished_at": None, "result": None, "error": None}
            self._jobs[job_id] = rec
            self._save()
            return copy.deepcopy(rec)

    def update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            rec = self._jobs[job_id]
            rec.update(changes)
            dropped = self._prune() if rec["status"] in protocol.FINISHED else []
            self._save()
        for old in dropped:
            if self._on_drop is not None:
                self._on_drop(old)

    def discard(self, job_id: str) -> None:
        """Forgets a record that was never accepted (e.g. the queue was full)."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self._save()

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._jobs.get(job_id)
            return copy.deepcopy(rec) if rec is not None else None

    def count(self, status: str) -> int:
        with self._lock:
            return sum(1 for r in self._jobs.values() if r["status"] == status)

    def _prune(self) -> list[str]:
        finished = [r for r in self._jobs.values() if r["status"] in protocol.FINISHED]
        if len(finished) <= self.keep:
            return []
        finished.sort(key=lambda r: r["finished_at"] if r.get("finished_at") is not None else r.get("created_at", 0))
        drop = [r["id"] for r in finished[: len(finished) - self.keep]]
        for job_id in drop:
            del self._jobs[job_id]
        return drop
