"""Datasets: .npz, image folders and zips, digits, and every bad input a user could send."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from qcore.inputs.data import check_fits, dataset_sha256, digits_dataset, load_dataset, save_npz
from qcore.qtyping import QlabError


def _npz(path, **arrays):
    base = dict(x_train=np.zeros((4, 8, 8), np.float32), y_train=np.arange(4),
                x_test=np.zeros((2, 8, 8), np.float32), y_test=np.arange(2))
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_digits_dataset_is_deterministic_file_order_split():
    a, b = digits_dataset(), digits_dataset()
    assert a.x_train.shape == (1437, 8, 8) and a.x_test.shape == (360, 8, 8)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert dataset_sha256(a) == dataset_sha256(b)
    assert a.num_classes == 10


def test_load_dataset_npz_roundtrip_and_preprocessing(tmp_path, digits):
    path = tmp_path / "d.npz"
    save_npz(digits, path)
    ds = load_dataset(path, input_scale=2.0, input_offset=-1.0)
    np.testing.assert_array_equal(ds.x_test, digits.x_test)
    np.testing.assert_allclose(ds.preprocess(ds.x_test[:1]), digits.x_test[:1] * 2 - 1, rtol=1e-6)
    np.testing.assert_array_equal(ds.calibration(3), ds.preprocess(ds.x_train[:3]))


def test_load_dataset_missing_file_names_it(tmp_path):
    with pytest.raises(QlabError, match="nope.npz: no such file"):
        load_dataset(tmp_path / "nope.npz")


def test_load_dataset_missing_key_names_the_key(tmp_path):
    path = _npz(tmp_path / "d.npz", y_test=None)
    with pytest.raises(QlabError, match="d.npz: missing array\\(s\\) y_test"):
        load_dataset(path)


def test_load_dataset_nan_is_refused_with_the_array_named(tmp_path):
    x = np.zeros((2, 8, 8), np.float32)
    x[1, 2, 3] = np.nan
    with pytest.raises(QlabError, match="x_test contains 1 NaN"):
        load_dataset(_npz(tmp_path / "d.npz", x_test=x))


def test_load_dataset_label_count_mismatch(tmp_path):
    with pytest.raises(QlabError, match="y_train has 3 labels but x_train has 4 samples"):
        load_dataset(_npz(tmp_path / "d.npz", y_train=np.arange(3)))


def test_load_dataset_negative_label(tmp_path):
    with pytest.raises(QlabError, match="negative label -1"):
        load_dataset(_npz(tmp_path / "d.npz", y_test=np.array([0, -1])))


def test_load_dataset_one_hot_labels_become_indices(tmp_path):
    ds = load_dataset(_npz(tmp_path / "d.npz", y_test=np.eye(3)[[2, 1]]))
    assert ds.y_test.tolist() == [2, 1]


def test_load_dataset_corrupt_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(QlabError, match="bad.npz: not a readable .npz"):
        load_dataset(path)


def test_load_dataset_zero_scale_is_refused():
    with pytest.raises(QlabError, match="input_scale must not be 0"):
        load_dataset("digits", input_scale=0.0)


def _image_folder(root, classes=("cat", "dog"), per_class=5, size=(12, 10)):
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size[1], size[0]), 40 * c + i, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_load_dataset_image_folder_resizes_and_holds_out_every_fifth(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    ds = load_dataset(root, input_shape=(None, 8, 8, 1), input_scale=1 / 255)
    assert ds.x_train.shape == (8, 8, 8, 1) and ds.x_test.shape == (2, 8, 8, 1)
    assert ds.class_names == ("cat", "dog")
    assert sorted(ds.y_test.tolist()) == [0, 1]


def test_load_dataset_zip_of_class_folders(tmp_path):
    root = _image_folder(tmp_path / "pets")
    zpath = tmp_path / "pets.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in root.rglob("*.png"):
            zf.write(f, f.relative_to(tmp_path))
    ds = load_dataset(zpath, input_shape=(None, 8, 8, 3))
    assert ds.x_test.shape[1:] == (8, 8, 3) and ds.num_classes == 2


def test_load_dataset_zip_with_path_traversal_is_refused(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../escape.png", b"x")
    with pytest.raises(QlabError, match="points outside the archive"):
        load_dataset(zpath, input_shape=(None, 8, 8))


def test_load_dataset_folder_without_classes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QlabError, match="no class subfolders"):
        load_dataset(tmp_path / "empty", input_shape=(None, 8, 8))


def test_check_fits_shape_mismatch_names_both_shapes(tmp_path, demo):
    ds = load_dataset(_npz(tmp_path / "d.npz", x_train=np.zeros((4, 28, 28)), x_test=np.zeros((2, 28, 28))))
    with pytest.raises(QlabError, match=r"shape \(28, 28\) but model .* expects \(8, 8\)"):
        check_fits(demo, ds)


def test_check_fits_labels_out_of_range(tmp_path, demo):
    ds = load_dataset(_npz(tmp_path / "d.npz", y_test=np.array([0, 12])))
    with pytest.raises(QlabError, match="y_test has label 12 but model .* has only 10 outputs"):
        check_fits(demo, ds)


@pytest.mark.parametrize("version", [1, 2])
def test_load_dataset_npy_header_longer_than_the_cap_refused_unread(tmp_path, version):
    """A member whose header length field claims more than MAX_NPY_HEADER_BYTES is refused from that field
    alone: the 1 MB of spaces behind it is never read (numpy's own reader would read it all first)."""
    from qcore.inputs.data import MAX_NPY_HEADER_BYTES

    claimed = MAX_NPY_HEADER_BYTES + 1 if version == 2 else 65_535
    width = 4 if version == 2 else 2
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x_train.npy", b"\x93NUMPY" + bytes([version, 0]) + claimed.to_bytes(width, "little")
                    + b" " * min(claimed, 2**20))
    if claimed <= MAX_NPY_HEADER_BYTES:  # a v1 header is at most 64 KiB by its format: read, then refused in words
        with pytest.raises(QlabError, match="bomb.npz: member 'x_train.npy' is not a plain .npy array"):
            load_dataset(path)
        return
    with pytest.raises(QlabError, match=f"member 'x_train.npy' declares a {claimed:,}-byte .npy header "
                                        f"\\(at most {MAX_NPY_HEADER_BYTES:,} bytes\\): refused unread"):
        load_dataset(path)
