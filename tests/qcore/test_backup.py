"""`qlab backup` / `qlab restore` on real stores: a lab copied whole and put back elsewhere with its paths
pointing there, and every refusal (a held database, a lab in the way, a damaged backup) in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcore.cli import main
from qcore.qtyping import QlabError
from qcore.store import MIGRATIONS, Store
from qcore.store.backup import MANIFEST, backup, restore
from tests.qcore.test_store_migrations import _build

REPO = Path(__file__).resolve().parents[2]


def _lab(data: Path) -> dict[str, object]:
    """A lab in `data`: an uploaded model file, a dataset file, a variant blob, a board with a token, a report."""
    (data / "uploads").mkdir(parents=True)
    (data / "uploads" / "m.h5").write_bytes(b"HDF-model")
    (data / "uploads" / "d.npz").write_bytes(b"NPZ-data")
    with Store(data / "qlab.duckdb") as store:
        m = store.add_model(name="m", format="h5", sha256="abc", source_path=str(data / "uploads" / "m.h5"),
                            input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
        d = store.add_dataset(name="d", source="d.npz", sha256="def", input_scale=1.0, input_offset=0.0, n_train=10,
                              n_test=5, num_classes=10, stored_path=str(data / "uploads" / "d.npz"))
        v = store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=b"TFL3-int8")
        store.add_board("evk", "http://10.0.0.5:8765", "board-secret")
        report = store.save_report("int8", "", {"variant_ids": [v]})
    return {"model": m, "variant": v, "report": report}


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[Path]:
    """A used lab's data dir."""
    data = tmp_path / "lab"
    _lab(data)
    yield data


def test_backup_then_restore_elsewhere_points_every_path_there(lab: Path, tmp_path: Path) -> None:
    with Store(lab / "qlab.duckdb") as store:
        made = backup(store, lab, tmp_path / "bk")
    assert made.counts["models"] == 1 and made.counts["variants"] == 1 and made.counts["boards"] == 1
    assert {"files/uploads/m.h5", "files/uploads/d.npz"} <= made.files.keys()
    assert any(k.startswith("blobs/") for k in made.files) and any(k.startswith("board_tokens/") for k in made.files)
    assert json.loads((tmp_path / "bk" / MANIFEST).read_text())["migrations"] == list(made.migrations)

    new = tmp_path / "elsewhere"
    done = restore(tmp_path / "bk", new / "qlab.duckdb", new)
    assert done["counts"] == made.counts and done["kept"] == ""
    with Store(new / "qlab.duckdb") as store:
        model = store.query("SELECT source_path FROM models").iloc[0, 0]
        assert model == str(new / "uploads" / "m.h5") and Path(model).read_bytes() == b"HDF-model"
        path = Path(store.query("SELECT path FROM variants").iloc[0, 0])
        assert path.parent == new / "blobs" and path.read_bytes() == b"TFL3-int8"
        assert store.query("SELECT stored_path FROM datasets").iloc[0, 0] == str(new / "uploads" / "d.npz")
        assert store.board_token("evk") == ("http://10.0.0.5:8765", "board-secret")
        assert len(store.query("SELECT id FROM reports")) == 1
    assert (new / "qlab.duckdb").stat().st_mode & 0o777 == 0o600


def test_backup_keeps_the_database_locked_against_other_processes(lab: Path, tmp_path: Path) -> None:
    """The owner still holds the file after a backup: a second process is refused (a file copy in the
    owner's process would have dropped DuckDB's POSIX lock)."""
    with Store(lab / "qlab.duckdb") as store:
        backup(store, lab, tmp_path / "bk")
        other = subprocess.run([sys.executable, "-c", f"from qcore.store import Store; Store({str(lab / 'qlab.duckdb')!r})"],
                               cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                               timeout=60)
        assert other.returncode != 0 and "in use by another process" in other.stderr
        store.save_report("still the owner", "", {})


def test_backup_never_writes_into_a_folder_with_files(lab: Path, tmp_path: Path) -> None:
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "old.txt").write_text("x")
    with Store(lab / "qlab.duckdb") as store, pytest.raises(QlabError, match="is not empty"):
        backup(store, lab, tmp_path / "bk")
    assert [p.name for p in (tmp_path / "bk").iterdir()] == ["old.txt"]


def test_restore_refuses_a_lab_in_the_way_unless_forced_and_keeps_it(lab: Path, tmp_path: Path) -> None:
    with Store(lab / "qlab.duckdb") as store:
        backup(store, lab, tmp_path / "bk")
        store.save_report("made after the backup", "", {})
    with pytest.raises(QlabError, match="already holds a lab .* --force"):
        restore(tmp_path / "bk", lab / "qlab.duckdb", lab)
    done = restore(tmp_path / "bk", lab / "qlab.duckdb", lab, force=True)
    with Store(lab / "qlab.duckdb") as store:
        assert len(store.query("SELECT id FROM reports")) == 1  # the backup's, not the later one
    with Store(Path(done["kept"])) as kept:
        assert len(kept.query("SELECT id FROM reports")) == 2  # the replaced lab is kept, whole


def test_restore_refuses_a_damaged_backup_naming_the_file(lab: Path, tmp_path: Path) -> None:
    with Store(lab / "qlab.duckdb") as store:
        made = backup(store, lab, tmp_path / "bk")
    blob = next(k for k in made.files if k.startswith("blobs/"))
    (tmp_path / "bk" / blob).unlink()
    with pytest.raises(QlabError, match=f"{blob} is missing or changed"):
        restore(tmp_path / "bk", tmp_path / "new" / "qlab.duckdb", tmp_path / "new")
    assert not (tmp_path / "new" / "qlab.duckdb").exists()
    with pytest.raises(QlabError, match="is not a qlab backup"):
        restore(tmp_path, tmp_path / "new" / "qlab.duckdb", tmp_path / "new")


def test_backup_and_restore_of_a_held_lab_say_how_in_one_line(lab: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A server holds the file (here a process that opened it): backup names --server; restore refuses."""
    with Store(lab / "qlab.duckdb") as store:
        backup(store, lab, tmp_path / "bk")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom qcore.store import Store\n"
                               f"s = Store({str(lab / 'qlab.duckdb')!r})\nprint('open', flush=True)\ntime.sleep(120)"],
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        before = (lab / "qlab.duckdb").stat().st_mtime
        assert main(["backup", str(tmp_path / "bk2"), "--db", str(lab / "qlab.duckdb")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "held by a running qlab server" in err[0] and "--server" in err[0], err
        assert main(["restore", str(tmp_path / "bk"), "--db", str(lab / "qlab.duckdb"), "--force"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "stop it before restoring" in err[0], err
        time.sleep(0.1)
        assert (lab / "qlab.duckdb").stat().st_mtime == before and not (tmp_path / "bk2").exists()
    finally:
        holder.kill()
        holder.wait()


def test_cli_backup_and_restore_json(lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", str(tmp_path / "bk"), "--db", str(lab / "qlab.duckdb"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["variants"] == 1 and doc["backup"] == str(tmp_path / "bk") and doc["external"] == []
    new = tmp_path / "new"
    assert main(["restore", str(tmp_path / "bk"), "--db", str(new / "qlab.duckdb"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == doc["counts"]


def test_restore_brings_a_backup_of_an_older_schema_to_today(tmp_path: Path) -> None:
    """A backup an older qlab made (its database at migration 0010) restores with today's schema and rows."""
    names = [m.name for m in MIGRATIONS]
    old = names[: names.index("0010_users_tokens") + 1]
    bk = tmp_path / "old-backup"
    bk.mkdir()
    _build(bk / "qlab.duckdb", old)
    manifest = {"format": 1, "created_at": "2026-11-01T00:00:00Z", "qlab_version": "0.0.9", "migrations": old,
                "data_dir": "/srv/qlab/data", "blob_dir": "/srv/qlab/data/blobs", "database_bytes": 0, "files": {},
                "external": [], "counts": {}}
    (bk / MANIFEST).write_text(json.dumps(manifest))
    new = tmp_path / "new"
    done = restore(bk, new / "qlab.duckdb", new)
    assert done["counts"]["models"] == 1 and done["counts"]["jobs"] >= 1
    with Store(new / "qlab.duckdb") as store:
        assert store.applied_migrations() == names
        store.create_job("convert", {})
