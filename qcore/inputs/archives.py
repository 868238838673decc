"""Unpacking untrusted zips: no paths outside, no links, bytes counted as they come out, nothing left on error."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def extract_zip(archive: Path, dest: Path, *, max_bytes: int, max_files: int = 100_000,
                name: str | None = None) -> Path:
    """Unpacks `archive` into the new directory `dest`, atomically.

    Every entry is checked (no absolute paths, no `..`, no links), and its bytes are counted as
    they are decompressed, so a zip whose headers under-declare its sizes is stopped at
    `max_bytes` however it lies. The work happens in a unique temporary sibling of `dest`, which
    is removed on any error.

    Args:
        name: the file name to show in errors (the user's, not qlab's storage name).

    Returns:
        `dest` (left as it is when it already exists).

    Raises:
        QlabError: naming the archive and the entry or limit at fault.
    """
    label = name or archive.name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.part-", dir=dest.parent))
    try:
        _extract_into(archive, tmp, max_bytes=max_bytes, max_files=max_files, label=label)
        try:
            os.replace(tmp, dest)
        except OSError:  # another request unpacked the same bytes first
            if not dest.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_into(archive: Path, root: Path, *, max_bytes: int, max_files: int, label: str) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise QlabError(f"{label}: not a readable zip file ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise QlabError(f"{label}: holds {len(infos)} entries, over the limit of {max_files}")
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise QlabError(f"{label}: unpacks to {declared / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit")
        total = 0
        for info in infos:
            entry = PurePosixPath(info.filename)
            if entry.is_absolute() or ".." in entry.parts or info.filename.startswith(("/", "\\")) \
                    or "\\" in info.filename or ":" in info.filename:
                raise QlabError(f"{label}: entry {info.filename!r} points outside the archive")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise QlabError(f"{label}: entry {info.filename!r} is a symbolic link")
            target = root.joinpath(*entry.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zf.open(info) as src, open(target, "xb") as out:
                    while block := src.read(_CHUNK):
                        written += len(block)
                        total += len(block)
                        if written > info.file_size or total > max_bytes:
                            raise QlabError(f"{label}: entry {info.filename!r} unpacks to more than its declared "
                                            f"{info.file_size} bytes (a lying or bomb zip); refused")
                        out.write(block)
            except FileExistsError:
                raise QlabError(f"{label}: entry {info.filename!r} appears twice") from None
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
                raise QlabError(f"{label}: entry {info.filename!r} cannot be unpacked ({exc})") from None
