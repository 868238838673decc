"""Uploaded models and datasets: size-capped, kept under names qlab chooses (their sha256)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dashboard.services import access, reads
from dashboard.services.lab import Lab
from qcore.inputs.archives import extract_zip
from qcore.inputs.data import dataset_sha256, digits_dataset, load_dataset
from qcore.jobs.contract import AddModelParams, ImportTfliteParams
from qcore.lab.import_tflite import check_tflite_bytes
from qcore.qtyping import Dataset, JobStatus, QlabError, Role
from qcore.store import write_atomic
from qcore.store.accounts import LOCAL_USER, Principal

# who acts when a caller names nobody (scripts and tests on one machine)
LOCAL_ADMIN = Principal(email=LOCAL_USER, role=Role.ADMIN)

# the same cap as server.maxUploadSize in .streamlit/config.toml, checked again here
MAX_UPLOAD_MB = 200
MODEL_SUFFIXES = (".keras", ".h5", ".zip")
DATA_SUFFIXES = (".npz", ".zip")
# a worker loads an uploaded model; the page waits this long before leaving it to the job list
ADD_MODEL_TIMEOUT_S = 300.0
TFLITE_SUFFIXES = (".tflite",)
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


def store_upload(the_lab: Lab, data: bytes, suffix: str) -> tuple[Path, bool]:
    """Writes the bytes as `<data>/uploads/<sha256><suffix>` (idempotent).

    Returns:
        (the path, whether this call created it), so a refused upload can be removed again.
    """
    folder = the_lab.data_dir / "uploads"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if path.exists():
        return path, False
    write_atomic(path, data)
    return path, True


def unpacked_dir(archive: Path) -> Path:
    """Where a zipped upload is unpacked: `<sha256>.unzipped`, a name with a dot, so nothing in it can
    ever be imported as a Python package even if the data directory were on sys.path."""
    return archive.with_name(archive.stem + ".unzipped")


def safe_extract(archive: Path, dest: Path, name: str | None = None) -> Path:
    """Unpacks a zip inside `dest`, refusing absolute paths, `..`, links, zip bombs and lying sizes.

    Raises:
        QlabError: naming the archive and the offending entry; nothing is left behind.
    """
    return extract_zip(archive, dest, max_bytes=MAX_UNZIPPED_MB * 1024 * 1024, name=name)


def _discard(path: Path, created: bool) -> None:
    """Removes a refused upload (and what was unpacked from it) if this request stored it."""
    if not created:
        return
    path.unlink(missing_ok=True)
    shutil.rmtree(unpacked_dir(path), ignore_errors=True)


def _savedmodel_root(folder: Path, filename: str) -> Path:
    found = sorted(p.parent for p in folder.rglob("saved_model.pb"))
    if not found:
        raise QlabError(f"{filename}: the zip holds no SavedModel (no saved_model.pb inside)")
    if len(found) > 1:
        raise QlabError(f"{filename}: the zip holds {len(found)} SavedModels; zip one")
    return found[0]


def add_model(the_lab: Lab, filename: str, data: bytes, name: str = "", *, trusted: bool = False,
              timeout: float = ADD_MODEL_TIMEOUT_S, who: Principal | None = None) -> int:
    """Stores an uploaded `.keras`, `.h5` or zipped SavedModel and registers it, loaded by a worker.

    The web process never loads the model (an uploaded model is a program): a job inspects and
    loads it on a worker and records its layers and shapes.

    Args:
        trusted: an admin vouched for this file: skip the checks that refuse Lambda layers,
            custom objects and file/process graph ops (they then run when the model loads).

    Returns:
        The model id (the same bytes twice give the same id).

    Raises:
        QlabError: for a wrong type, an empty or over-size file, a model Keras cannot read, or one
            refused by the loading policy (`qcore.inputs.safety`). A refused upload is deleted.
        access.Refused: for a viewer, or a trusted upload by someone who is not an admin.
    """
    who = who or LOCAL_ADMIN
    access.check(who, access.Action.UPLOAD, what="adding a model")
    if trusted:
        access.check(who, access.Action.TRUST, what="a trusted upload")
    suffix = _check(filename, data, MODEL_SUFFIXES, "model")
    stored, created = store_upload(the_lab, data, suffix)
    try:
        path = stored
        if suffix == ".zip":
            path = _savedmodel_root(safe_extract(stored, unpacked_dir(stored), filename), filename)
        job_id = the_lab.runner.submit(AddModelParams(filename=filename, name=name, trusted=trusted),
                                       extra={"upload_path": str(path), "source_path": str(path)})
        try:
            status = the_lab.runner.wait(job_id, timeout=timeout)
        except TimeoutError:
            raise QlabError(f"{filename}: still loading after {timeout:.0f} s; it shows on the overview's job "
                            "list when done") from None
        job = the_lab.store.job(job_id)
        if status != JobStatus.DONE or not job.result:
            raise QlabError(job.error or f"{filename}: the model could not be added ({status})")
    except QlabError:
        _discard(stored, created)
        raise
    reads.clear()
    return int(job.result["model_id"])


def add_tflite(the_lab: Lab, filename: str, data: bytes, *, reference: tuple[str, bytes] | None = None,
               name: str = "", dataset_id: int | None = None, who: Principal | None = None) -> int:
    """Stores an uploaded `.tflite` (and its float reference) and queues the job that imports them.

    Only the cheap checks run here (suffix, size, TFL3 identifier), so the web process never
    loads LiteRT for an upload; parsing, running and scoring happen in the job.

    Args:
        reference: (file name, bytes) of a float `.tflite` of the same network, or None.
        dataset_id: a stored dataset (it carries the input preprocessing) to evaluate on, or None.
        who: who uploads (the role check and the per-person job limit of `access.submit`); None: the
            local admin (scripts and tests).

    Returns:
        The id of the `import_tflite` job.

    Raises:
        QlabError: naming the file for a wrong type, an empty or over-size file, or no TFL3 identifier.
        access.Refused: for a viewer, or a person at their limit of active jobs.
    """
    who = who or LOCAL_ADMIN
    access.check(who, access.Action.UPLOAD, what="importing a .tflite")
    files = [(filename, data), *([reference] if reference is not None else [])]
    for fname, body in files:
        _check(fname, body, TFLITE_SUFFIXES, ".tflite model")
        check_tflite_bytes(body, fname)
    stored = [store_upload(the_lab, body, ".tflite") for _, body in files]
    params = ImportTfliteParams(
        filename=filename, path=str(stored[0][0]), name=name.strip(),
        dataset_id=None if dataset_id is None else int(dataset_id),
        reference_filename=reference[0] if reference is not None else "",
        reference_path=str(stored[1][0]) if reference is not None else "",
    )
    try:
        return access.submit(the_lab, who, params)
    finally:
        # the job carries the bytes (inputs travel inside it) and a kept variant is its blob: what this
        # request wrote under uploads/ is needed no more, least of all when the import is refused
        for path, created in stored:
            _discard(path, created)


def add_dataset(the_lab: Lab, filename: str, data: bytes, *, input_scale: float, input_offset: float,
                name: str = "", for_model: int | None = None, who: Principal | None = None) -> int:
    """Stores an uploaded `.npz` (x_train, y_train, x_test, y_test) or zip of class folders and registers it.

    Args:
        for_model: a stored model whose input shape sizes the images of a zip of class folders.

    Raises:
        QlabError: for a wrong type, an empty or over-size file, or data qcore cannot read.
        access.Refused: for a viewer.
    """
    access.check(who or LOCAL_ADMIN, access.Action.UPLOAD, what="adding a dataset")
    suffix = _check(filename, data, DATA_SUFFIXES, "dataset")
    shape = None
    if for_model is not None:
        shape = tuple(json.loads(the_lab.store.model(int(for_model))["input_shape"]))
    elif suffix == ".zip":
        raise QlabError(f"{filename}: images in a zip of class folders are resized to a model's input; "
                        "choose the model they are for")
    path, created = store_upload(the_lab, data, suffix)
    try:
        ds = load_dataset(path, input_scale=float(input_scale), input_offset=float(input_offset), input_shape=shape)
    except QlabError as exc:
        _discard(path, created)
        raise QlabError(str(exc).replace(str(path), filename)) from None
    return register_dataset(the_lab, ds, name=name.strip() or Path(filename).stem, source=filename,
                            stored_path=str(path), input_shape=shape)


def add_digits(the_lab: Lab, *, input_scale: float, input_offset: float, who: Principal | None = None) -> int:
    """Registers scikit-learn's bundled digits with this preprocessing (refused to a viewer)."""
    access.check(who or LOCAL_ADMIN, access.Action.UPLOAD, what="adding a dataset")
    ds = digits_dataset(input_scale=float(input_scale), input_offset=float(input_offset))
    return register_dataset(the_lab, ds, name="digits", source="digits", stored_path=None)


def register_dataset(the_lab: Lab, ds: Dataset, *, name: str, source: str, stored_path: str | None,
                     input_shape: tuple[int | None, ...] | None = None) -> int:
    """Registers loaded data; the same data and preprocessing give the same id.

    Args:
        input_shape: the model input shape images were resized to (kept, so every job reads a zip of
            class folders at the same size).
    """
    dataset_id = the_lab.store.add_dataset(
        name=name, source=source, sha256=dataset_sha256(ds), input_scale=float(ds.input_scale),
        input_offset=float(ds.input_offset), n_train=len(ds.y_train), n_test=len(ds.y_test),
        num_classes=int(ds.num_classes), stored_path=stored_path, image_shape=input_shape,
    )
    reads.clear()
    return dataset_id
