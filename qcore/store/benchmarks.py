"""Benchmarks: one timing per row, its metrics as rows, and a board's per-NPU-operation profile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import duckdb
import pandas as pd

from qcore.qtyping import Latency
from qcore.store.base import StoreBase, dump_json, load_json


class BenchmarkRows(StoreBase):
    """Timings of a .tflite on the host or a board, their metrics as rows, and the per-NPU-operation
    rows of a profiled board run."""

    def add_benchmark(
        self,
        latency: Latency,
        *,
        sha256: str,
        board: str = "host",
        variant_id: int | None = None,
    ) -> int:
        """Stores one timing (host or board) as a row plus its metrics as rows."""
        details = dict(latency.extra)
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO benchmarks (variant_id, sha256, board, target, threads, xnnpack, runs, warmup, details)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [variant_id, sha256, board, latency.target, latency.threads, latency.xnnpack, latency.runs,
                 latency.warmup, dump_json(details)],
            ).fetchone()
            assert got is not None
            bench_id = int(got[0])
            metrics = {k: v for k, v in asdict(latency).items() if k.endswith("_ms")}
            if isinstance(details.get("peak_rss_mb"), int | float):
                metrics["peak_rss_mb"] = details["peak_rss_mb"]
            for metric, value in metrics.items():
                if value is not None:
                    cur.execute("INSERT INTO bench_metrics VALUES (?, ?, ?)", [bench_id, metric, float(value)])
            self._insert_npu_ops(cur, bench_id, details)
        return bench_id

    @staticmethod
    def _insert_npu_ops(cur: duckdb.DuckDBPyConnection, bench_id: int, details: dict[str, Any]) -> None:
        """The driver's per-NPU-operation rows of a profiled npu benchmark, one row each."""
        prof = details.get("profile")
        npu = prof.get("npu") if isinstance(prof, dict) else None
        if not isinstance(npu, dict) or not npu.get("available"):
            return
        clock = float(npu.get("clock_mhz") or 0.0)
        for r in npu.get("ops", []):
            cur.execute(
                "INSERT INTO npu_op_profile (benchmark_id, op_index, name, op_type, clock_mhz, cycles_total,"
                " cycles_idle, cycles_busy, time_ms, busy_ms, share, ddr_read_mb, ddr_write_mb, total_read_mb,"
                " total_write_mb, tflite_index, tflite_op, mapping) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?)",
                [bench_id, int(r["index"]), r.get("name"), r.get("type"), clock, r.get("cycles_total"),
                 r.get("cycles_idle"), r.get("cycles_busy"), r.get("time_ms"), r.get("busy_ms"), r.get("share"),
                 r.get("ddr_read_mb"), r.get("ddr_write_mb"), r.get("total_read_mb"), r.get("total_write_mb"),
                 r.get("tflite_index"), r.get("tflite_op"), r.get("mapping") or "none"],
            )

    def benchmarks(self, variant_ids: Sequence[int] | None = None, board: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM v_bench_wide WHERE 1=1"
        params: list[Any] = []
        if variant_ids is not None:
            sql += " AND variant_id IN (SELECT unnest(?::BIGINT[]))"
            params.append(list(variant_ids))
        if board is not None:
            sql += " AND board = ?"
            params.append(board)
        return self.query(sql + " ORDER BY benchmark_id DESC", params)

    def benchmark_details(self, variant_id: int) -> pd.DataFrame:
        """Every timing of a variant with its `details` JSON parsed (per-op profiles live there), newest first."""
        df = self.query(
            "SELECT id AS benchmark_id, board, target, threads, details, created_at FROM benchmarks"
            " WHERE variant_id = ? ORDER BY id DESC",
            [variant_id],
        )
        df["details"] = [(load_json(d) or {}) for d in df["details"]]
        return df

    def npu_ops(self, benchmark_id: int) -> pd.DataFrame:
        """Per-NPU-operation rows of one board benchmark (empty when it had no driver profile)."""
        return self.query("SELECT * FROM npu_op_profile WHERE benchmark_id = ? ORDER BY op_index", [benchmark_id])

    def latest_npu_profile(self, variant_id: int, board: str | None = None) -> pd.DataFrame:
        """The per-NPU-operation rows of the newest profiled npu benchmark of a variant (on `board`)."""
        sql = ("SELECT p.*, b.board FROM npu_op_profile p JOIN benchmarks b ON b.id = p.benchmark_id"
               " WHERE p.benchmark_id = (SELECT max(p2.benchmark_id) FROM npu_op_profile p2"
               " JOIN benchmarks b2 ON b2.id = p2.benchmark_id WHERE b2.variant_id = ?"
               + (" AND b2.board = ?" if board is not None else "") + ") ORDER BY p.op_index")
        return self.query(sql, [variant_id] + ([board] if board is not None else []))
