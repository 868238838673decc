"""The files the store keeps beside its database: private folders, blobs by sha256, board tokens."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeGuard

from qcore.qtyping import DiskError, QlabError

# a blob's name and a bundle's references: anything else (`../../x`) must never become a path
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# what a refused write means to the person who has to fix it
DISK_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file would exceed the size this system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "the disk reported an I/O error",
}
# the same causes as DuckDB words them inside its own errors
DUCKDB_DISK_MARKERS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def disk_words(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One line for a refused write: what could not be written, why, and what to do."""
    where = exc.filename or path or "a file"
    reason = DISK_REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    hint = " (free space under the data directory, or point QLAB_DATA_DIR elsewhere)" \
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else ""
    return f"cannot write {where}: {reason}{hint}; nothing was stored"


def is_disk_error(exc: BaseException) -> TypeGuard[OSError]:
    """True for an OSError of the disk (full, read-only, permissions, I/O), not of the network."""
    return isinstance(exc, OSError) and exc.errno in DISK_REASONS


@contextmanager
def disk_writes(path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Turns a disk's refusal inside the block into DiskError in words; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        raise DiskError(disk_words(exc, path)) from None


def private_dir(path: Path) -> Path:
    """Creates `path` if needed and makes it readable by its owner only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def check_sha256(value: object, what: str = "sha256") -> str:
    """`value` if it is 64 lowercase hex digits, else QlabError naming it (it becomes a file name)."""
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise QlabError(f"{what} {str(value)[:80]!r} is not a sha256 (64 lowercase hex digits)")
    return value


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes, part_suffix: str = ".part") -> None:
    """Writes `data` at `path` through a uniquely named temp file in the same folder, then a rename:
    a reader never sees half a file, and a failure leaves no temp file behind.

    Raises:
        DiskError: when the disk refuses (full, read-only, not permitted), in words naming `path`.
    """
    with disk_writes(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=part_suffix, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def board_token_path(token_dir: Path, board: str) -> Path:
    """Where a board's token is kept; board names are free text, so the file is named by their digest."""
    return token_dir / f"{hashlib.sha256(board.encode()).hexdigest()[:32]}.token"


def write_board_token(token_dir: Path, board: str, token: str | None) -> None:
    """Keeps a board's token in its own 0600 file (mkstemp makes it so), or removes the file for no token."""
    path = board_token_path(token_dir, board)
    if not token:
        path.unlink(missing_ok=True)
        return
    private_dir(token_dir)
    write_atomic(path, (token + "\n").encode("utf-8"), "")
