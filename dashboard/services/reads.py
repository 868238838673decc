"""Cached reads for the pages: `st.cache_data` keyed by the database and the widget values.

Every write in the dashboard happens in this server process (pages or the job runner), and
each write calls `clear()`, so a cached read is never stale.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.services import data_check
from qcore.boards import runs
from qcore.boards.runs import BoardHealth
from qcore.inputs.data import load_stored_dataset
from qcore.inputs.summary import summarize
from qcore.qtyping import Board, Inspection, QlabError
from qcore.store import Store
from qcore.tflite.inspection import inspect

_stores: dict[str, Store] = {}
_lock = threading.Lock()


def register(store: Store) -> str:
    """Makes a store readable under its path; returns that key."""
    key = str(store.path)
    with _lock:
        _stores[key] = store
    return key


def store_for(db: str) -> Store:
    with _lock:
        return _stores[db]


# bumped by every clear(): what the API's encoded answers are cached under (dashboard/api/routes.py)
_generation = 0


def clear() -> None:
    """Drops every cached read (after any write)."""
    global _generation
    with _lock:
        _generation += 1
    st.cache_data.clear()


def generation() -> int:
    """How many times the cached reads were dropped: a read cached under an older number may be stale."""
    with _lock:
        return _generation


def _ids(values: tuple[int, ...] | None) -> list[int] | None:
    return None if values is None else list(values)


@st.cache_data(show_spinner=False)
def models(db: str) -> pd.DataFrame:
    return store_for(db).models()


@st.cache_data(show_spinner=False)
def datasets(db: str) -> pd.DataFrame:
    return store_for(db).datasets()


@st.cache_data(show_spinner=False)
def variants(
    db: str, model_ids: tuple[int, ...] | None = None, variant_ids: tuple[int, ...] | None = None
) -> pd.DataFrame:
    """The /compare table: one row per variant (v_variant_summary)."""
    return store_for(db).variant_summary(model_ids=_ids(model_ids), variant_ids=_ids(variant_ids))


@st.cache_data(show_spinner=False)
def evaluations(db: str, variant_id: int) -> pd.DataFrame:
    return store_for(db).evaluations(variant_id)


@st.cache_data(show_spinner=False)
def confusions(db: str, variant_ids: tuple[int, ...], device: str = "host") -> dict[int, list[list[int]]]:
    store = store_for(db)
    out: dict[int, list[list[int]]] = {}
    for vid in variant_ids:
        matrix = store.confusion(vid, device)
        if matrix is not None:
            out[vid] = matrix
    return out


@st.cache_data(show_spinner=False)
def benchmarks(db: str, variant_ids: tuple[int, ...] | None = None, board: str | None = None) -> pd.DataFrame:
    return store_for(db).benchmarks(variant_ids=_ids(variant_ids), board=board)


@st.cache_data(show_spinner=False)
def board_evaluations(db: str, variant_ids: tuple[int, ...]) -> pd.DataFrame:
    """Latest evaluation per (variant, device), host and boards, for the accuracy-drift table."""
    return store_for(db).device_evaluations(variant_ids)


@st.cache_data(show_spinner=False)
def debug_runs(db: str, model_id: int | None = None) -> pd.DataFrame:
    return store_for(db).debug_runs(model_id)


@st.cache_data(show_spinner=False)
def layer_stats(db: str, debug_run_id: int) -> pd.DataFrame:
    return store_for(db).layer_stats(debug_run_id)


@st.cache_data(show_spinner=False)
def tune_runs(db: str, model_id: int | None = None) -> pd.DataFrame:
    return store_for(db).tune_runs(model_id)


@st.cache_data(show_spinner=False)
def tune_trials(db: str, tune_run_id: int) -> pd.DataFrame:
    return store_for(db).tune_trials(tune_run_id)


@st.cache_data(show_spinner=False)
def training_history(db: str, variant_id: int) -> pd.DataFrame:
    return store_for(db).training_history(variant_id)


@st.cache_data(show_spinner=False)
def boards(db: str) -> list[Board]:
    return store_for(db).boards()


@st.cache_data(show_spinner=False)
def reports(db: str) -> pd.DataFrame:
    return store_for(db).reports()


@st.cache_data(show_spinner=False)
def report(db: str, report_id: str) -> dict[str, Any]:
    return store_for(db).report(report_id)


@st.cache_data(show_spinner=False)
def inspection(db: str, variant_id: int) -> Inspection:
    """The op and tensor table and the NPU lint of a stored variant's .tflite."""
    row = store_for(db).variant(variant_id)
    if not row.get("path"):
        raise QlabError(f"variant #{variant_id} ({row['variant']}) has no .tflite: {row.get('error') or 'failed'}")
    return inspect(Path(str(row["path"])))


# board health is live data from the network: re-asked at most this often per server
HEALTH_TTL_S = 10


@st.cache_data(show_spinner=False, ttl=HEALTH_TTL_S)
def board_health(db: str) -> list[BoardHealth]:
    """Every registered board and what its agent answers now (unreachable ones say why)."""
    return runs.board_health(store_for(db), connect_timeout=2.0)


@st.cache_data(show_spinner=False)
def model_layers(db: str, model_id: int) -> list[tuple[str, str]]:
    """(layer name, layer class) of a stored Keras model, as a worker recorded them when it was added.

    Raises:
        QlabError: when no worker has read this model yet (a model stored by an older qlab).
    """
    summary = store_for(db).model_summary(int(model_id))
    if not summary or not summary.get("layers"):
        raise QlabError(f"model #{model_id}: its layers were not recorded when it was added; add its file "
                        "again on the Models & data page")
    return [(str(name), str(cls)) for name, cls in summary["layers"]]


@st.cache_data(show_spinner=False)
def dataset_profile(db: str, dataset_id: int) -> dict[str, Any]:
    """Sample shape, value range after preprocessing and label count of a stored dataset (no model loaded)."""
    return data_check.profile(load_stored_dataset(store_for(db).dataset(int(dataset_id))))


@st.cache_data(show_spinner=False, ttl=HEALTH_TTL_S)
def board_labels(db: str) -> pd.DataFrame:
    """Every board's labels (board, key, value, source)."""
    return store_for(db).board_labels()


@st.cache_data(show_spinner=False, ttl=HEALTH_TTL_S)
def health_history(db: str, limit: int) -> pd.DataFrame:
    """The last `limit` health checks per board."""
    return store_for(db).health_history(None, limit=limit)


@st.cache_data(show_spinner=False)
def pool_members(db: str, pool: str) -> list[str]:
    """Boards a pool query matches (QlabError for a bad query)."""
    return store_for(db).boards_matching(pool)


@st.cache_data(show_spinner=False)
def board_runs(db: str) -> pd.DataFrame:
    """Board runs, newest first, with their cell counts."""
    return store_for(db).board_runs(limit=30)


@st.cache_data(show_spinner=False)
def board_cells(db: str, run_id: int) -> pd.DataFrame:
    """The cells of one board run with their p50 or accuracy, and the reasons of failed ones."""
    return store_for(db).board_cells(run_id)


@st.cache_data(show_spinner=False)
def matrix_spread(db: str, run_id: int) -> pd.DataFrame:
    """p50 per board and min / median / max across the pool, per (variant, target) of a run."""
    return runs.matrix_spread(store_for(db), run_id)


@st.cache_data(show_spinner=False)
def model_summary(db: str, model_id: int) -> Any:
    """Layers, parameters, BatchNormalization and custom layers of a stored Keras model, read without loading it."""
    row = store_for(db).model(model_id)
    if row["format"] == "tflite":
        raise QlabError(f"model #{model_id} ({row['name']}) is tflite-only: see its variants on the Inspect page")
    return summarize(str(row["source_path"]))
