"""Datasets: .npz in the Keras convention, image folders or zips, and the built-in digits."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qcore.qtyping import Dataset, DatasetRecord, LoadedModel, QlabError

log = logging.getLogger(__name__)

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# in a folder without train/ and test/ subfolders, every 5th image (by name) is held out for test
HOLDOUT_EVERY = 5
# a zip bigger than this once unpacked is refused (zip bombs)
MAX_UNZIPPED_BYTES = 2 << 30
# the arrays of one dataset may take at most this much memory once loaded (QLAB_MAX_DATASET_MB overrides)
MAX_DATASET_BYTES = 1 << 30
# an .npz member expanding more than this many times its compressed size, beyond 16 MB, is a bomb
# (real pixel data compresses 2-10x; 400 KB of zeros that declare 410 MB is 1000x)
MAX_NPZ_RATIO = 200
# an .npy header is a short dict literal (numpy writes a few hundred bytes); a longer declared length is
# refused before a byte of it is read, so a 1 MB .npz cannot make numpy read a 256 MB header of spaces
MAX_NPY_HEADER_BYTES = 64 * 1024
# image folders: at most this many images, this many source pixels each and in total
MAX_IMAGES = 200_000
MAX_IMAGE_PIXELS = 50_000_000
MAX_TOTAL_PIXELS = 4_000_000_000


def digits_dataset(input_scale: float = 1.0, input_offset: float = 0.0) -> Dataset:
    """scikit-learn's bundled 8×8 digits, pixels scaled to [0, 1]; first 80% train, last 20% test, file order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    split = int(len(x) * 0.8)
    return Dataset(
        name="digits",
        x_train=x[:split],
        y_train=y[:split],
        x_test=x[split:],
        y_test=y[split:],
        input_scale=input_scale,
        input_offset=input_offset,
        source="digits",
        class_names=tuple(str(i) for i in range(10)),
    )


def load_dataset(
    source: str | os.PathLike[str],
    *,
    input_scale: float = 1.0,
    input_offset: float = 0.0,
    input_shape: tuple[int | None, ...] | None = None,
) -> Dataset:
    """Reads labelled data.

    Args:
        source: "digits", an `.npz` with x_train, y_train, x_test, y_test, a folder of images in one
            subfolder per class (optionally under train/ and test/), or a `.zip` of such a folder.
        input_scale, input_offset: preprocessing, `float_input = x * input_scale + input_offset`.
        input_shape: the model's input shape; needed to resize images.

    Raises:
        QlabError: naming the file and the field or value at fault.
    """
    for name, value in (("input_scale", input_scale), ("input_offset", input_offset)):
        if not np.isfinite(value):
            raise QlabError(f"{name} must be a finite number, got {value}")
    if input_scale == 0:
        raise QlabError("input_scale must not be 0 (every input would become the offset)")
    if str(source) == "digits":
        return digits_dataset(input_scale, input_offset)
    p = Path(source)
    if not p.exists():
        raise QlabError(f"{p}: no such file or directory")
    if p.is_dir():
        ds = _load_folder(p, input_shape, name=p.name)
    elif p.suffix.lower() == ".npz":
        ds = _load_npz(p)
    elif p.suffix.lower() == ".zip":
        ds = _load_zip(p, input_shape)
    else:
        raise QlabError(f"{p}: unsupported data file {p.suffix!r}; give an .npz, a folder or a .zip of images")
    return Dataset(
        name=ds.name,
        x_train=ds.x_train,
        y_train=ds.y_train,
        x_test=ds.x_test,
        y_test=ds.y_test,
        input_scale=float(input_scale),
        input_offset=float(input_offset),
        source=str(p),
        class_names=ds.class_names,
    )


def max_dataset_bytes() -> int:
    """The memory cap for one dataset's arrays: QLAB_MAX_DATASET_MB, else MAX_DATASET_BYTES."""
    raw = os.environ.get("QLAB_MAX_DATASET_MB", "")
    return int(raw) * 1024 * 1024 if raw.isdigit() and int(raw) > 0 else MAX_DATASET_BYTES


def read_npy_header(f: Any, label: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """An .npy header read from a stream, at most MAX_NPY_HEADER_BYTES of it: the length field is checked
    before numpy reads the header (numpy's own reader reads whatever length the file declares first).

    Returns:
        (shape, dtype).

    Raises:
        QlabError: naming `label`, for a header longer than MAX_NPY_HEADER_BYTES.
        ValueError: for anything that is not an .npy header (numpy's words).
    """
    from numpy.lib import format as npy

    start = f.read(8)
    if len(start) < 8 or start[:6] != npy.MAGIC_PREFIX:
        raise ValueError("no .npy magic string at its start")
    major, minor = start[6], start[7]
    width = {1: 2, 2: 4, 3: 4}.get(major)
    if width is None:
        raise ValueError(f"unknown .npy format version {major}.{minor}")
    size = f.read(width)
    if len(size) < width:
        raise ValueError("the file ends inside its header length")
    length = int.from_bytes(size, "little")
    if length > MAX_NPY_HEADER_BYTES:
        raise QlabError(f"{label} declares a {length:,}-byte .npy header (at most {MAX_NPY_HEADER_BYTES:,} bytes): "
                        "refused unread")
    header = f.read(length)
    if len(header) < length:
        raise ValueError("the file ends inside its header")
    bounded = io.BytesIO(start + size + header)
    version = npy.read_magic(bounded)
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read(bounded, max_header_size=MAX_NPY_HEADER_BYTES)
    return tuple(int(d) for d in shape), dtype


def check_npz_headers(p: Path, max_bytes: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Reads each member's .npy header with numpy's own reader (no array data) and checks sizes.

    Returns:
        {array name: (shape, dtype)}.

    Raises:
        QlabError: naming the member that is not a plain .npy array, that would take more than
            `max_bytes` (summed), or that expands suspiciously far beyond its compressed size.
    """
    limit = max_dataset_bytes() if max_bytes is None else max_bytes
    out: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    total = 0
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                with zf.open(info) as f:
                    try:
                        shape, dtype = read_npy_header(f, f"{p}: member {info.filename!r}")
                    except ValueError as exc:
                        raise QlabError(f"{p}: member {info.filename!r} is not a plain .npy array ({exc})") from None
                if dtype.hasobject:
                    raise QlabError(f"{p}: {key} holds Python objects (dtype {dtype}); qlab reads numbers only")
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
                total += nbytes
                if total > limit:
                    raise QlabError(f"{p}: {key} of shape {shape} ({dtype}) takes {nbytes / 2**20:.0f} MB; the "
                                    f"dataset's arrays would exceed the {limit / 2**20:.0f} MB limit "
                                    "(QLAB_MAX_DATASET_MB)")
                if nbytes > 16 * 2**20 and nbytes > MAX_NPZ_RATIO * max(info.compress_size, 1):
                    raise QlabError(f"{p}: {key} expands from {info.compress_size} bytes to {nbytes} bytes "
                                    f"(over {MAX_NPZ_RATIO}x): refused as a decompression bomb")
                out[key] = (tuple(int(d) for d in shape), dtype)
    except QlabError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise QlabError(f"{p}: not a readable .npz file ({exc})") from None
    return out


def _load_npz(p: Path) -> Dataset:
    check_npz_headers(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise QlabError(
                    f"{p}: missing array(s) {', '.join(missing)}; an .npz needs {', '.join(NPZ_KEYS)} "
                    f"(found: {', '.join(z.files) or 'none'})"
                )
            arrays = {k: z[k] for k in NPZ_KEYS}
            class_names = tuple(str(c) for c in z["class_names"]) if "class_names" in z.files else ()
    except QlabError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise QlabError(f"{p}: not a readable .npz file ({exc})") from None
    x_train, x_test = (_check_x(p, k, arrays[k]) for k in ("x_train", "x_test"))
    y_train = _check_y(p, "y_train", arrays["y_train"], len(x_train))
    y_test = _check_y(p, "y_test", arrays["y_test"], len(x_test))
    if len(x_test) == 0:
        raise QlabError(f"{p}: x_test is empty; evaluation needs at least one test sample")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise QlabError(f"{p}: x_train samples have shape {x_train.shape[1:]} but x_test samples {x_test.shape[1:]}")
    return Dataset(p.stem, x_train, y_train, x_test, y_test, source=str(p), class_names=class_names)


def _check_x(p: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "fiub":
        raise QlabError(f"{p}: {key} has dtype {x.dtype}, expected numbers")
    if x.ndim < 2:
        raise QlabError(f"{p}: {key} has shape {x.shape}; expected (samples, ...features)")
    if x.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise QlabError(f"{p}: {key} contains {bad} NaN or infinite value(s)")
    return x


def _check_y(p: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot labels
        y = np.argmax(y, axis=1)
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1:
        raise QlabError(f"{p}: {key} has shape {y.shape}; expected one integer label per sample")
    if len(y) != n:
        raise QlabError(f"{p}: {key} has {len(y)} labels but x_{key[2:]} has {n} samples")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise QlabError(f"{p}: {key} must hold whole-number class labels")
    elif y.dtype.kind not in "iu":
        raise QlabError(f"{p}: {key} has dtype {y.dtype}, expected integer class labels")
    if len(y) and int(y.min()) < 0:
        raise QlabError(f"{p}: {key} has a negative label {int(y.min())}")
    return y.astype(np.int64)


def _image_mode_size(input_shape: tuple[int | None, ...] | None) -> tuple[str, tuple[int, int], int | None]:
    if input_shape is None:
        raise QlabError("reading an image folder needs the model's input shape to resize the images")
    dims = input_shape[1:]
    if len(dims) == 2:
        h, w, c = dims[0], dims[1], None
    elif len(dims) == 3:
        h, w, c = dims
    else:
        raise QlabError(f"model input shape {input_shape} is not an image (need (H, W) or (H, W, C))")
    if not h or not w:
        raise QlabError(f"model input shape {input_shape} has no fixed height and width to resize images to")
    mode = "RGB" if c == 3 else "L"
    if c not in (None, 1, 3):
        raise QlabError(f"model input has {c} channels; image folders give 1 (grayscale) or 3 (RGB)")
    return mode, (int(w), int(h)), c


def _image_files(root: Path, classes: list[str]) -> list[tuple[int, Path]]:
    files: list[tuple[int, Path]] = []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.is_symlink():
                files.append((label, f))
                if len(files) > MAX_IMAGES:
                    raise QlabError(f"{root}: more than {MAX_IMAGES} images; qlab reads at most that many")
    return files


def _read_images(root: Path, classes: list[str], mode: str, size: tuple[int, int], channels: int | None):
    from PIL import Image, UnidentifiedImageError

    # the pixel limits below refuse such an image in words naming its file; PIL's own warning at open would only
    # reach the server's terminal (its DecompressionBombError, at twice its limit, is still caught below)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    files = _image_files(root, classes)
    per_image = size[0] * size[1] * (channels or 1) * 4
    if len(files) * per_image > max_dataset_bytes():
        raise QlabError(f"{root}: {len(files)} images at {size[0]}x{size[1]} take {len(files) * per_image / 2**20:.0f} "
                        f"MB, over the {max_dataset_bytes() / 2**20:.0f} MB limit (QLAB_MAX_DATASET_MB)")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    names: list[str] = []
    pixels = 0
    for label, f in files:
        try:
            with Image.open(f) as im:  # reads the header only; the pixels are decoded below
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise QlabError(f"{f}: {w}x{h} pixels is over the {MAX_IMAGE_PIXELS} pixel limit per image")
                pixels += w * h
                if pixels > MAX_TOTAL_PIXELS:
                    raise QlabError(f"{root}: the images hold more than {MAX_TOTAL_PIXELS} pixels in total")
                arr = np.asarray(im.convert(mode).resize(size), dtype=np.float32)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise QlabError(f"{f}: not a readable image ({exc})") from None
        if mode == "L" and channels == 1:
            arr = arr[..., None]
        xs.append(arr)
        ys.append(label)
        names.append(f.name)
    return xs, ys, names


def _load_folder(root: Path, input_shape: tuple[int | None, ...] | None, name: str) -> Dataset:
    mode, size, channels = _image_mode_size(input_shape)
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / "train" if split_dirs else root
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise QlabError(f"{root}: no class subfolders found (expected one folder of images per class)")
    if split_dirs:
        xtr, ytr, _ = _read_images(root / "train", classes, mode, size, channels)
        xte, yte, _ = _read_images(root / "test", classes, mode, size, channels)
    else:
        xs, ys, _ = _read_images(root, classes, mode, size, channels)
        test_idx = set(range(HOLDOUT_EVERY - 1, len(xs), HOLDOUT_EVERY))
        xtr = [x for i, x in enumerate(xs) if i not in test_idx]
        ytr = [y for i, y in enumerate(ys) if i not in test_idx]
        xte = [x for i, x in enumerate(xs) if i in test_idx]
        yte = [y for i, y in enumerate(ys) if i in test_idx]
    if not xte:
        raise QlabError(f"{root}: found no test images (need at least {HOLDOUT_EVERY} images, or a test/ folder)")
    shape = xte[0].shape
    return Dataset(
        name=name,
        x_train=np.stack(xtr) if xtr else np.zeros((0, *shape), np.float32),
        y_train=np.asarray(ytr, dtype=np.int64),
        x_test=np.stack(xte),
        y_test=np.asarray(yte, dtype=np.int64),
        source=str(root),
        class_names=tuple(classes),
    )


def _load_zip(p: Path, input_shape: tuple[int | None, ...] | None) -> Dataset:
    from qcore.inputs.archives import extract_zip

    _image_mode_size(input_shape)  # refuse before unpacking anything
    with tempfile.TemporaryDirectory(prefix="qlab-zip-") as tmp:
        root = extract_zip(p, Path(tmp) / "images", max_bytes=MAX_UNZIPPED_BYTES, max_files=MAX_IMAGES + 1000,
                           name=str(p))
        entries = [d for d in root.iterdir() if not d.name.startswith(("__MACOSX", "."))]
        # a zip of one top folder holding the class folders
        if len(entries) == 1 and entries[0].is_dir():
            sub = [d for d in entries[0].iterdir() if d.is_dir()]
            if sub:
                root = entries[0]
        return _load_folder(root, input_shape, name=p.stem)


def check_fits(model: LoadedModel, dataset: Dataset) -> None:
    """Checks that the data fits the model: sample shape, label range, finite values.

    Raises:
        QlabError: naming both shapes, or the label or value at fault.
    """
    want = model.input_shape[1:]
    got = tuple(dataset.x_test.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
        raise QlabError(
            f"data {dataset.name!r} has samples of shape {got} but model {model.name!r} expects {want}"
        )
    n_out = model.output_shape[-1]
    for key, y in (("y_train", dataset.y_train), ("y_test", dataset.y_test)):
        if len(y) and n_out is not None and int(y.max()) >= n_out:
            raise QlabError(
                f"data {dataset.name!r}: {key} has label {int(y.max())} but model {model.name!r} has only "
                f"{n_out} outputs (labels must be 0..{n_out - 1})"
            )
    for key, x in (("x_train", dataset.x_train), ("x_test", dataset.x_test)):
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise QlabError(f"data {dataset.name!r}: {key} contains NaN or infinite values")


def dataset_sha256(dataset: Dataset) -> str:
    """A digest of the arrays' shapes, dtypes and bytes (not of the preprocessing)."""
    h = hashlib.sha256()
    for arr in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dataset_record(dataset: Dataset, *, stored_path: str | None = None,
                   image_shape: tuple[int | None, ...] | None = None) -> DatasetRecord:
    """A dataset as the owner registers it (its digest, preprocessing and sizes).

    Args:
        stored_path: the file later jobs read it from again (None: digits, or data only this process has).
        image_shape: the model input shape a folder or zip of images was read at.
    """
    return DatasetRecord(name=dataset.name, source=dataset.source or dataset.name, sha256=dataset_sha256(dataset),
                         input_scale=dataset.input_scale, input_offset=dataset.input_offset,
                         n_train=len(dataset.x_train), n_test=len(dataset.x_test), num_classes=dataset.num_classes,
                         stored_path=stored_path, image_shape=image_shape)


def save_npz(dataset: Dataset, path: str | os.PathLike[str]) -> None:
    """Writes the raw (unpreprocessed) arrays in the Keras convention."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {
        "x_train": dataset.x_train, "y_train": dataset.y_train, "x_test": dataset.x_test, "y_test": dataset.y_test,
    }
    if dataset.class_names:
        arrays["class_names"] = np.asarray(dataset.class_names)
    np.savez_compressed(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())


def load_stored_dataset(row: Mapping[str, Any], path: str | os.PathLike[str] | None = None,
                        model_shape: tuple[int | None, ...] | None = None) -> Dataset:
    """The data of a stored dataset row with its stored preprocessing.

    Args:
        row: the `datasets` row (name, source, stored_path, input_scale, input_offset, image_shape).
        path: where its file is now (a worker's copy); default the row's stored_path.
        model_shape: a model's input shape, for a zip of class folders stored before its image
            size was recorded.

    Raises:
        QlabError: when the file is gone, or the row has no data here (imported from a report).
    """
    import json

    scale, offset = float(row["input_scale"]), float(row["input_offset"])
    image_shape = row.get("image_shape")
    shape = (tuple(json.loads(image_shape)) if isinstance(image_shape, str) and image_shape
             else model_shape)
    stored = path or row.get("stored_path")
    if isinstance(stored, str | os.PathLike) and str(stored):
        if not Path(stored).exists():
            raise QlabError(f"dataset #{row.get('id')} ({row['name']}): its file is missing from the data directory")
        ds = load_dataset(stored, input_scale=scale, input_offset=offset, input_shape=shape)
    elif row.get("source") == "digits":
        ds = digits_dataset(input_scale=scale, input_offset=offset)
    else:
        raise QlabError(f"dataset #{row.get('id')} ({row['name']}) has no stored data here (imported from a "
                        "report?); upload its file on the Models & data page")
    return dataclasses.replace(ds, name=str(row["name"]))
