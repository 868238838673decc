"""The store's plumbing: the one DuckDB connection, its transactions and reads, migrations at open, blobs."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import duckdb
import pandas as pd

from qcore import defaults
from qcore.qtyping import DiskError, QlabError
from qcore.serialize import to_json
from qcore.store.files import (
    DUCKDB_DISK_MARKERS,
    check_sha256,
    disk_words,
    disk_writes,
    private_dir,
    sha256_bytes,
    write_atomic,
)
from qcore.store.migrations import migrate as run_migrations

log = logging.getLogger(__name__)

# what DuckDB's error says when another process holds the file
LOCK_MARKERS = ("lock", "Conflicting lock", "being used by another process")


# replaying the WAL a dead process left (a killed server, a crashed CLI) makes DuckDB try to download
# the statically linked core_functions extension; offline that fails and the store cannot be opened.
# Every extension qlab uses (json, parquet, icu, core_functions) is built in: nothing is ever installed
# or loaded from disk, so a start never reaches the network or ~/.duckdb/extensions.
CONNECT_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}


def connect(path: Path) -> duckdb.DuckDBPyConnection:
    """Opens the database file. This is qlab's only `duckdb.connect`: connection settings belong here.

    Raises:
        QlabError: when another process holds the file, or DuckDB cannot open it (naming the file).
    """
    try:
        return duckdb.connect(str(path), config=CONNECT_CONFIG)
    except duckdb.IOException as exc:
        text = str(exc)
        if any(marker in text for marker in LOCK_MARKERS):
            raise QlabError(
                f"database {path} is in use by another process (is the dashboard running?); "
                "pass --db PATH (or set QLAB_DB) to use another file"
            ) from None
        for marker, code in DUCKDB_DISK_MARKERS.items():
            if marker in text:
                raise DiskError(disk_words(OSError(code, marker), f"database {path}")) from None
        raise QlabError(f"cannot open database {path}: {text}") from None
    except duckdb.Error as exc:
        raise QlabError(f"cannot open database {path}: {exc}") from None


def dump_json(value: Any) -> str | None:
    """A value for a JSON column (NULL for None), by the one serializer: numpy values, paths, dataclasses; NaN as null."""
    return None if value is None else to_json(value)


def load_json(value: Any) -> Any:
    """A JSON column as read back: parsed text, or None for NULL."""
    if value is None or isinstance(value, dict | list):
        return value
    if isinstance(value, float):  # pandas turns an all-NULL JSON column into NaN
        return None
    return json.loads(value)


class StoreBase:
    """The connection, its transactions and reads, migrations at open, and blobs: what every row
    group's mixin builds on. `qcore.store.Store` documents the arguments."""

    def __init__(self, path: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None,
                 token_dir: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        self.blob_dir = Path(blob_dir) if blob_dir else self.path.parent / "blobs"
        with disk_writes(self.path.parent):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.path.parent.resolve() == defaults.data_dir().resolve():
                private_dir(self.path.parent)
            self.blob_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.token_dir = Path(token_dir) if token_dir else self.path.parent / "board_tokens"
        self._con = connect(self.path)
        for f in (self.path, self.path.with_name(self.path.name + ".wal")):
            if f.exists():
                os.chmod(f, 0o600)  # the database holds every user's results: readable by its owner only
        self._lock = threading.RLock()
        self._tx = threading.local()
        self._closed = False
        self.migrate()
        # the schema (and whatever a killed process left in the WAL) goes into the file now, so the next
        # start has no WAL to replay
        self.checkpoint()

    def copy_database(self, dest: Path) -> None:
        """Copies the whole database (schema, rows, sequences where they stand) into the new file `dest`,
        as one transaction sees it; writes go on meanwhile.

        Raises:
            QlabError: when `dest` exists. DiskError: when the disk refuses the copy.
        """
        if dest.exists():
            raise QlabError(f"{dest} exists; a copy of the database goes into a new file")
        cur = self._con.cursor()
        try:
            name = cur.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            cur.execute(f"ATTACH '{str(dest).replace(chr(39), chr(39) * 2)}' AS qlab_copy")
            try:
                cur.execute(f'COPY FROM DATABASE "{name}" TO qlab_copy')
            finally:
                cur.execute("DETACH qlab_copy")
        except duckdb.Error as exc:
            disk = self._disk_error(exc, str(dest))
            raise disk if disk is not None else QlabError(f"cannot copy {self.path} to {dest}: {exc}") from None
        finally:
            cur.close()

    def checkpoint(self) -> bool:
        """Writes the WAL into the database file, between transactions; returns False when it could not.

        The store's writes all go through `transaction()`, which holds the same lock, so no write is
        open while this runs. A failure is logged, never raised: the WAL stays and DuckDB replays it
        at the next open.
        """
        with self._lock:
            try:
                self._con.execute("CHECKPOINT")
                return True
            except duckdb.Error as exc:
                log.warning("could not checkpoint %s: %s", self.path, exc)
                return False

    def close(self) -> None:
        """Checkpoints and closes the connection (a server calls it on shutdown); a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self.checkpoint()
            self._con.close()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside BEGIN/COMMIT; rolls back on any exception.

        Nested calls on the same thread join the outer transaction, so a caller can make several
        store writes (e.g. a bundle import) all-or-nothing with `with store.transaction():`.
        """
        with self._lock:
            outer = getattr(self._tx, "cur", None)
            if outer is not None:
                yield outer
                return
            cur = self._con.cursor()
            cur.execute("BEGIN TRANSACTION")
            self._tx.cur = cur
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a COMMIT that failed (a full disk) has already ended the transaction
                disk = self._disk_error(exc)
                if disk is not None:
                    raise disk from None
                raise
            finally:
                self._tx.cur = None
                cur.close()

    def _disk_error(self, exc: BaseException, where: str = "") -> DiskError | None:
        """A DuckDB error whose cause is the disk (its WAL or file could not be written), in words."""
        if not isinstance(exc, duckdb.Error):
            return None
        text = str(exc)
        for marker, code in DUCKDB_DISK_MARKERS.items():
            if marker in text:
                return DiskError(disk_words(OSError(code, marker), where or f"the database {self.path}"))
        return None

    @contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The open transaction's cursor on this thread (so reads see its rows), else a fresh one."""
        outer = getattr(self._tx, "cur", None)
        if outer is not None:
            yield outer
            return
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """A read as a DataFrame, on its own cursor (safe from any thread)."""
        with self._reader() as cur:
            return cur.execute(sql, params or []).df()

    def _one(self, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        with self._reader() as cur:
            return cur.execute(sql, params or []).fetchone()

    def migrate(self) -> list[str]:
        """Brings the store to today's schema (see `qcore.store.migrations`); returns the migrations applied now."""
        with self.transaction() as cur:
            applied_now = run_migrations(cur, self.token_dir)
        if applied_now:
            log.info("applied migrations %s to %s", applied_now, self.path)
        return applied_now

    def applied_migrations(self) -> list[str]:
        return list(self.query("SELECT version FROM schema_migrations ORDER BY version")["version"])

    # ------------------------------------------------------------------ blobs
    def put_blob(self, data: bytes, suffix: str = ".tflite") -> tuple[str, Path]:
        """Writes `data` under its sha256 (idempotent); returns (sha256, path)."""
        digest = sha256_bytes(data)
        path = self.blob_dir / f"{digest}{suffix}"
        if not path.exists():
            write_atomic(path, data, ".tmp")
        return digest, path

    def blob_path(self, sha256: str, suffix: str = ".tflite") -> Path:
        """Where the blob of this sha256 lives.

        Raises:
            QlabError: when `sha256` is not 64 hex digits (a value like `../../x` must never become a path).
        """
        return self.blob_dir / f"{check_sha256(sha256)}{suffix}"
