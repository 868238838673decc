"""Boards and the farm: registrations (tokens in files), labels and pools, health history, runs and cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from qcore.qtyping import Board, MatrixCell, QlabError
from qcore.store.base import StoreBase, dump_json
from qcore.store.files import board_token_path, write_board_token

# label keys of a board; soc, bsp and runtime are also derived from its agent's health
BOARD_LABEL_KEYS: tuple[str, ...] = ("soc", "bsp", "runtime", "tag")
# health checks kept per board
HEALTH_HISTORY_KEEP = 200


class BoardRows(StoreBase):
    """Registered boards (their tokens in 0600 files, never in the database), labels and pool queries,
    health history, and board runs with one row per (variant, target, board) cell."""

    def add_board(self, name: str, url: str, token: str | None) -> None:
        """Registers (or re-points) a board. The token goes to its own 0600 file, never into the database."""
        if not name.strip():
            raise QlabError("board name must not be empty")
        if not url.startswith(("http://", "https://")):
            raise QlabError(f"board URL {url!r} must start with http:// or https://")
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO boards (name, url, token) VALUES (?, ?, NULL) ON CONFLICT (name) DO UPDATE SET"
                " url = excluded.url, token = NULL",
                [name, url.rstrip("/")],
            )
            write_board_token(self.token_dir, name, token)

    def boards(self) -> list[Board]:
        df = self.query("SELECT name, url, created_at FROM boards ORDER BY name")
        return [Board(r["name"], r["url"], board_token_path(self.token_dir, r["name"]).exists(), str(r["created_at"]))
                for _, r in df.iterrows()]

    def board_token(self, name: str) -> tuple[str, str | None]:
        """(url, token) of a registered board, for the client only."""
        row = self._one("SELECT url FROM boards WHERE name = ?", [name])
        if row is None:
            known = ", ".join(b.name for b in self.boards()) or "none"
            raise QlabError(f"no board named {name!r} (known: {known}); add it with `qlab board add`")
        try:
            token = board_token_path(self.token_dir, name).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            token = None
        return str(row[0]), token

    def remove_board(self, name: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM boards WHERE name = ?", [name])
            cur.execute("DELETE FROM board_labels WHERE board = ?", [name])
            board_token_path(self.token_dir, name).unlink(missing_ok=True)

    def set_board_labels(self, board: str, labels: Sequence[tuple[str, str]], *, remove: bool = False) -> None:
        """Adds (or with remove=True drops) the user's labels of a board, e.g. [("tag", "lab-2")].

        Raises:
            QlabError: unknown board, unknown key or an empty value (naming it).
        """
        self.board_token(board)  # raises for an unknown board
        for key, value in labels:
            if key not in BOARD_LABEL_KEYS:
                raise QlabError(f"label key {key!r} is not one of {', '.join(BOARD_LABEL_KEYS)}")
            if not value.strip():
                raise QlabError(f"label {key}= needs a value")
        with self.transaction() as cur:
            for key, value in labels:
                cur.execute("DELETE FROM board_labels WHERE board = ? AND key = ? AND value = ?",
                            [board, key, value.strip()])
                if not remove:
                    cur.execute("INSERT INTO board_labels (board, key, value, source) VALUES (?, ?, ?, 'user')",
                                [board, key, value.strip()])

    def sync_health_labels(self, board: str, derived: dict[str, str]) -> None:
        """Replaces the labels taken from a board's health (soc, bsp, runtime); the user's stay and win."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM board_labels WHERE board = ? AND source = 'health'", [board])
            user_keys = {r[0] for r in cur.execute(
                "SELECT DISTINCT key FROM board_labels WHERE board = ? AND source = 'user'", [board]).fetchall()}
            for key, value in derived.items():
                if key in BOARD_LABEL_KEYS and key not in user_keys and value.strip():
                    cur.execute("INSERT INTO board_labels (board, key, value, source) VALUES (?, ?, ?, 'health')"
                                " ON CONFLICT DO NOTHING", [board, key, value.strip()])

    def board_labels(self, board: str | None = None) -> pd.DataFrame:
        """Labels as rows (board, key, value, source)."""
        sql = "SELECT board, key, value, source FROM board_labels"
        params: list[Any] = []
        if board is not None:
            sql += " WHERE board = ?"
            params.append(board)
        return self.query(sql + " ORDER BY board, key, value", params)

    def boards_matching(self, pool: str) -> list[str]:
        """Registered boards whose labels satisfy a pool query, by name.

        A query is terms joined by commas or spaces, all of which must hold: `key=value` (e.g.
        `soc=imx8mp`, `tag=lab`), a bare value matching any label or the board's name, or `*`.

        Raises:
            QlabError: an empty query, or a term with an unknown key.
        """
        terms = [t for t in pool.replace(",", " ").split() if t]
        if not terms:
            raise QlabError("empty pool query; e.g. 'imx8mp', 'soc=imx8mp tag=lab' or '*'")
        labels = self.board_labels()
        names = [b.name for b in self.boards()]
        by_board: dict[str, set[tuple[str, str]]] = {n: set() for n in names}
        for r in labels.itertuples(index=False):
            by_board.setdefault(str(r.board), set()).add((str(r.key), str(r.value)))
        out = []
        for name in names:
            have = by_board.get(name, set())
            ok = True
            for term in terms:
                if term == "*":
                    continue
                key, sep, value = term.partition("=")
                if sep:
                    if key not in BOARD_LABEL_KEYS:
                        raise QlabError(f"pool term {term!r}: key {key!r} is not one of {', '.join(BOARD_LABEL_KEYS)}")
                    ok = ok and (key, value) in have
                else:
                    ok = ok and (term == name or any(v == term for _, v in have))
            if ok:
                out.append(name)
        return out

    def log_health(self, board: str, *, reachable: bool, health: dict[str, Any] | None, error: str = "",
                   keep: int = HEALTH_HISTORY_KEEP) -> None:
        """Appends one health check of a board and keeps its last `keep` checks."""
        info = health or {}
        rt = info.get("runtime")
        runtime = f"{rt.get('name') or ''} {rt.get('version') or ''}".strip() if isinstance(rt, dict) else None
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO board_health_log (board, reachable, runtime, targets, queue_depth, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [board, reachable, runtime or None, dump_json(info.get("targets")), info.get("queue_depth"), error],
            )
            cur.execute(
                "DELETE FROM board_health_log WHERE board = ? AND id NOT IN"
                " (SELECT id FROM board_health_log WHERE board = ? ORDER BY id DESC LIMIT ?)",
                [board, board, keep],
            )

    def health_history(self, board: str | None = None, limit: int = 20) -> pd.DataFrame:
        """The last `limit` health checks per board, newest first."""
        sql = ("SELECT board, checked_at, reachable, runtime, targets, queue_depth, error FROM ("
               " SELECT *, row_number() OVER (PARTITION BY board ORDER BY id DESC) AS rn FROM board_health_log"
               + (" WHERE board = ?" if board is not None else "") + ") WHERE rn <= ? ORDER BY board, rn")
        return self.query(sql, ([board] if board is not None else []) + [limit])

    def create_board_run(self, kind: str, placement: str, pool: str, params: dict[str, Any]) -> int:
        with self.transaction() as cur:
            got = cur.execute("INSERT INTO board_runs (kind, placement, pool, params) VALUES (?, ?, ?, ?)"
                              " RETURNING id", [kind, placement, pool, dump_json(params)]).fetchone()
        assert got is not None
        return int(got[0])

    def save_cell(self, run_id: int, cell: MatrixCell) -> None:
        """Stores one finished cell of a run (replacing an earlier record of the same cell)."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM board_cells WHERE run_id = ? AND cell = ?", [run_id, cell.cell])
            cur.execute(
                "INSERT INTO board_cells (run_id, cell, variant_id, sha256, target, board, status, reason, attempts,"
                " benchmark_id, evaluation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, cell.cell, cell.variant_id, cell.sha256, cell.target, cell.board or None, str(cell.status),
                 cell.reason, dump_json(list(cell.attempts)), cell.benchmark_id, cell.evaluation_id],
            )

    def board_runs(self, limit: int = 20) -> pd.DataFrame:
        """Board runs, newest first, with their cell counts."""
        return self.query(
            "SELECT r.id AS run_id, r.kind, r.placement, r.pool, r.created_at,"
            " count(c.cell) AS cells, count(c.cell) FILTER (WHERE c.status = 'failed') AS failed"
            " FROM board_runs r LEFT JOIN board_cells c ON c.run_id = r.id GROUP BY ALL ORDER BY r.id DESC LIMIT ?",
            [limit])

    def board_cells(self, run_id: int) -> pd.DataFrame:
        """The cells of a run with their p50 (benchmarks) or accuracy (evaluations), in cell order."""
        return self.query(
            "SELECT c.*, b.p50_ms, b.min_ms, b.mean_ms, e.accuracy FROM board_cells c"
            " LEFT JOIN v_bench_wide b ON b.benchmark_id = c.benchmark_id"
            " LEFT JOIN (SELECT evaluation_id, value AS accuracy FROM eval_metrics WHERE metric = 'accuracy') e"
            "   ON e.evaluation_id = c.evaluation_id"
            " WHERE c.run_id = ? ORDER BY c.cell", [run_id])
