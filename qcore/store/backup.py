"""Backups of a lab and their restore: the database as one consistent snapshot, its blobs and board tokens,
and the files its rows point to (uploads, the demo model), with a manifest that says what is there.

The snapshot is taken by the store's owner (the server, or the CLI when no server holds the file):
DuckDB lets one process open the file, so the owner copies its database into a new file with DuckDB's
`COPY FROM DATABASE`, one transaction's consistent view. Blobs are named by their sha256 and never
change, and a row is written only after its blob, so copying the blobs after the snapshot gives every
blob the snapshot refers to.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qcore import __version__
from qcore.qtyping import Backup, QlabError
from qcore.store.base import StoreBase, connect
from qcore.store.files import disk_writes, private_dir

log = logging.getLogger(__name__)

MANIFEST = "qlab-backup.json"
# bumped when a backup's layout changes; restore refuses a format it does not know
FORMAT = 1
DATABASE = "qlab.duckdb"
# the columns that hold a path on the lab's disk; restore points them at the new place
PATH_COLUMNS = (("models", "source_path"), ("datasets", "stored_path"), ("variants", "path"))
# what a backup counts, to show and to check after a restore
COUNTED = ("models", "datasets", "variants", "reports", "boards", "jobs")


def backup(store: StoreBase, data_dir: Path, dest: Path) -> Backup:
    """Copies the lab into the empty or new folder `dest`, consistently, while the lab runs.

    The copy is made in a sibling folder and renamed into place when complete, so a folder named
    `dest` is always a whole backup.

    Args:
        store: the owner's open store (the server's, or one the CLI opened).
        data_dir: the lab's data directory (uploads and the demo model live under it).
        dest: where the backup goes; must not exist, or be empty.

    Raises:
        QlabError: `dest` holds something already. DiskError: the disk refused a write.
    """
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise QlabError(f"{dest} is not empty: back up into a new folder (a backup never overwrites)")
    data_dir = Path(data_dir).resolve()
    with disk_writes(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        private_dir(part)
    try:
        with disk_writes(part):
            snapshot(store, part / DATABASE)
            files: dict[str, int] = {}
            for folder, name in ((store.blob_dir, "blobs"), (store.token_dir, "board_tokens")):
                for src in _files(folder):
                    files.update(_copy(src, part / name / src.relative_to(folder), f"{name}/{src.relative_to(folder)}"))
            external: list[str] = []
            for value in _referenced(part / DATABASE):
                path = Path(value)
                if not path.is_absolute() or _under(path, store.blob_dir.resolve()):
                    continue  # blobs are copied above; a relative path cannot be placed
                if not _under(path, data_dir) or not path.exists():
                    external.append(value)
                    continue
                for src in _files(path) if path.is_dir() else [path]:
                    within = src.relative_to(data_dir)
                    files.update(_copy(src, part / "files" / within, f"files/{within}"))
            counts = _counts(part / DATABASE)
            made = Backup(path=str(dest), created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          qlab_version=__version__, migrations=tuple(store.applied_migrations()),
                          data_dir=str(data_dir), blob_dir=str(store.blob_dir.resolve()),
                          database_bytes=(part / DATABASE).stat().st_size, files=files,
                          external=tuple(sorted(set(external))), counts=counts)
            (part / MANIFEST).write_text(json.dumps({"format": FORMAT, **made.manifest()}, indent=2) + "\n")
            if dest.exists():
                dest.rmdir()
            os.replace(part, dest)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    log.info("backed up %s to %s (%d files)", store.path, dest, len(files))
    return made


def snapshot(store: StoreBase, dest: Path) -> None:
    """Writes a consistent copy of the store's database to the new file `dest`, through DuckDB itself.

    `COPY FROM DATABASE` reads one transaction's snapshot, so writes committed meanwhile are simply not
    in it, and jobs and pages go on. The file is never opened by Python: DuckDB's lock on it is a POSIX
    record lock, which the kernel drops when *any* descriptor of the file closes in this process, and a
    plain file copy would leave the database open to a second writer.
    """
    store.copy_database(dest)
    os.chmod(dest, 0o600)


def read_manifest(src: Path) -> dict[str, Any]:
    """A backup folder's manifest, checked: its format, and every file it lists present at its size.

    Raises:
        QlabError: naming the folder and what is missing or wrong.
    """
    src = Path(src)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise QlabError(f"{src} is not a qlab backup: it has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise QlabError(f"{src / MANIFEST}: cannot read it: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise QlabError(f"{src / MANIFEST}: backup format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
                        f" is not {FORMAT}, the one this qlab reads")
    if not (src / DATABASE).is_file():
        raise QlabError(f"{src} is missing {DATABASE}: the backup is incomplete")
    for rel, size in dict(manifest.get("files") or {}).items():
        path = src / rel
        if not path.is_file() or path.stat().st_size != size:
            raise QlabError(f"{src}: {rel} is missing or changed since the backup ({size} bytes expected)")
    return manifest


def restore(src: Path, db_path: Path, data_dir: Path, *, force: bool = False) -> dict[str, Any]:
    """Puts a backup back as the lab at `db_path` and `data_dir`, with its paths pointing there.

    Refuses while a process (a server) holds `db_path`. An existing lab is replaced only with `force`,
    and then kept beside it as `<db>.before-restore-<time>`. A backup of an older schema is migrated.

    Returns:
        The backup's manifest with `counts` as restored and `kept` (where the replaced database went).

    Raises:
        QlabError: not a backup, a held database, an existing lab without force. DiskError: the disk refused.
    """
    src, db_path, data_dir = Path(src).resolve(), Path(db_path).resolve(), Path(data_dir).resolve()
    manifest = read_manifest(src)
    existing = _lab_in(db_path)  # raises while a server holds it
    if existing and not force:
        raise QlabError(f"{db_path} already holds a lab ({existing} models): pass --force to replace it "
                        f"(it is kept as {db_path.name}.before-restore-<time>)")
    kept = ""
    with disk_writes(db_path.parent):
        private_dir(data_dir)
        private_dir(db_path.parent)
        for rel in dict(manifest.get("files") or {}):
            top, _, rest = str(rel).partition("/")
            root = {"blobs": db_path.parent / "blobs", "board_tokens": db_path.parent / "board_tokens",
                    "files": data_dir}.get(top)
            if root is None or not rest:
                raise QlabError(f"{src / MANIFEST}: {rel!r} is not a file a backup holds")
            target = (root / rest).resolve()
            if not _under(target, root.resolve()):
                raise QlabError(f"{src / MANIFEST}: {rel!r} points outside the lab")
            _copy(src / rel, target, str(rel))
        incoming = db_path.with_name(f".{db_path.name}.restoring-{os.getpid()}")
        shutil.copyfile(src / DATABASE, incoming)
        os.chmod(incoming, 0o600)
        try:
            _repoint(incoming, manifest, db_path.parent / "blobs", data_dir)
            if db_path.exists():
                kept_path = db_path.with_name(f"{db_path.name}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(db_path, kept_path)
                kept = str(kept_path)
            db_path.with_name(db_path.name + ".wal").unlink(missing_ok=True)
            os.replace(incoming, db_path)
        finally:
            incoming.unlink(missing_ok=True)
            incoming.with_name(incoming.name + ".wal").unlink(missing_ok=True)
    log.info("restored %s into %s", src, db_path)
    return {**manifest, "counts": _counts(db_path), "kept": kept, "database": str(db_path)}


# ---------------------------------------------------------------- helpers
def _files(folder: Path) -> Iterator[Path]:
    """Every regular file under `folder` (none when it does not exist), in a stable order."""
    if folder.is_dir():
        yield from sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _copy(src: Path, dest: Path, rel: str) -> dict[str, int]:
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    return {rel: dest.stat().st_size}


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _referenced(db: Path) -> list[str]:
    """Every path the snapshot's rows hold."""
    con = connect(db)
    try:
        out: list[str] = []
        for table, column in PATH_COLUMNS:
            out += [str(r[0]) for r in con.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL")
                    .fetchall()]
        return out
    finally:
        con.close()


def _counts(db: Path) -> dict[str, int]:
    con = connect(db)
    try:
        counts = {}
        for table in COUNTED:
            row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts
    finally:
        con.close()


def _lab_in(db_path: Path) -> int:
    """How many models the database at `db_path` holds (0 for none or no file).

    Raises:
        QlabError: when another process (a server) holds it, saying to stop it first.
    """
    if not db_path.exists():
        return 0
    try:
        con = connect(db_path)
    except QlabError as exc:
        if "in use by another process" in str(exc):
            raise QlabError(f"{db_path} is held by a running qlab server: stop it before restoring "
                            "(a restore never overwrites a lab in use)") from None
        raise
    try:
        has = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
                          " AND table_name = 'models'").fetchone()
        if not has or not has[0]:
            return 0
        row = con.execute("SELECT count(*) FROM models").fetchone()
        return max(1, int(row[0]) if row else 0)
    finally:
        con.close()


def _repoint(db: Path, manifest: dict[str, Any], blob_dir: Path, data_dir: Path) -> None:
    """Brings the restored database to today's schema and points its paths at the new blobs and data dir."""
    moves = [(str(manifest["blob_dir"]), str(blob_dir.resolve())), (str(manifest["data_dir"]), str(data_dir))]
    with StoreBase(db, blob_dir=blob_dir, token_dir=db.parent / "board_tokens") as store, store.transaction() as cur:
        for old, new in moves:
            if old == new:
                continue
            for table, column in PATH_COLUMNS:
                cur.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE starts_with({column}, ?)",
                            [new + "/", len(old) + 2, old + "/"])
