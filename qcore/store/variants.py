"""Variants (.tflite files), their NPU verdicts, training history and evaluations."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from qcore.qtyping import Evaluation, NpuVerdict, QlabError, Scoring, VariantStatus
from qcore.store.actor import ACTOR
from qcore.store.base import StoreBase, dump_json, load_json
from qcore.tflite.inspection import npu_verdict

log = logging.getLogger(__name__)


class VariantRows(StoreBase):
    """Variants (one .tflite each, its file a blob), their NPU verdicts, QAT's per-epoch history, and
    every evaluation on the host or a board with its metrics as rows."""

    def save_variant(
        self,
        *,
        model_id: int,
        dataset_id: int | None,
        name: str,
        kind: str,
        recipe: str | None = None,
        settings: dict[str, Any] | None = None,
        status: VariantStatus = VariantStatus.OK,
        error: str = "",
        tflite: bytes | None = None,
        input_dtype: str = "",
        output_dtype: str = "",
        evaluation: Evaluation | None = None,
        parent_variant_id: int | None = None,
        history: Sequence[dict[str, float]] | None = None,
        npu: NpuVerdict | None = None,
        engine: str = "tf",
    ) -> int:
        """Writes a variant, its .tflite blob, its NPU verdict and its host evaluation in one transaction.

        Re-running the same (model, dataset, name) updates that row; evaluations accumulate,
        and views read the latest. A failed variant keeps its error and no half-written metrics.
        The NPU verdict comes with the value (read where the .tflite was made); the store never
        parses a .tflite for it.
        `dataset_id` is None only for an imported .tflite stored before any data was chosen;
        such a variant has no evaluation.

        Returns:
            The variant id.
        """
        sha = path = None
        size = None
        if tflite is not None:
            sha, blob = self.put_blob(tflite)
            path, size = str(blob), len(tflite)
        params = [kind, recipe, dump_json(settings), str(status), error or None, sha, size, path,
                  input_dtype or None, output_dtype or None, parent_variant_id, str(engine)]
        with self.transaction() as cur:
            row = cur.execute(
                "SELECT id FROM variants WHERE model_id = ? AND dataset_id IS NOT DISTINCT FROM ? AND name = ?",
                [model_id, dataset_id, name],
            ).fetchone()
            if row:
                variant_id = int(row[0])
                cur.execute(
                    "UPDATE variants SET kind = ?, recipe = ?, settings = ?, status = ?, error = ?, sha256 = ?,"
                    " size_bytes = ?, path = ?, input_dtype = ?, output_dtype = ?, parent_variant_id = ?,"
                    " engine = ?, updated_at = current_timestamp WHERE id = ?",
                    [*params, variant_id],
                )
            else:
                got = cur.execute(
                    "INSERT INTO variants (model_id, dataset_id, name, kind, recipe, settings, status, error,"
                    " sha256, size_bytes, path, input_dtype, output_dtype, parent_variant_id, engine, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [model_id, dataset_id, name, *params, ACTOR.get()],
                ).fetchone()
                assert got is not None
                variant_id = int(got[0])
            cur.execute("DELETE FROM npu_verdicts WHERE variant_id = ?", [variant_id])
            if npu is not None and tflite is not None:
                _insert_npu(cur, variant_id, npu)
            if evaluation is not None:
                if dataset_id is None:
                    raise QlabError(f"variant {name!r}: an evaluation needs the dataset it was made on")
                self._insert_evaluation(cur, variant_id, dataset_id, "host", evaluation, {})
            if history:
                cur.execute("DELETE FROM training_history WHERE variant_id = ?", [variant_id])
                for epoch, metrics in enumerate(history, start=1):
                    for metric, value in metrics.items():
                        cur.execute(
                            "INSERT INTO training_history VALUES (?, ?, ?, ?)",
                            [variant_id, epoch, metric, float(value)],
                        )
        return variant_id

    @staticmethod
    def _insert_evaluation(
        cur: duckdb.DuckDBPyConnection,
        variant_id: int,
        dataset_id: int,
        device: str,
        ev: Evaluation,
        extra_metrics: dict[str, float | None],
    ) -> int:
        got = cur.execute(
            "INSERT INTO evaluations (variant_id, dataset_id, device, n_samples, batched, note, confusion)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [variant_id, dataset_id, device, ev.n_samples, ev.batched, ev.note or None,
             json.dumps([list(r) for r in ev.confusion])],
        ).fetchone()
        assert got is not None
        eval_id = int(got[0])
        metrics: dict[str, float | None] = {"accuracy": ev.accuracy, "top5": ev.top5, "agreement": ev.agreement}
        if ev.scoring == Scoring.OUTPUTS:  # top-1 does not apply: no accuracy rows at all, not NaN ones
            metrics = {"agreement": ev.agreement}
        metrics.update(ev.output_metrics)
        metrics.update(extra_metrics)
        for metric, value in metrics.items():
            if value is not None:
                cur.execute("INSERT INTO eval_metrics VALUES (?, ?, ?)", [eval_id, metric, float(value)])
        return eval_id

    def add_evaluation(
        self,
        variant_id: int,
        dataset_id: int,
        evaluation: Evaluation,
        device: str = "host",
        extra_metrics: dict[str, float | None] | None = None,
    ) -> int:
        """Stores one more evaluation of a variant (e.g. on a board: device='board:<name>/<target>')."""
        with self.transaction() as cur:
            return self._insert_evaluation(cur, variant_id, dataset_id, device, evaluation, extra_metrics or {})

    def variant(self, variant_id: int) -> dict[str, Any]:
        df = self.query("SELECT * FROM v_variant_summary WHERE variant_id = ?", [variant_id])
        if df.empty:
            raise QlabError(f"no variant with id {variant_id}")
        return dict(df.iloc[0])

    def variant_summary(
        self, model_ids: Sequence[int] | None = None, variant_ids: Sequence[int] | None = None
    ) -> pd.DataFrame:
        """One row per variant with latest accuracy, size and latency (the /compare table)."""
        sql = "SELECT * FROM v_variant_summary"
        clauses, params = [], []
        if model_ids is not None:
            clauses.append("model_id IN (SELECT unnest(?::BIGINT[]))")
            params.append(list(model_ids))
        if variant_ids is not None:
            clauses.append("variant_id IN (SELECT unnest(?::BIGINT[]))")
            params.append(list(variant_ids))
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return self.query(sql + " ORDER BY model_id DESC, variant_id", params)

    def evaluations(self, variant_id: int) -> pd.DataFrame:
        """Latest evaluation per device for a variant, with the confusion matrix."""
        return self.query(
            "SELECT w.*, e.confusion FROM v_eval_wide w JOIN evaluations e ON e.id = w.evaluation_id"
            " WHERE w.variant_id = ? ORDER BY w.device",
            [variant_id],
        )

    def confusion(self, variant_id: int, device: str = "host") -> list[list[int]] | None:
        row = self._one(
            "SELECT confusion FROM v_latest_eval WHERE variant_id = ? AND device = ?", [variant_id, device]
        )
        return None if row is None or row[0] is None else load_json(row[0])

    def training_history(self, variant_id: int) -> pd.DataFrame:
        """Per-epoch metrics of a QAT variant, one column per metric."""
        long = self.query(
            "SELECT epoch, metric, value FROM training_history WHERE variant_id = ? ORDER BY epoch", [variant_id]
        )
        if long.empty:
            return pd.DataFrame(columns=["epoch"])
        return long.pivot(index="epoch", columns="metric", values="value").reset_index().rename_axis(None, axis=1)

    def device_evaluations(self, variant_ids: Sequence[int]) -> pd.DataFrame:
        """Latest evaluation per (variant, device), host and boards: the accuracy-drift table."""
        return self.query(
            "SELECT variant_id, device, n_samples, accuracy, top5, agreement, host_agreement FROM v_eval_wide"
            " WHERE variant_id IN (SELECT unnest(?::BIGINT[])) ORDER BY variant_id, device",
            [list(variant_ids)],
        )

    def latest_evaluation_id(self, variant_id: int, device: str) -> int | None:
        row = self._one("SELECT max(id) FROM evaluations WHERE variant_id = ? AND device = ?", [variant_id, device])
        return None if row is None or row[0] is None else int(row[0])

    def free_variant_name(self, model_id: int, dataset_id: int, name: str, settings: dict[str, Any]) -> str:
        """`name`, unless a variant of that name keeps other layers float: then `name` with a short tag."""
        same = self.query(
            "SELECT settings FROM variants WHERE model_id = ? AND dataset_id = ? AND name = ?",
            [model_id, dataset_id, name],
        )
        if same.empty:
            return name

        def key(s: dict[str, Any]) -> str:
            return json.dumps([sorted(s.get("denylisted_nodes") or []), sorted(s.get("denylisted_ops") or []),
                               s.get("recipe")])

        stored = same["settings"].iloc[0]
        if isinstance(stored, str) and key(json.loads(stored)) == key(settings):
            return name  # the same choice again: re-running updates that variant
        return f"{name} #{hashlib.sha1(key(settings).encode()).hexdigest()[:4]}"

    def variant_id_for_sha(self, sha256: str) -> int | None:
        row = self._one("SELECT max(id) FROM variants WHERE sha256 = ?", [sha256])
        return None if row is None or row[0] is None else int(row[0])

    def needs_npu_backfill(self) -> bool:
        """Whether a stored .tflite has no NPU verdict yet (a store from before migration 0011)."""
        row = self._one(
            "SELECT count(*) FROM variants v LEFT JOIN npu_verdicts n ON n.variant_id = v.id"
            " WHERE n.variant_id IS NULL AND v.status = 'ok' AND v.path IS NOT NULL"
        )
        return bool(row and row[0])

    def backfill_npu(self) -> int:
        """Reads the NPU verdict of stored variants saved before verdicts existed; returns how many.

        Pure flatbuffer reading (no interpreter); a job runs it, never a page.
        """
        todo = self.query(
            "SELECT v.id, v.name, v.path FROM variants v LEFT JOIN npu_verdicts n ON n.variant_id = v.id"
            " WHERE n.variant_id IS NULL AND v.status = 'ok' AND v.path IS NOT NULL"
        )
        done = 0
        for r in todo.itertuples():
            p = Path(str(r.path))
            npu = _lint_or_none(p.read_bytes(), str(r.name)) if p.exists() else None
            if npu is not None:
                with self.transaction() as cur:
                    cur.execute("DELETE FROM npu_verdicts WHERE variant_id = ?", [int(r.id)])
                    _insert_npu(cur, int(r.id), npu)
                done += 1
        return done


def _lint_or_none(tflite: bytes, name: str) -> NpuVerdict | None:
    """The NPU verdict of a .tflite about to be stored; None (and a log line) when it cannot be read."""
    try:
        return npu_verdict(tflite)
    except QlabError as exc:
        log.warning("variant %r: no NPU verdict: %s", name, exc)
        return None


def _insert_npu(cur: duckdb.DuckDBPyConnection, variant_id: int, npu: NpuVerdict) -> None:
    cur.execute(
        "INSERT INTO npu_verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [variant_id, npu.ready, npu.n_ops, npu.n_float_ops, npu.quant_ops, json.dumps(dict(npu.float_ops)),
         json.dumps(list(npu.custom_ops)), json.dumps(list(npu.problems)), npu.io, npu.summary, npu.label,
         npu.weight_elements],
    )
