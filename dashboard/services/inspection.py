"""Tables of an `Inspection` for /inspect: one row per op, one row per tensor."""

from __future__ import annotations

import pandas as pd

from dashboard.services import layers
from qcore.qtyping import Inspection

# a per-channel tensor has one scale per output channel; show a few and the count
MAX_SCALES_SHOWN = 3


def _first(values: tuple[float, ...] | tuple[int, ...]) -> str:
    if not values:
        return ""
    shown = ", ".join(f"{v:.6g}" for v in values[:MAX_SCALES_SHOWN])
    return shown + (f", … ({len(values)} channels)" if len(values) > MAX_SCALES_SHOWN else "")


def ops_table(info: Inspection) -> pd.DataFrame:
    names = {t.index: t.name for t in info.tensors}
    return pd.DataFrame(
        [{"#": op.index,
          "layer": layers.short_name(names.get(op.outputs[0], ""), info.output_names) if op.outputs else "",
          "op": op.name, "computes in": "float" if op.is_float else "integer",
          "inputs": ", ".join(names.get(i, str(i)) for i in op.inputs if i >= 0),
          "outputs": ", ".join(names.get(i, str(i)) for i in op.outputs)} for op in info.ops],
        columns=["#", "layer", "op", "computes in", "inputs", "outputs"],
    )


def op_counts(ops: pd.DataFrame) -> pd.DataFrame:
    """Ops per type and where they compute, most frequent first: a summary that reads at 200+ ops."""
    if ops.empty:
        return pd.DataFrame(columns=["op", "computes in", "count"])
    counts = ops.groupby(["op", "computes in"]).size().rename("count").reset_index()
    total = counts.groupby("op")["count"].transform("sum")
    return counts.assign(_t=total).sort_values(["_t", "op"], ascending=[False, True]).drop(columns="_t")


def tensors_table(info: Inspection) -> pd.DataFrame:
    io = {i: "input" for i in info.inputs} | {i: "output" for i in info.outputs}
    return pd.DataFrame(
        [{"#": t.index, "layer": layers.short_name(t.name, info.output_names), "name": t.name, "dtype": t.dtype, "shape": "×".join(str(d) for d in t.shape),
          "scale": _first(t.scales), "zero point": _first(t.zero_points),
          "per-channel": t.per_channel, "constant": t.is_constant, "role": io.get(t.index, "")}
         for t in info.tensors],
        columns=["#", "layer", "name", "dtype", "shape", "scale", "zero point", "per-channel", "constant", "role"],
    )
