"""Disk errors in words: a full disk and a read-only one refuse the store's writes and the CLI's with one
line naming the path and the cause, and leave nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcore.cli import main
from qcore.qtyping import DiskError, Evaluation
from qcore.store import Store
from tests.disk import fill, read_only, small_disk

EV = Evaluation(0.8, 1.0, 0.9, ((2, 0), (1, 2)), 5, True)


def _model_and_dataset(store: Store) -> tuple[int, int]:
    m = store.add_model(name="m", format="h5", sha256="abc", source_path="m.h5", input_shape=[None, 8, 8],
                        output_shape=[None, 10], keras_major=2)
    d = store.add_dataset(name="d", source="d.npz", sha256="def", input_scale=1.0, input_offset=0.0,
                          n_train=10, n_test=5, num_classes=10)
    return m, d


def test_store_on_a_full_disk_refuses_in_words_and_keeps_nothing_half(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", size_mb=16) as disk, Store(disk / "qlab.duckdb") as store:
        m, d = _model_and_dataset(store)
        ballast = fill(disk)
        with pytest.raises(DiskError, match=r"cannot write .*blobs.*: the disk is full .*nothing was stored"):
            store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=b"TFL3" * 50_000,
                               evaluation=EV)
        with pytest.raises(DiskError, match=f"cannot write the database {disk / 'qlab.duckdb'}: the disk is full"):
            store.create_job("convert", {"recipes": ["int8"] * 20_000})
        assert not [p for p in (disk / "blobs").iterdir()]  # no temp file left behind
        ballast.unlink()
        # the same store writes again once there is room, and kept nothing of the refused writes
        assert store.query("SELECT count(*) AS n FROM variants")["n"][0] == 0 and store.jobs() == []
        store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=b"TFL3x", evaluation=EV)
        assert len(store.query("SELECT id FROM variants")) == 1


def test_cli_backup_onto_a_full_disk_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lab" / "qlab.duckdb"
    with Store(db) as store:
        m, d = _model_and_dataset(store)
        store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=b"TFL3" * 100_000)
    with small_disk(tmp_path / "disk", size_mb=1) as disk:
        fill(disk)
        assert main(["backup", str(disk / "bk"), "--db", str(db)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("qlab backup: error: cannot write ") and "the disk is full" in err[0]
        assert sorted(p.name for p in disk.iterdir()) == ["ballast"]  # no half backup


def test_cli_on_a_read_only_lab_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = tmp_path / "lab"
    with Store(lab / "qlab.duckdb") as store:
        _model_and_dataset(store)
    with read_only(lab):
        assert main(["report", "make", "--title", "t", "--variants", "1", "--db", str(lab / "qlab.duckdb")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert str(lab) in err[0] and ("read-only" in err[0] or "permission denied" in err[0]), err
        assert main(["list", "--db", str(lab / "new" / "qlab.duckdb")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"cannot write {lab / 'new'}" in err[0], err
