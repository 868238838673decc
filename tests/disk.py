"""Real refusing disks for tests: a small tmpfs that fills up, and a read-only folder. Mounting needs
root (CAP_SYS_ADMIN); without it a read-only folder falls back to chmod, and a full disk is skipped."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def small_disk(path: Path, size_mb: int = 64) -> Iterator[Path]:
    """A tmpfs of `size_mb` MB mounted at `path` (skips the test where it cannot mount)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Writes a ballast file until `disk` is full, down to the last byte; returns it (delete it to free the space)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return ballast


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` (a folder with files in it) made read-only: remounted read-only as root, else chmod a-w."""
    if os.geteuid() == 0:
        if not _mount("--bind", str(path), str(path)):
            pytest.skip("a read-only bind mount needs root")
        if not _mount("-o", "remount,bind,ro", str(path)):
            subprocess.run(["umount", "-l", str(path)], check=False)
            pytest.skip("could not remount read-only (a file is open for writing)")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        yield path
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
