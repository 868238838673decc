"""What a job reads, gathered by the owner: rows from the store and bytes from the data directory.

Inputs travel to the worker inside the `JobSpec` (never as a path on the server's disk). Most come
from the params' fields (model_id, dataset_id, variant ids, board); a kind that reads more names it
in `EXTRA`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from qcore.jobs.contract import JobKind
from qcore.jobs.tasks import baseline_name, zip_dir
from qcore.qtyping import QlabError
from qcore.serialize import to_json
from qcore.store import Store

Files = dict[str, tuple[str, bytes]]
Rows = dict[str, dict[str, Any]]

def _model_file(store: Store, row: dict[str, Any]) -> tuple[str, bytes] | None:
    source = str(row.get("source_path") or "")
    if not source or row.get("format") == "tflite":
        return None
    path = Path(source)
    if path.is_dir():
        return f"{path.name or 'saved_model'}.zip", zip_dir(path)
    if not path.exists():
        raise QlabError(f"model #{row['id']} ({row['name']}): its file {path.name} is missing from the data directory")
    return path.name, path.read_bytes()


def _dataset_entry(store: Store, dataset_id: int, model_row: dict[str, Any] | None
                   ) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    row = _plain(store.dataset(int(dataset_id)))
    stored = row.get("stored_path")
    if model_row is not None:
        row["input_shape"] = _json_list(model_row.get("input_shape"))
    if isinstance(stored, str) and stored and Path(stored).exists():
        return row, (Path(stored).name, Path(stored).read_bytes())
    if row.get("source") != "digits":
        raise QlabError(f"dataset #{dataset_id} ({row['name']}): its file is missing from the data directory")
    return row, None


def _variant_entry(store: Store, variant_id: int) -> tuple[dict[str, Any], tuple[str, bytes]]:
    row = _plain(store.variant(int(variant_id)))
    if row.get("status") != "ok" or not row.get("sha256"):
        raise QlabError(f"variant #{variant_id} ({row.get('variant')}) has no .tflite: {row.get('error') or 'failed'}")
    path = Path(str(row["path"])) if row.get("path") else store.blob_path(str(row["sha256"]))
    if not path.exists():
        raise QlabError(f"variant #{variant_id}: its file {path.name} is missing from the data directory")
    return row, (f"{row['sha256']}.tflite", path.read_bytes())


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A store row with numpy and pandas values made plain (it travels to a worker)."""
    return dict(json.loads(to_json({str(k): (None if _missing(v) else v) for k, v in row.items()})))


def _missing(value: Any) -> bool:
    if isinstance(value, list | tuple | dict):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _json_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(json.loads(value)) if isinstance(value, str) else list(value)


def _add_dataset(store: Store, files: Files, rows: Rows, role: str, dataset_id: int,
                 model_row: dict[str, Any] | None) -> None:
    rows[role], data_file = _dataset_entry(store, dataset_id, model_row)
    if data_file is not None:
        files[role] = data_file


# ---------------------------------------------------------------- what some kinds read beyond their ids
def _compare_tensors(store: Store, params: Any, files: Files, rows: Rows, extra: dict[str, Any]) -> None:
    """The float variant's dataset gives the samples."""
    frow = rows[f"variant:{int(params.float_variant_id)}"]
    _add_dataset(store, files, rows, "dataset", int(frow["dataset_id"]), None)


def _selective(store: Store, params: Any, files: Files, rows: Rows, extra: dict[str, Any]) -> None:
    """The plain recipe's variant to compare with, when the store has it (else the job makes it)."""
    summary = store.variant_summary(model_ids=[int(params.model_id)])
    same = summary[(summary["dataset_id"] == int(params.dataset_id)) & (summary["variant"] == baseline_name(params))
                   & (summary["status"] == "ok")]
    rows["baseline"] = {"variant_id": int(same["variant_id"].iloc[0]) if len(same) else None}


def _import_tflite(store: Store, params: Any, files: Files, rows: Rows, extra: dict[str, Any]) -> None:
    """The uploaded .tflite and its float reference."""
    for role, name, path in (("tflite", params.filename, params.path),
                             ("reference", params.reference_filename, params.reference_path)):
        if path:
            if not Path(path).is_file():
                raise QlabError(f"{name}: the uploaded file is gone")
            files[role] = (name, Path(path).read_bytes())


def _add_model(store: Store, params: Any, files: Files, rows: Rows, extra: dict[str, Any]) -> None:
    """The uploaded model file (a SavedModel folder goes zipped)."""
    upload = Path(str(extra.get("upload_path", "")))
    if not upload.exists():
        raise QlabError(f"{params.filename}: the uploaded file is gone")
    rows["upload"] = {"path": str(extra.get("source_path") or upload)}
    files["model"] = (params.filename if upload.is_file() else f"{upload.name}.zip",
                      upload.read_bytes() if upload.is_file() else zip_dir(upload))


EXTRA: dict[JobKind, Callable[[Store, Any, Files, Rows, dict[str, Any]], None]] = {
    JobKind.COMPARE_TENSORS: _compare_tensors,
    JobKind.SELECTIVE: _selective,
    JobKind.IMPORT_TFLITE: _import_tflite,
    JobKind.ADD_MODEL: _add_model,
}


def gather_inputs(store: Store, kind: JobKind, params: Any, extra: dict[str, Any] | None = None
                  ) -> tuple[Files, Rows]:
    """The bytes and rows a job of this kind reads, from the store and the data directory.

    Args:
        extra: owner-side facts a kind needs (an upload's path for add_model).

    Raises:
        QlabError: for a missing model, dataset, variant, board or file, naming it.
    """
    files: Files = {}
    rows: Rows = {}
    model_row = None
    if getattr(params, "model_id", None) is not None:
        model_row = _plain(store.model(int(params.model_id)))
        rows["model"] = model_row
        model_file = _model_file(store, model_row)
        if model_file is not None:
            files["model"] = model_file
    if getattr(params, "dataset_id", None) is not None:  # a .tflite import may come without data
        _add_dataset(store, files, rows, "dataset", int(params.dataset_id), model_row)
    variant_ids: list[int] = list(getattr(params, "variant_ids", ()) or ())
    variant_ids += [int(getattr(params, name)) for name in ("float_variant_id", "quant_variant_id")
                    if getattr(params, name, None) is not None]
    for vid in variant_ids:
        rows[f"variant:{vid}"], files[f"variant:{vid}"] = _variant_entry(store, vid)
    if kind in EXTRA:
        EXTRA[kind](store, params, files, rows, extra or {})
    return files, rows
