"""`qlab backup DIR` and `qlab restore DIR`: a consistent copy of a lab, made while its server runs, and
the lab put back from one.

A running server holds the DuckDB file (one process may open it), so a backup of a served lab is made
by the server itself (`POST /api/v1/backup`, admin only) and downloaded: `qlab --server URL backup DIR`.
Without a server the CLI opens the store and makes the same backup here. A restore never runs through
a server: it replaces files the server would hold, so it refuses while one does.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from qcore import defaults
from qcore.cli.client import Remote
from qcore.cli.common import EXIT_OK, Subparsers, emit, open_store
from qcore.qtyping import QlabError
from qcore.store.backup import COUNTED, read_manifest, restore
from qcore.store.backup import backup as make_backup
from qcore.store.files import disk_writes

# a whole lab (its blobs) can be large; the server checkpoints and copies before it answers
BACKUP_TIMEOUT_S = 3600


def add_commands(sub: Subparsers) -> None:
    """`backup`, `restore`."""
    p = sub.add_parser("backup", help="copy the lab (database, blobs, board tokens, uploads) into a new folder, "
                       "consistently, also while its server runs (with --server)")
    p.add_argument("dir", metavar="DIR", help="a new or empty folder")
    _add_places(p)
    p.set_defaults(handler=_cmd_backup)
    p = sub.add_parser("restore", help="put a backup back as this machine's lab (never while a server holds it)")
    p.add_argument("dir", metavar="DIR", help="a folder `qlab backup` made")
    _add_places(p)
    p.add_argument("--force", action="store_true",
                   help="replace an existing lab (kept beside it as <db>.before-restore-<time>)")
    p.set_defaults(handler=_cmd_restore)


def _add_places(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="DuckDB file (default: $QLAB_DB or data/qlab.duckdb)")
    p.add_argument("--data-dir", help="the lab's data directory, where uploads and the demo live "
                   "(default: $QLAB_DATA_DIR, else the database's folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _places(args: argparse.Namespace) -> tuple[Path, Path]:
    """(database, data dir) of this command: --db/--data-dir, else the environment's defaults."""
    db = Path(args.db) if args.db else defaults.db_path()
    if args.data_dir:
        data_dir = Path(args.data_dir)
    elif os.environ.get("QLAB_DATA_DIR") or not args.db:
        data_dir = defaults.data_dir()
    else:
        data_dir = db.parent
    return db.resolve(), data_dir.resolve()


def _cmd_backup(args: argparse.Namespace) -> int:
    db, data_dir = _places(args)
    try:
        store = open_store(argparse.Namespace(db=str(db)))
    except QlabError as exc:
        if "in use by another process" not in str(exc):
            raise
        port = os.environ.get("QLAB_PORT") or "8501"
        raise QlabError(f"{db} is held by a running qlab server: back it up through the server with "
                        f"`qlab --server http://127.0.0.1:{port} backup {args.dir}` (an admin token in QLAB_TOKEN "
                        "or --token-file)") from None
    with store:
        made = make_backup(store, data_dir, Path(args.dir))
    return _report(args, read_manifest(Path(made.path)), Path(made.path))


def backup_from_server(args: argparse.Namespace, remote: Remote) -> int:
    """`qlab --server URL backup DIR`: the server makes the backup; it is downloaded and unpacked into DIR."""
    dest = Path(args.dir).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise QlabError(f"{dest} is not empty: back up into a new folder (a backup never overwrites)")
    with disk_writes(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
            archive = Path(tmp) / "backup.tar"
            remote.download("POST", "/backup", archive, timeout=BACKUP_TIMEOUT_S)
            unpacked = Path(tmp) / "lab"
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(unpacked, filter="data")  # no links, no paths outside `unpacked`
            except tarfile.TarError as exc:
                raise QlabError(f"the server's backup could not be unpacked: {exc}") from None
            read_manifest(unpacked)  # every file there at its size before it is called a backup
            if dest.exists():
                dest.rmdir()
            os.replace(unpacked, dest)
    return _report(args, read_manifest(dest), dest)


def _cmd_restore(args: argparse.Namespace) -> int:
    db, data_dir = _places(args)
    done = restore(Path(args.dir), db, data_dir, force=args.force)
    counts = done["counts"]
    kept = f"; the lab it replaced is kept as {done['kept']}" if done["kept"] else ""
    emit(args, {"database": done["database"], "data_dir": str(data_dir), "backup": str(Path(args.dir).resolve()),
                "created_at": done["created_at"], "counts": counts, "kept": done["kept"]},
         f"restored the backup of {done['created_at']} into {done['database']}: {_counted(counts)}{kept}")
    return EXIT_OK


def _report(args: argparse.Namespace, manifest: dict[str, Any], dest: Path) -> int:
    counts = manifest.get("counts") or {}
    external = list(manifest.get("external") or [])
    note = (f"; not copied (outside the data dir): {', '.join(external[:5])}"
            f"{' …' if len(external) > 5 else ''}") if external else ""
    emit(args, {"backup": str(dest), "created_at": manifest["created_at"], "migrations": manifest["migrations"],
                "counts": counts, "files": len(manifest.get("files") or {}), "external": external},
         f"backup {dest} ({manifest['created_at']}): {_counted(counts)}, "
         f"{len(manifest.get('files') or {})} files{note}")
    return EXIT_OK


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts.get(t, 0)} {t}" for t in COUNTED)
