"""What /layers shows: the variant's per-op cost-vs-error table, its node-data zip and the Model Explorer command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.services import debug_view
from dashboard.services.reads import store_for
from qcore.lab import op_cost
from qcore.qtyping import OpCost

# columns of the on-screen table, in order, with the headers the user sees
TABLE_COLUMNS = {
    "op_index": "op", "layer": "layer", "op_type": "op type", "rmse_scale": "rmse/scale", "range": "range",
    "error_match": "error matched by", "time_ms": "time (ms)", "time_share": "share of time",
    "time_source": "time from", "mapped_by": "time matched by",
    "float_on_cpu_ms": "kept float on CPU (ms)", "float_extra_ms": "extra if float (ms)",
    "float_cost_source": "float cost from", "npu_ddr_mb": "NPU DDR (MB)", "macs": "MACs",
    "output_tensor": "output tensor",
}


@dataclass(frozen=True)
class LayerCostView:
    """Everything the page renders for one variant and one time choice."""

    cost: OpCost
    # where the error column comes from: "debugger run #3 (TF converter, int8)", or "no debugger run"
    error_source: str
    # the engine of that run: its metric gives the scale, reference line and suspect threshold
    error_engine: str | None
    table: pd.DataFrame
    zip_bytes: bytes
    zip_name: str
    explorer_installed: bool
    explorer_command: str
    explorer_link: str | None  # opens a local Model Explorer server with the files loaded (package installed)
    explorer_server: str  # the command that starts that server


@st.cache_data(show_spinner=False)
def choices(db: str, variant_id: int) -> dict[str, tuple[str, str]]:
    """label → (board, target) of every stored per-op profile of the variant, then the host estimate."""
    return {c.label: (c.board, c.target) for c in op_cost.time_choices(store_for(db), int(variant_id))}


@st.cache_data(show_spinner=False)
def load(db: str, variant_id: int, board: str, target: str, data_dir: str) -> LayerCostView:
    """The joined table, ready to show, plus the Model Explorer files for the same rows.

    With `ai-edge-model-explorer` installed, the files are also written under
    `<data_dir>/node_data/` so a Model Explorer server on this machine can open them by link.
    """
    store = store_for(db)
    cost = op_cost.op_cost(store, int(variant_id), board=board, target=None if board == "host" else target)
    row = store.variant(int(variant_id))
    tflite = str(row["path"]) if row.get("path") else str(store.blob_path(str(row["sha256"])))
    names = [f"{op_cost.file_stem(cost.variant)}.{m}.json" for m in op_cost.node_data(cost)]
    link = None
    if op_cost.explorer_installed():
        folder = Path(data_dir) / "node_data" / op_cost.file_stem(f"{variant_id}-{cost.board}-{cost.target}")
        link = op_cost.explorer_link(tflite, op_cost.write_node_data(cost, folder))
    return LayerCostView(
        cost=cost,
        error_source=error_source(store.debug_runs(int(row["model_id"])), cost.debug_run_id),
        error_engine=run_engine(store.debug_runs(int(row["model_id"])), cost.debug_run_id),
        table=display_table(cost),
        zip_bytes=op_cost.node_data_zip(cost),
        zip_name=f"{op_cost.file_stem(cost.variant)}-node-data.zip",
        explorer_installed=op_cost.explorer_installed(),
        explorer_command=op_cost.explorer_command(tflite, names),
        explorer_link=link,
        explorer_server=f"model-explorer --no_open_in_browser --port {op_cost.EXPLORER_PORT}",
    )


def display_table(cost: OpCost) -> pd.DataFrame:
    """The table with readable headers, time share in percent, sorted by share of time (sortable on screen)."""
    df = cost.table[[c for c in TABLE_COLUMNS if c in cost.table]].copy()
    df["time_share"] = df["time_share"] * 100
    df = df.sort_values("time_share", ascending=False, na_position="last")
    return df.rename(columns=TABLE_COLUMNS)


def error_source(runs: pd.DataFrame, run_id: int | None) -> str:
    """The debugger run behind the error column, named with the engine that made it."""
    hit = runs[runs["id"] == run_id] if run_id is not None and not runs.empty else runs.iloc[0:0]
    if hit.empty:
        return "no debugger run"
    run = hit.iloc[0]
    recipe = debug_view.settings(run).get("recipe", "?")
    return f"debugger run #{run_id} ({debug_view.engine_name(debug_view.run_engine(run))}, {recipe})"


def run_engine(runs: pd.DataFrame, run_id: int | None) -> str | None:
    """The engine of the debugger run behind the error column, None without one."""
    hit = runs[runs["id"] == run_id] if run_id is not None and not runs.empty else runs.iloc[0:0]
    return None if hit.empty else debug_view.run_engine(hit.iloc[0])


def caption(view: LayerCostView) -> str:
    cost = view.cost
    where = "this host" if cost.board == "host" else f"{cost.board} / {cost.target}"
    return (f"time on {where} · source: **{cost.time_source}** · total {cost.total_ms:.3f} ms · "
            f"error from {view.error_source}")


def unmapped(cost: OpCost) -> Any:
    return cost.unmapped.rename(columns={"node_type": "node", "time_ms": "time (ms)", "why": "why not per op"})
