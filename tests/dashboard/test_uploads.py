"""Uploads: size-capped, stored under sha256 names, one clear error per bad file."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard.services import uploads
from dashboard.services.lab import Lab
from qcore.qtyping import QlabError


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_add_model_h5_stored_under_its_sha(empty_lab: Lab, demo_h5: Path) -> None:
    data = demo_h5.read_bytes()
    model_id = uploads.add_model(empty_lab, "my model.h5", data, name="")
    row = empty_lab.store.model(model_id)
    assert row["name"] == "my model"
    assert row["format"] == "h5"
    stored = Path(row["source_path"])
    assert stored.parent == empty_lab.data_dir / "uploads"
    assert stored.name == f"{row['sha256']}.h5"
    assert uploads.add_model(empty_lab, "again.h5", data) == model_id  # same bytes, same model
    assert len(list((empty_lab.data_dir / "uploads").iterdir())) == 1


@pytest.mark.slow
def test_add_model_zipped_savedmodel(empty_lab: Lab, demo_h5: Path, tmp_path: Path) -> None:
    import tf_keras

    model = tf_keras.models.load_model(demo_h5, compile=False)
    saved = tmp_path / "exported"
    model.save(saved, save_format="tf")
    entries = {f"exported/{p.relative_to(saved)}": p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    model_id = uploads.add_model(empty_lab, "exported.zip", _zip(entries))
    row = empty_lab.store.model(model_id)
    assert row["format"] == "savedmodel"
    assert (Path(row["source_path"]) / "saved_model.pb").exists()


def test_add_model_wrong_suffix(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match=r"model.pt: a model must be one of .keras, .h5, .zip, not .pt"):
        uploads.add_model(empty_lab, "model.pt", b"weights")


def test_add_model_empty_file(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match="model.h5: the file is empty"):
        uploads.add_model(empty_lab, "model.h5", b"")


def test_add_model_over_the_cap(empty_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "MAX_UPLOAD_MB", 1)
    with pytest.raises(QlabError, match="over the 1 MB upload limit"):
        uploads.add_model(empty_lab, "big.h5", b"x" * (2 * 1024 * 1024))
    assert not (empty_lab.data_dir / "uploads").exists()


def test_add_model_garbage_h5_names_the_users_file(empty_lab: Lab) -> None:
    with pytest.raises(QlabError) as err:
        uploads.add_model(empty_lab, "broken.h5", b"this is not HDF5")
    assert str(err.value).startswith("broken.h5: cannot read this model")
    assert str(empty_lab.data_dir) not in str(err.value)
    assert empty_lab.store.models().empty


def test_add_model_zip_with_path_traversal(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match=r"entry '../../evil.pb' points outside the archive"):
        uploads.add_model(empty_lab, "model.zip", _zip({"../../evil.pb": b"x"}))


def test_add_model_zip_with_symlink(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match="is a symbolic link"):
        uploads.add_model(empty_lab, "model.zip", _zip({"m/saved_model.pb": b"x"}, symlink="m/link"))


def test_add_model_zip_without_savedmodel(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match="the zip holds no SavedModel"):
        uploads.add_model(empty_lab, "model.zip", _zip({"readme.txt": b"hello"}))


def test_add_model_zip_that_is_not_a_zip(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match="not a zip file"):
        uploads.add_model(empty_lab, "model.zip", b"PK but not really")


def test_add_dataset_npz_with_preprocessing(empty_lab: Lab, digits_npz: Path) -> None:
    dataset_id = uploads.add_dataset(empty_lab, "digits.npz", digits_npz.read_bytes(), input_scale=0.5,
                                     input_offset=-1.0)
    row = empty_lab.store.dataset(dataset_id)
    assert (row["input_scale"], row["input_offset"]) == (0.5, -1.0)
    assert (row["n_train"], row["n_test"], row["num_classes"]) == (1437, 360, 10)
    assert Path(row["stored_path"]).name.endswith(".npz")


def test_add_dataset_npz_missing_keys(empty_lab: Lab) -> None:
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((2, 8, 8)), y_train=np.zeros(2))
    with pytest.raises(QlabError) as err:
        uploads.add_dataset(empty_lab, "half.npz", buf.getvalue(), input_scale=1.0, input_offset=0.0)
    assert "half.npz" in str(err.value) and "x_test" in str(err.value)


def test_add_dataset_wrong_suffix(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match="a dataset must be one of .npz, .zip"):
        uploads.add_dataset(empty_lab, "data.csv", b"a,b", input_scale=1.0, input_offset=0.0)


def _pets() -> bytes:
    entries = {}
    for label in ("cat", "dog"):
        for i in range(5):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
            entries[f"{label}/{i}.png"] = buf.getvalue()
    return _zip(entries)


def test_add_dataset_zip_of_class_folders_sized_for_a_model(empty_lab: Lab, demo_h5: Path) -> None:
    model_id = uploads.add_model(empty_lab, "demo.h5", demo_h5.read_bytes())
    dataset_id = uploads.add_dataset(empty_lab, "pets.zip", _pets(), input_scale=1 / 255, input_offset=0.0,
                                     for_model=model_id)
    row = empty_lab.store.dataset(dataset_id)
    assert row["num_classes"] == 2
    assert row["n_train"] + row["n_test"] == 10


def test_add_dataset_zip_of_class_folders_without_a_model(empty_lab: Lab) -> None:
    with pytest.raises(QlabError, match="pets.zip: images in a zip of class folders are resized"):
        uploads.add_dataset(empty_lab, "pets.zip", _pets(), input_scale=1.0, input_offset=0.0)


def test_add_digits_registers_once_per_preprocessing(empty_lab: Lab) -> None:
    a = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    b = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    c = uploads.add_digits(empty_lab, input_scale=2.0, input_offset=0.0)
    assert a == b != c


def test_add_model_keras3_file(empty_lab: Lab, tmp_path: Path) -> None:
    import keras  # Keras 3, beside tf_keras

    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path / "k3.keras"
    model.save(path)
    row = empty_lab.store.model(uploads.add_model(empty_lab, "k3.keras", path.read_bytes()))
    assert (row["format"], row["keras_major"]) == ("keras", 3)
