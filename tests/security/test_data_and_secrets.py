"""Bombs and lies in uploaded data, image-zip datasets in jobs, and secrets at rest, through the
real upload path (dashboard.services.uploads → qcore.inputs.data) and the real store."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dashboard.services import uploads
from dashboard.services.lab import Lab
from qcore import store as qstore
from qcore.inputs import data as qdata
from qcore.jobs.contract import ConvertParams
from qcore.qtyping import JobStatus, QlabError
from qcore.store import Store
from tests.dashboard.conftest import empty_lab, run_job  # noqa: F401 - fixture
from tests.security.conftest import lie_about_size


def _leftovers(the_lab: Lab) -> list[str]:
    folder = the_lab.data_dir / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _png(w: int, h: int, value: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h), value).save(buf, format="PNG")
    return buf.getvalue()


def _class_zip(n_per_class: int = 10, classes: tuple[str, ...] = ("zero", "one"), size: int = 12) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, cls in enumerate(classes):
            for i in range(n_per_class):
                zf.writestr(f"digits/{cls}/{i:03d}.png", _png(size, size, 40 * i + 100 * label))
    return buf.getvalue()


def test_npz_bomb_refused_from_headers(empty_lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """A ~400 KB .npz whose x_train declares 410 MB is refused from its headers, before any array loads."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x_train=np.zeros((100_000, 32, 32), np.float32), y_train=np.zeros(100_000, np.int64),
                        x_test=np.zeros((10, 32, 32), np.float32), y_test=np.zeros(10, np.int64))
    data = path.read_bytes()
    assert len(data) < 1 << 20
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(QlabError, match="bomb.npz: x_train.*bomb|bomb.npz: x_train"):
            uploads.add_dataset(empty_lab, "bomb.npz", data, input_scale=1.0, input_offset=0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MB traced while refusing"
    assert empty_lab.store.datasets().empty
    assert _leftovers(empty_lab) == []  # the refused upload is deleted


def test_npz_over_the_dataset_cap_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrays that would take more than QLAB_MAX_DATASET_MB are refused naming the array and the limit."""
    monkeypatch.setenv("QLAB_MAX_DATASET_MB", "1")
    path = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((600, 32, 32), dtype=np.float32), y_train=np.zeros(600, np.int64),
             x_test=np.zeros((5, 32, 32), np.float32), y_test=np.zeros(5, np.int64))
    with pytest.raises(QlabError, match="x_train.*1 MB limit"):
        qdata.load_dataset(path)


def test_image_zip_count_capped(empty_lab: Lab, demo_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A zip of class folders with more images than the cap is refused before decoding them."""
    model_id = uploads.add_model(empty_lab, "demo.h5", demo_h5.read_bytes())
    monkeypatch.setattr(qdata, "MAX_IMAGES", 15)
    with pytest.raises(QlabError, match="more than 15 images"):
        uploads.add_dataset(empty_lab, "many.zip", _class_zip(10), input_scale=1.0, input_offset=0.0,
                            for_model=model_id)
    assert empty_lab.store.datasets().empty


def test_image_zip_pixel_bomb_refused(empty_lab: Lab, demo_h5: Path) -> None:  # noqa: F811
    """One small PNG that decodes to 10,000 x 10,000 pixels is refused from its header."""
    model_id = uploads.add_model(empty_lab, "demo.h5", demo_h5.read_bytes())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(5):
            zf.writestr(f"a/{i}.png", _png(8, 8))
        zf.writestr("b/huge.png", _png(10_000, 10_000))
    assert len(buf.getvalue()) < 1 << 20
    with pytest.raises(QlabError, match="10000x10000 pixels"):
        uploads.add_dataset(empty_lab, "pixels.zip", buf.getvalue(), input_scale=1.0, input_offset=0.0,
                            for_model=model_id)


def test_lying_zip_is_a_clean_refusal_without_leftovers(empty_lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """A zipped SavedModel whose central directory under-declares an entry's size: QlabError naming
    the user's file, no *.part directories, no stored upload."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/saved_model.pb", b"\0" * 200_000)
        zf.writestr("m/variables/variables.index", b"x")
    liar = lie_about_size(buf.getvalue(), "m/saved_model.pb", 100)
    with pytest.raises(QlabError, match="liar.zip"):
        uploads.add_model(empty_lab, "liar.zip", liar)
    assert _leftovers(empty_lab) == []
    assert not list(empty_lab.data_dir.rglob("*.part*"))


def test_image_zip_dataset_works_in_jobs(empty_lab: Lab, demo_h5: Path) -> None:  # noqa: F811
    """A zip of class folders uploaded for a model is read at the same size by every job: a real
    conversion job on it finishes, and rows stored before the size was recorded use the job's model."""
    from qcore.inputs.data import load_stored_dataset

    model_id = uploads.add_model(empty_lab, "demo.h5", demo_h5.read_bytes())
    dataset_id = uploads.add_dataset(empty_lab, "digits.zip", _class_zip(10), input_scale=1 / 255,
                                     input_offset=0.0, for_model=model_id)
    assert json.loads(empty_lab.store.dataset(dataset_id)["image_shape"]) == [None, 8, 8]
    ds = load_stored_dataset(empty_lab.store.dataset(dataset_id))  # no model given: the stored shape is used
    assert ds.x_test.shape[1:] == (8, 8) and len(ds.y_train) + len(ds.y_test) == 20
    job = run_job(empty_lab, ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=("float32",),
                                           calibration_samples=8, bench=False))
    assert job.status is JobStatus.DONE, job.error
    with empty_lab.store.transaction() as cur:  # a row from before migration 0008
        cur.execute("UPDATE datasets SET image_shape = NULL WHERE id = ?", [dataset_id])
    with pytest.raises(QlabError, match="input shape"):
        load_stored_dataset(empty_lab.store.dataset(dataset_id))
    assert load_stored_dataset(empty_lab.store.dataset(dataset_id), None, (None, 8, 8)).x_test.shape[1:] == (8, 8)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_files_private_and_tokens_out_of_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data dir is 0700, the DB 0600, and a board token lives in its own 0600 file, not in the DB."""
    data = tmp_path / "data"
    monkeypatch.setenv("QLAB_DATA_DIR", str(data))
    db = data / "qlab.duckdb"
    with Store(db) as store:
        store.add_board("imx", "http://10.0.0.5:8765", "s3cret-token-value")
        assert store.board_token("imx") == ("http://10.0.0.5:8765", "s3cret-token-value")
        assert store.boards()[0].has_token
        token_files = list(store.token_dir.iterdir())
        assert len(token_files) == 1 and _mode(token_files[0]) == 0o600
        assert _mode(store.token_dir) == 0o700
        raw = store.query("SELECT token FROM boards")
        assert raw["token"].isna().all()
    assert _mode(data) == 0o700
    assert _mode(db) == 0o600
    assert b"s3cret-token-value" not in db.read_bytes()
    with Store(db) as store:
        store.remove_board("imx")
        assert list(store.token_dir.iterdir()) == []


def test_migration_0008_moves_existing_tokens(tmp_path: Path) -> None:
    """A store as it was before 0008 (token in the boards table) is migrated: the token moves to a
    0600 file and the column is blanked."""
    db = tmp_path / "old" / "qlab.duckdb"
    with Store(db) as store:
        with store.transaction() as cur:  # undo 0008's effect: the state of an older store
            cur.execute("INSERT INTO boards (name, url, token) VALUES ('lab', 'http://b:1', 'old-token')")
            cur.execute("DELETE FROM schema_migrations WHERE version = ?", [qstore.MIGRATION_0008])
        assert list(store.token_dir.glob("*")) == []
    with Store(db) as store:
        assert qstore.MIGRATION_0008 in store.applied_migrations()
        assert store.board_token("lab") == ("http://b:1", "old-token")
        assert store.query("SELECT token FROM boards")["token"].isna().all()
        (token_file,) = store.token_dir.iterdir()
        assert _mode(token_file) == 0o600


def test_upload_temp_names_are_unique(empty_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two writers of the same upload in one process never share a temp file (names are not pid-only)."""
    import os
    import threading

    seen: list[str] = []
    real = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append(str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        uploads.store_upload(empty_lab, b"same bytes" * 1000 + bytes([i]), ".npz")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and len(set(seen)) == 4
    assert not any(str(os.getpid()) == Path(s).name.split(".")[-2] for s in seen)
