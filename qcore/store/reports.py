"""Saved reports, each reachable by an unguessable id."""

from __future__ import annotations

import secrets
from typing import Any

import pandas as pd

from qcore.qtyping import QlabError
from qcore.store.actor import ACTOR
from qcore.store.base import StoreBase, dump_json, load_json


class ReportRows(StoreBase):
    """Saved reports; an id is the unguessable token of a `?report=` link."""

    def save_report(self, title: str, notes: str, content: dict[str, Any]) -> str:
        """Stores a report; returns its id, an unguessable short token used in `?report=<id>`."""
        if not title.strip():
            raise QlabError("a report needs a title")
        report_id = secrets.token_urlsafe(8)
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO reports (id, title, notes, content, created_by) VALUES (?, ?, ?, ?, ?)",
                [report_id, title.strip(), notes, dump_json(content), ACTOR.get()],
            )
        return report_id

    def report(self, report_id: str) -> dict[str, Any]:
        df = self.query("SELECT * FROM reports WHERE id = ?", [report_id])
        if df.empty:
            raise QlabError(f"no report with id {report_id!r}")
        row = dict(df.iloc[0])
        row["content"] = load_json(row["content"])
        return row

    def reports(self) -> pd.DataFrame:
        return self.query("SELECT id, title, created_by, created_at FROM reports ORDER BY created_at DESC")
