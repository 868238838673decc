"""A store survives its owner's end: checkpointed at open and close, reopened after a kill without the
network, and never installing or loading a DuckDB extension from disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from qcore.store import Store
from qcore.store.base import connect

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter whose HOME (and so DuckDB's extension directory) is `home`."""
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)


def test_connect_never_installs_or_loads_extensions(tmp_path: Path) -> None:
    con = connect(tmp_path / "q.duckdb")
    try:
        got = con.execute("SELECT current_setting('autoinstall_known_extensions'),"
                          " current_setting('autoload_known_extensions'),"
                          " current_setting('allow_community_extensions')").fetchone()
    finally:
        con.close()
    assert got == (False, False, False)


def test_store_checkpoints_at_open_and_close(tmp_path: Path) -> None:
    """The schema is in the file, not the WAL, as soon as the store is open; a close leaves no WAL."""
    db = tmp_path / "q.duckdb"
    wal = db.with_name("q.duckdb.wal")
    store = Store(db)
    assert not wal.exists()
    store.create_job("convert", {"recipes": ["int8"]})
    store.close()
    store.close()  # a second close (a lifespan and a test both closing) is harmless
    assert not wal.exists()


def test_store_a_killed_owner_left_reopens_offline_and_fails_its_jobs(tmp_path: Path) -> None:
    """kill -9 mid-write leaves rows in the WAL; the next owner replays it with no extension directory
    touched (HOME points at an empty folder), keeps the rows and ends the orphaned job in words."""
    db, home = tmp_path / "q.duckdb", tmp_path / "home"
    home.mkdir()
    _python("import os\nfrom qcore.store import Store\nfrom qcore.qtyping import JobStatus\n"
            f"s = Store({str(db)!r})\n"
            "s.add_board('evk', 'http://10.0.0.5:8765', None)\n"
            "s.update_job(s.create_job('convert', {'recipes': ['int8']}), status=JobStatus.RUNNING)\n"
            "os._exit(0)\n", home)
    assert db.with_name("q.duckdb.wal").exists()
    # the next owner dies too, before any close: the open's own checkpoint already emptied the WAL
    out = _python("import os\nfrom qcore.store import Store\n"
                  f"s = Store({str(db)!r})\n"
                  "print(s.fail_orphaned_jobs(), [b.name for b in s.boards()], s.jobs()[0].error, flush=True)\n"
                  "s.checkpoint()\nos._exit(0)\n", home)
    assert out.stdout.strip() == "1 ['evk'] the server restarted while this job ran"
    assert not db.with_name("q.duckdb.wal").exists()
    assert list(home.iterdir()) == []  # no ~/.duckdb/extensions: nothing looked for, nothing downloaded
