"""Uploaded models and datasets: size-capped, kept under names qlab chooses (their sha256)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from dashboard.services import reads
from dashboard.services.lab import Lab
from qcore.qtyping import Dataset, JobStatus, QlabError

# the same cap as server.maxUploadSize in .streamlit/config.toml, checked again here
MAX_UPLOAD_MB = 200
MODEL_SUFFIXES = (".keras", ".h5", ".zip")
DATA_SUFFIXES = (".npz", ".zip")
# a worker loads an uploaded model; the page waits this long before leaving it to the job list
ADD_MODEL_TIMEOUT_S = 300.0
# a zipped SavedModel or image folder may not unpack to more than this
MAX_UNZIPPED_MB = 1024


def _check(filename: str, data: bytes, suffixes: tuple[str, ...], what: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in suffixes:
        raise QlabError(f"{filename}: a {what} must be one of {', '.join(suffixes)}, not {suffix or 'no suffix'}")
    if not data:
        raise QlabError(f"{filename}: the file is empty")
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise QlabError(f"{filename}: {len(data) / 2**20:.0f} MB is over the {MAX_UPLOAD_MB} MB upload limit")
    return suffix


def store_upload(the_lab: Lab, data: bytes, suffix: str) -> Path:
    """Writes the bytes as `<data>/uploads/<sha256><suffix>` (idempotent); returns the path."""
    folder = the_lab.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.exists():
        tmp = path.with_name(path.name + f".part{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def safe_extract(archive: Path, dest: Path) -> Path:
    """Unpacks a zip inside `dest`, refusing absolute paths, `..`, links and zip bombs.

    Raises:
        QlabError: naming the archive and the offending entry.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise QlabError(f"{archive.name}: not a zip file") from None
    with zf:
        total = 0
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or info.filename.startswith(("/", "\\")):
                raise QlabError(f"{archive.name}: entry {info.filename!r} points outside the archive")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise QlabError(f"{archive.name}: entry {info.filename!r} is a symbolic link")
            total += info.file_size
        if total > MAX_UNZIPPED_MB * 1024 * 1024:
            raise QlabError(f"{archive.name}: unpacks to {total / 2**20:.0f} MB, over {MAX_UNZIPPED_MB} MB")
        if not dest.exists():
            tmp = dest.with_name(dest.name + f".part{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            zf.extractall(tmp)
            os.replace(tmp, dest)
    return dest


def _savedmodel_root(folder: Path, filename: str) -> Path:
    found = sorted(p.parent for p in folder.rglob("saved_model.pb"))
    if not found:
        raise QlabError(f"{filename}: the zip holds no SavedModel (no saved_model.pb inside)")
    if len(found) > 1:
        raise QlabError(f"{filename}: the zip holds {len(found)} SavedModels; zip one")
    return found[0]


def add_model(the_lab: Lab, filename: str, data: bytes, name: str = "",
              timeout: float = ADD_MODEL_TIMEOUT_S) -> int:
    """Stores an uploaded `.keras`, `.h5` or zipped SavedModel and registers it, loaded by a worker.

    The web process never loads the model (an uploaded model is a program): a job reads it on
    a worker and records its layers and shapes.

    Returns:
        The model id (the same bytes twice give the same id).

    Raises:
        QlabError: for a wrong type, an empty or over-size file, or a model Keras cannot read.
    """
    suffix = _check(filename, data, MODEL_SUFFIXES, "model")
    path = store_upload(the_lab, data, suffix)
    source = path
    if suffix == ".zip":
        source = _savedmodel_root(safe_extract(path, path.with_suffix("")), filename)
    job_id = the_lab.runner.submit("add_model", {"filename": filename, "name": name},
                                   extra={"upload_path": str(source), "source_path": str(source)})
    try:
        status = the_lab.runner.wait(job_id, timeout=timeout)
    except TimeoutError:
        raise QlabError(f"{filename}: still loading after {timeout:.0f} s; it shows on the overview's job list "
                        "when done") from None
    job = the_lab.store.job(job_id)
    if status != JobStatus.DONE or not job.result:
        raise QlabError(job.error or f"{filename}: the model could not be added ({status})")
    reads.clear()
    return int(job.result["model_id"])


def add_dataset(the_lab: Lab, filename: str, data: bytes, *, input_scale: float, input_offset: float,
                name: str = "", for_model: int | None = None) -> int:
    """Stores an uploaded `.npz` (x_train, y_train, x_test, y_test) or zip of class folders and registers it.

    Args:
        for_model: a stored model whose input shape sizes the images of a zip of class folders.

    Raises:
        QlabError: for a wrong type, an empty or over-size file, or data qcore cannot read.
    """
    from qcore.data import load_dataset

    suffix = _check(filename, data, DATA_SUFFIXES, "dataset")
    path = store_upload(the_lab, data, suffix)
    shape = None
    if for_model is not None:
        shape = tuple(json.loads(the_lab.store.model(int(for_model))["input_shape"]))
    elif suffix == ".zip":
        raise QlabError(f"{filename}: images in a zip of class folders are resized to a model's input; "
                        "choose the model they are for")
    try:
        ds = load_dataset(path, input_scale=float(input_scale), input_offset=float(input_offset), input_shape=shape)
    except QlabError as exc:
        raise QlabError(str(exc).replace(str(path), filename)) from None
    return register_dataset(the_lab, ds, name=name.strip() or Path(filename).stem, source=filename,
                            stored_path=str(path))


def add_digits(the_lab: Lab, *, input_scale: float, input_offset: float) -> int:
    """Registers scikit-learn's bundled digits with this preprocessing."""
    from qcore.data import digits_dataset

    ds = digits_dataset(input_scale=float(input_scale), input_offset=float(input_offset))
    return register_dataset(the_lab, ds, name="digits", source="digits", stored_path=None)


def register_dataset(the_lab: Lab, ds: Dataset, *, name: str, source: str, stored_path: str | None) -> int:
    """Registers loaded data; the same data and preprocessing give the same id."""
    from qcore.data import dataset_sha256

    dataset_id = the_lab.store.add_dataset(
        name=name, source=source, sha256=dataset_sha256(ds), input_scale=float(ds.input_scale),
        input_offset=float(ds.input_offset), n_train=len(ds.y_train), n_test=len(ds.y_test),
        num_classes=int(ds.num_classes), stored_path=stored_path,
    )
    reads.clear()
    return dataset_id
