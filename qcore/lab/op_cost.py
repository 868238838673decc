"""Per-layer error meets per-op time: the debugger's rmse/scale beside board (or estimated) time, op by op."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ai_edge_litert import schema_py_generated as schema

from qcore.qtyping import Inspection, OpCost, QlabError, TimeSource
from qcore.store import Store
from qcore.tflite.inspection import inspect, output_names
from qcore.tflite.names import layer_name

log = logging.getLogger(__name__)

# The host estimate is a roofline for one Cortex-A53 core of the i.MX8M Plus. The int8 rate comes
# from NXP's published MobileNetV2 int8 224 figure (about 44 ms on 4 CPU threads) over its
# 300 M multiply-accumulates (Sandler et al. 2018): 300e6 / (0.044 s * 4 cores) = 1.7 G/s per core.
# fp32 NEON holds half as many lanes, so half that. A ranking aid, always labelled "estimate".
INT8_MACS_PER_S = 1.7e9
FLOAT_MACS_PER_S = 0.85e9
# sustained single-core DDR traffic on LPDDR4 boards of this class, bytes per second
DDR_BYTES_PER_S = 2.0e9
# dispatch cost of one op in the TFLite interpreter
OP_OVERHEAD_S = 2e-6
# ops that only rewire memory: time by bytes, no arithmetic
_MEMORY_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "PACK", "UNPACK", "SPLIT",
                         "SLICE", "STRIDED_SLICE", "TRANSPOSE", "GATHER", "PAD", "PADV2"})
_ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2, "int32": 4,
             "int64": 8, "bool": 1, "int4": 1, "uint4": 1}
# the metrics written as Model Explorer node data, one JSON file each
NODE_DATA_METRICS = ("rmse_scale", "range", "time_ms", "time_share", "float_on_cpu_ms", "float_extra_ms", "macs")
# Model Explorer colours a node along this gradient from the metric's minimum (0) to its maximum (1)
_GRADIENT = [{"stop": 0, "bgColor": "#e8f5e9"}, {"stop": 0.5, "bgColor": "#fff59d"}, {"stop": 1, "bgColor": "#ef5350"}]
# benchmark_model names a TFLite node "[<first output tensor>]:<node index>"
_NODE_NAME = re.compile(r"^\[(?P<tensor>.*)\]:(?P<index>\d+)$")
# XNNPACK's own nodes inside the delegate: "Delegate/<XNNPACK operator>:<xnnpack node index>"
_XNN_NAME = re.compile(r"^Delegate/(?P<kind>.*):(?P<k>\d+)$")
# XNNPACK operator name (prefix) -> the TFLite builtins it runs, for mapping delegate rows in order
_XNN_KINDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("Depthwise Convolution", frozenset({"DEPTHWISE_CONV_2D"})),
    ("Deconvolution", frozenset({"TRANSPOSE_CONV"})),
    ("Convolution", frozenset({"CONV_2D"})),
    ("Fully Connected", frozenset({"FULLY_CONNECTED", "BATCH_MATMUL"})),
    ("Batch Matrix Multiply", frozenset({"BATCH_MATMUL"})),
    ("Max Pooling", frozenset({"MAX_POOL_2D"})),
    ("Average Pooling", frozenset({"AVERAGE_POOL_2D"})),
    ("Global Average Pooling", frozenset({"MEAN"})),
    ("Mean", frozenset({"MEAN"})),
    ("Add", frozenset({"ADD"})),
    ("Subtract", frozenset({"SUB"})),
    ("Multiply", frozenset({"MUL"})),
    ("Softmax", frozenset({"SOFTMAX"})),
    ("Sigmoid", frozenset({"LOGISTIC"})),
    ("Convert", frozenset({"QUANTIZE", "DEQUANTIZE"})),
    ("Constant Pad", frozenset({"PAD", "PADV2"})),
    ("Copy", frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"})),
    ("Concatenate", frozenset({"CONCATENATION"})),
    ("Transpose", frozenset({"TRANSPOSE"})),
    ("Resize Bilinear", frozenset({"RESIZE_BILINEAR"})),
    ("Clamp", frozenset({"RELU", "RELU6", "RELU_N1_TO_1"})),
    ("HardSwish", frozenset({"HARD_SWISH"})),
    ("Leaky ReLU", frozenset({"LEAKY_RELU"})),
)
# targets whose profile times the CPU kernels, in the order the float-on-CPU estimate prefers them
CPU_TARGETS = ("cpu", "cpu-plain")
MAPPED_BY_NAME = "op index + output tensor"
MAPPED_BY_ORDER = "order"


@dataclass(frozen=True)
class GraphOp:
    """One op of the main subgraph with what the estimate needs."""

    index: int
    op_type: str
    output_tensor: str
    is_float: bool
    macs: int
    bytes_moved: int
    bytes_float: int  # bytes if every tensor it touches were float32
    boundary_bytes: int  # activations in + out, what a quantize/dequantize pair around it would move


@dataclass(frozen=True)
class TimeChoice:
    """A board and target with a stored timing of the variant (or the host estimate)."""

    board: str
    target: str
    benchmark_id: int | None
    source: str  # a TimeSource value

    @property
    def label(self) -> str:
        where = "host" if self.board == "host" else f"{self.board} / {self.target}"
        return f"{where} · {self.source}"


# ---------------------------------------------------------------- the graph
def graph_id(model: bytes) -> str:
    """The main subgraph's id as Model Explorer's TFLite adapter names it (the subgraph's name, else "main")."""
    try:
        sub = schema.Model.GetRootAs(model, 0).Subgraphs(0)
        name = sub.Name() if sub is not None else None
    except Exception:  # noqa: BLE001  (inspect() already vetted the file; a missing name is not an error)
        name = None
    return name.decode("utf-8", "replace") if name else "main"


def _elements(shape: Sequence[int]) -> int:
    return int(np.prod([max(1, d) for d in shape])) if shape else 1


def _macs(op_type: str, ins: list[Any], outs: list[Any]) -> int:
    """Multiply-accumulates of one op from its tensor shapes (0 for ops without a weight product)."""
    if not outs:
        return 0
    out = _elements(outs[0].shape)
    if op_type == "CONV_2D" and len(ins) > 1 and len(ins[1].shape) == 4:
        _, kh, kw, cin = ins[1].shape  # filter [Cout, kh, kw, Cin]
        return out * kh * kw * cin
    if op_type == "DEPTHWISE_CONV_2D" and len(ins) > 1 and len(ins[1].shape) == 4:
        _, kh, kw, _ = ins[1].shape  # filter [1, kh, kw, Cout]
        return out * kh * kw
    if op_type == "TRANSPOSE_CONV" and len(ins) > 2 and len(ins[1].shape) == 4:
        _, kh, kw, _ = ins[1].shape  # filter [Cout, kh, kw, Cin], input [N, H, W, Cin]
        return _elements(ins[2].shape) * kh * kw * ins[1].shape[0]
    if op_type == "FULLY_CONNECTED" and len(ins) > 1 and ins[1].shape:
        return out * ins[1].shape[-1]  # weights [out, in]
    if op_type == "BATCH_MATMUL" and ins and ins[0].shape:
        return out * ins[0].shape[-1]
    return 0


def graph_ops(model: bytes, inspection: Inspection | None = None) -> list[GraphOp]:
    """The main subgraph's ops with output tensor names, MACs and bytes moved, read from the flatbuffer.

    Raises:
        QlabError: when the bytes are not a TFLite model.
    """
    info = inspection or inspect(model)
    tensors = info.tensors
    out: list[GraphOp] = []
    for op in info.ops:
        ins = [tensors[i] for i in op.inputs if 0 <= i < len(tensors)]
        outs = [tensors[i] for i in op.outputs if 0 <= i < len(tensors)]
        moved = sum(_elements(t.shape) * _ITEMSIZE.get(t.dtype, 4) for t in (*ins, *outs))
        as_float = sum(_elements(t.shape) * 4 for t in (*ins, *outs))
        boundary = sum(_elements(t.shape) for t in (*ins, *outs) if not t.is_constant) * 5  # 1 B int8 + 4 B float
        out.append(GraphOp(index=op.index, op_type=op.name, output_tensor=outs[0].name if outs else "",
                           is_float=op.is_float, macs=_macs(op.name, ins, outs), bytes_moved=moved,
                           bytes_float=as_float, boundary_bytes=boundary))
    return out


def estimate_seconds(op: GraphOp, *, as_float: bool | None = None) -> float:
    """Roofline time of one op on one Cortex-A53 core: the slower of arithmetic and DDR traffic."""
    in_float = op.is_float if as_float is None else as_float
    rate = FLOAT_MACS_PER_S if in_float else INT8_MACS_PER_S
    nbytes = op.bytes_float if in_float else op.bytes_moved
    # ops without a weight product still touch every output element once
    work = op.macs if op.macs else (0 if op.op_type in _MEMORY_OPS else nbytes // 8)
    return max(work / rate, nbytes / DDR_BYTES_PER_S) + OP_OVERHEAD_S


def short_name(op: GraphOp, recorded: str = "", outputs: Mapping[str, str] | None = None) -> str:
    """A layer name for plots, with the op's index: the name users know (`qcore.tflite.names.layer_name`:
    the debugger's recorded name, the model's output key "predictions", the Keras layer of the fused
    tensor name "sequential/conv2d_1/Relu;…" → "conv2d_1"), else the op type ("quantize #0")."""
    # a QUANTIZE/DEQUANTIZE at the model's edge writes the output tensor, but it is a conversion, not the layer
    converts = op.op_type in ("QUANTIZE", "DEQUANTIZE")
    name = layer_name(op.output_tensor, recorded, outputs) if op.output_tensor and not converts else ""
    if not name or name.startswith(("StatefulPartitionedCall", "serving_default", "tfl.")):
        name = op.op_type.lower()
    return f"{name} #{op.index}"


# ---------------------------------------------------------------- joining a board profile
def join_profile(ops: Sequence[GraphOp], rows: Sequence[Mapping[str, Any]]) -> tuple[
        dict[int, float], dict[int, str], list[dict[str, Any]], list[str]]:
    """Attributes benchmark_model's Run Order rows to the .tflite's ops.

    A row named "[tensor]:i" is op i when op i's first output is that tensor (by op index and
    output tensor). XNNPACK's own rows ("Delegate/Convolution …:k") are mapped by order onto the
    ops the delegate took, matching each row's operator kind; ops the delegate folds away (a
    reshape) get no time. A row that no single op owns (a delegate's fused node, or a name that
    does not match this graph) is returned unmapped with its time.

    Returns:
        (op index -> ms, op index -> how it was mapped, unmapped rows, notes).
    """
    by_index = {op.index: op for op in ops}
    ms: dict[int, float] = {}
    how: dict[int, str] = {}
    unmapped: list[dict[str, Any]] = []
    notes: list[str] = []
    xnn_rows: list[Mapping[str, Any]] = []
    for row in rows:
        name = str(row.get("name", ""))
        t = float(row.get("avg_ms") or 0.0)
        if m := _NODE_NAME.match(name):
            i, tensor = int(m.group("index")), m.group("tensor")
            op = by_index.get(i)
            if op is not None and op.output_tensor == tensor:
                ms[i] = ms.get(i, 0.0) + t
                how[i] = MAPPED_BY_NAME
                continue
            why = ("a delegate node: ops fused into one, no per-op split" if op is None and i >= len(ops)
                   else f"op {i} of this graph outputs {op.output_tensor!r}, not {tensor!r}" if op is not None
                   else "no such op")
            unmapped.append({"node_type": row.get("node_type"), "name": name, "time_ms": t, "why": why})
        elif _XNN_NAME.match(name):
            xnn_rows.append(row)
        else:
            unmapped.append({"node_type": row.get("node_type"), "name": name, "time_ms": t,
                             "why": "name not in benchmark_model's [tensor]:index form"})
    if xnn_rows:
        left = [op for op in ops if op.index not in ms]
        mapped = _map_in_order(left, xnn_rows)
        for row, op in zip(xnn_rows, mapped, strict=True):
            t = float(row.get("avg_ms") or 0.0)
            if op is None:
                unmapped.append({"node_type": row.get("node_type"), "name": row.get("name"), "time_ms": t,
                                 "why": "XNNPACK node whose op the order does not pin down"})
            else:
                ms[op.index] = ms.get(op.index, 0.0) + t
                how[op.index] = f"{MAPPED_BY_ORDER} ({row.get('name')})"
        n_mapped = sum(op is not None for op in mapped)
        notes.append(f"{n_mapped} of {len(xnn_rows)} XNNPACK rows mapped to ops by order and operator kind; "
                     "XNNPACK fuses and folds ops, so a folded op shows no time of its own")
    return ms, how, unmapped, notes


def _xnn_kind(node_type: str) -> frozenset[str] | None:
    for prefix, builtins in _XNN_KINDS:
        if node_type.startswith(prefix):
            return builtins
    return None


def _map_in_order(ops: Sequence[GraphOp], rows: Sequence[Mapping[str, Any]]) -> list[GraphOp | None]:
    """Walks ops and rows together; a row maps to the next op of its kind. Stops at the first doubt."""
    out: list[GraphOp | None] = []
    at = 0
    lost = False
    for row in rows:
        kinds = _xnn_kind(str(row.get("node_type", "")))
        hit = None
        if not lost and kinds is not None:
            for j in range(at, len(ops)):
                if ops[j].op_type in kinds:
                    hit, at = ops[j], j + 1
                    break
        if hit is None:
            lost = True  # once a row is unplaced, later rows' order is no longer trustworthy
        out.append(hit)
    return out


def npu_rows(details: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-NPU-operation rows of the VeriSilicon driver's profiler, as the agent stores them.

    The agent's npu target with profile=1 puts them in `details["profile"]["npu"]["ops"]` (see
    board_agent.npu_profile): one row per NPU operation with `time_ms` at the NPU clock, cycles and
    DDR MB. Absent or unavailable: an empty list.
    """
    npu = _profile(details).get("npu")
    if isinstance(npu, Mapping) and npu.get("available") and isinstance(npu.get("ops"), list):
        return [dict(r) for r in npu["ops"] if isinstance(r, Mapping)]
    return []


def _npu_ms(row: Mapping[str, Any]) -> float:
    value = row.get("time_ms")
    return float(value) if isinstance(value, int | float) else float("nan")


def _npu_ddr_mb(row: Mapping[str, Any]) -> float:
    parts = [row.get("ddr_read_mb"), row.get("ddr_write_mb")]
    return float(sum(p for p in parts if isinstance(p, int | float))) if any(
        isinstance(p, int | float) for p in parts) else float("nan")


def join_npu(ops: Sequence[GraphOp], rows: Sequence[Mapping[str, Any]], cpu_ms: Mapping[int, float]) -> tuple[
        dict[int, float], dict[int, str], list[dict[str, Any]], list[str], dict[int, float]]:
    """NPU operations onto TFLite ops: by order only when the counts agree, else kept as fused rows.

    The delegated ops are those without a CPU row in benchmark_model's profile (`cpu_ms`).

    Returns:
        (op index -> ms, op index -> how mapped, unmapped NPU rows, notes, op index -> DDR MB).
    """
    on_npu = [op for op in ops if op.index not in cpu_ms]
    times = [_npu_ms(r) for r in rows]
    if len(rows) == len(on_npu) and rows:
        ms = {op.index: t for op, t in zip(on_npu, times, strict=True)}
        how = {op.index: f"{MAPPED_BY_ORDER} (NPU operation {k})" for k, op in enumerate(on_npu)}
        note = (f"{len(rows)} NPU operations for {len(on_npu)} delegated ops: mapped one to one by order "
                "(the driver reports fused graph nodes; equal counts are the only case order allows)")
        ddr = {op.index: _npu_ddr_mb(r) for op, r in zip(on_npu, rows, strict=True)}
        return ms, how, [], [note], ddr
    unmapped = [{"node_type": "NPU operation", "name": str(r.get("index", k)), "time_ms": t,
                 "why": "NPU operations are fused graph nodes; their count differs from the delegated ops"}
                for k, (r, t) in enumerate(zip(rows, times, strict=True))]
    note = (f"{len(rows)} NPU operations for {len(on_npu)} delegated ops: not mapped to single ops "
            "(the driver fuses nodes); their time counts in the total")
    return {}, {}, unmapped, [note], {}


# ---------------------------------------------------------------- what is stored
def _variant_bytes(store: Store, variant: Mapping[str, Any]) -> bytes:
    if variant.get("status") != "ok" or not variant.get("sha256"):
        raise QlabError(f"variant #{variant['variant_id']} ({variant['variant']}) has no .tflite: "
                        f"{variant.get('error') or 'failed'}")
    path = Path(str(variant["path"])) if variant.get("path") else store.blob_path(str(variant["sha256"]))
    if not path.exists():
        raise QlabError(f"variant #{variant['variant_id']}: its file {path} is missing from the data directory")
    return path.read_bytes()


def _profile(details: Mapping[str, Any]) -> Mapping[str, Any]:
    prof = details.get("profile")
    return prof if isinstance(prof, Mapping) else {}


def time_choices(store: Store, variant_id: int) -> list[TimeChoice]:
    """Boards and targets with a per-op profile of this variant (newest per pair), then the host estimate."""
    out: list[TimeChoice] = []
    seen: set[tuple[str, str]] = set()
    for r in store.benchmark_details(variant_id).itertuples():
        key = (str(r.board), str(r.target))
        if key in seen or r.board == "host":
            continue
        details = r.details if isinstance(r.details, Mapping) else {}
        if npu_rows(details):
            source = TimeSource.NPU_DRIVER
        elif _profile(details).get("available") and _profile(details).get("ops"):
            source = TimeSource.BOARD_PROFILE
        else:
            continue
        seen.add(key)
        out.append(TimeChoice(str(r.board), str(r.target), int(r.benchmark_id), str(source)))
    out.append(TimeChoice("host", "estimate", None, str(TimeSource.ESTIMATE)))
    return out


def debug_run_for(store: Store, variant: Mapping[str, Any]) -> int | None:
    """The newest layer-by-layer debugger run of the variant's model and data, its engine and recipe preferred."""
    runs = store.debug_runs(int(variant["model_id"]))
    if runs.empty:
        return None
    runs = runs[runs["dataset_id"] == int(variant["dataset_id"])]
    best: tuple[int, int] | None = None
    for r in runs.itertuples():
        s = r.settings if isinstance(r.settings, dict) else json.loads(r.settings or "{}")
        # the same engine first: another engine's debug run names other tensors, so nothing would join
        engine = getattr(r, "engine", None) or s.get("engine") or "tf"
        score = (4 if engine == (variant.get("engine") or "tf") else 0) \
            + (2 if s.get("recipe") == variant.get("recipe") else 0) + (0 if s.get("whole_model") else 1) \
            + (0 if s.get("denylisted_nodes") or s.get("denylisted_ops") else 1)
        if best is None or score > best[0]:
            best = (score, int(r.id))
    return None if best is None else best[1]


def _run_recipe(store: Store, model_id: int, run_id: int) -> str | None:
    runs = store.debug_runs(model_id)
    hit = runs[runs["id"] == run_id]
    if hit.empty:
        return None
    raw = hit.iloc[0]["settings"]
    settings = raw if isinstance(raw, dict) else json.loads(raw or "{}")
    return settings.get("recipe")


def _host_p50(store: Store, variant_id: int) -> float | None:
    bench = store.benchmarks(variant_ids=[variant_id], board="host")
    vals = bench["p50_ms"].dropna() if not bench.empty else pd.Series(dtype=float)
    return float(vals.iloc[0]) if len(vals) else None


def op_cost(
    store: Store,
    variant_id: int,
    *,
    board: str | None = None,
    target: str | None = None,
    debug_run_id: int | None = None,
) -> OpCost:
    """Joins, op by op, the debugger's error with the time on a board and target (or the host estimate).

    Args:
        board, target: a stored profile's board and target; None takes the first of `time_choices`
            (board profiles before the estimate); board="host" asks for the estimate.
        debug_run_id: the debugger run to join; None takes `debug_run_for` the variant.

    Returns:
        An OpCost whose table has one row per op of the .tflite's own graph.

    Raises:
        QlabError: unknown variant, a variant without a .tflite, or a board/target without a profile.
    """
    variant = store.variant(int(variant_id))
    model = _variant_bytes(store, variant)
    ops = graph_ops(model)
    notes: list[str] = []
    choices = time_choices(store, variant_id)
    if board is None:
        choice = choices[0]
    else:
        found = [c for c in choices if c.board == board and (target is None or c.target == target)]
        if not found:
            known = ", ".join(c.label for c in choices)
            raise QlabError(f"variant #{variant_id} has no per-op profile on {board}"
                            + (f" / {target}" if target else "") + f" (available: {known})")
        choice = found[0]

    details_by_id = {int(r.benchmark_id): (r.details if isinstance(r.details, Mapping) else {})
                     for r in store.benchmark_details(variant_id).itertuples()}
    est = {op.index: estimate_seconds(op) * 1e3 for op in ops}
    est_float = {op.index: estimate_seconds(op, as_float=True) * 1e3 for op in ops}
    host_p50 = _host_p50(store, variant_id)
    # scale the roofline so it sums to what this host measured, when it measured the variant at all
    scale = host_p50 / sum(est.values()) if host_p50 and sum(est.values()) > 0 else 1.0

    unmapped: list[dict[str, Any]] = []
    ddr: dict[int, float] = {}
    if choice.source == TimeSource.ESTIMATE:
        ms = {i: v * scale for i, v in est.items()}
        how = {i: "estimate from MACs and bytes" for i in ms}
        notes.append("no board profile of this variant: times are a host estimate from each op's MACs and bytes "
                     "moved (roofline of one Cortex-A53 core)"
                     + (f", scaled to this host's measured p50 of {host_p50:.3f} ms" if host_p50 else ""))
    else:
        assert choice.benchmark_id is not None
        details = details_by_id[choice.benchmark_id]
        ms, how, unmapped, more = join_profile(ops, list(_profile(details).get("ops") or []))
        notes += more
        if choice.source == TimeSource.NPU_DRIVER:
            nms, nhow, nun, nnotes, ddr = join_npu(ops, npu_rows(details), ms)
            # the driver's per-operation rows replace the delegate's single fused row
            unmapped = [u for u in unmapped if not str(u.get("why", "")).startswith("a delegate node")] + nun
            ms.update(nms)
            how.update(nhow)
            notes += nnotes
    sources = {i: (str(TimeSource.ESTIMATE) if choice.source == TimeSource.ESTIMATE
                   else str(TimeSource.NPU_DRIVER) if how.get(i, "").startswith(f"{MAPPED_BY_ORDER} (NPU")
                   else str(choice.source)) for i in ms}
    total = sum(ms.values()) + sum(float(u["time_ms"]) for u in unmapped if math.isfinite(float(u["time_ms"])))

    cpu_ms, cpu_source = _cpu_reference(details_by_id, store, variant_id, choice, ops, scale, est)
    if cpu_source != str(TimeSource.ESTIMATE):
        notes.append(f"float-on-CPU cost from {cpu_source}, times the float/int8 ratio of the estimate, "
                     "plus a quantize/dequantize pair at the boundary")
    else:
        notes.append("float-on-CPU cost is an estimate (no CPU profile of this variant on the board)")

    if debug_run_id is not None:
        known_runs = store.debug_runs(int(variant["model_id"]))
        if int(debug_run_id) not in set(int(i) for i in known_runs["id"]):
            ids = ", ".join(str(int(i)) for i in known_runs["id"]) or "none"
            raise QlabError(f"no debugger run #{debug_run_id} of variant #{variant_id}'s model (its runs: {ids})")
    run_id = debug_run_id if debug_run_id is not None else debug_run_for(store, variant)
    stats = match_layer_stats(ops, store.layer_stats(int(run_id)) if run_id is not None else pd.DataFrame())
    if run_id is None:
        notes.append("no debugger run for this variant's model and data: run the debugger for rmse/scale")
    else:
        recipe = _run_recipe(store, int(variant["model_id"]), run_id)
        if recipe != variant.get("recipe"):
            notes.append(f"the debugger run #{run_id} quantized with {recipe!r}, this variant with "
                         f"{variant.get('recipe')!r}: its errors are those of the debugger's model, matched by "
                         "tensor name and op type")
    outputs = output_names(model)
    rows = []
    for op in ops:
        stat = stats.get(op.index, {})
        # a row matched by order only may be another layer's: its recorded name is not this op's
        recorded = str(stat.get("layer") or "") if stat.get("error_match") == ERROR_BY_NAME else ""
        t = ms.get(op.index, float("nan"))
        float_ms = _float_on_cpu_ms(op, cpu_ms.get(op.index), est, est_float, scale)
        rows.append({
            "op_index": op.index, "node_id": str(op.index), "op_type": op.op_type, "layer": short_name(op, recorded, outputs),
            "output_tensor": op.output_tensor, "rmse_scale": stat.get("rmse_scale", float("nan")),
            "range": stat.get("range", float("nan")), "error_match": stat.get("error_match", ""), "time_ms": t,
            "time_share": t / total if total > 0 and math.isfinite(t) else float("nan"),
            "time_source": sources.get(op.index, ""), "mapped_by": how.get(op.index, "no time of its own"),
            "macs": op.macs, "bytes_moved": op.bytes_moved, "npu_ddr_mb": ddr.get(op.index, float("nan")),
            "float_on_cpu_ms": float_ms,
            "float_cost_source": cpu_source if cpu_ms.get(op.index) is not None else str(TimeSource.ESTIMATE),
            "float_extra_ms": float_ms - t if math.isfinite(t) else float("nan"),
        })
    table = pd.DataFrame(rows)
    return OpCost(
        variant_id=int(variant_id), variant=str(variant["variant"]), board=choice.board, target=choice.target,
        time_source=choice.source, total_ms=float(total), graph_id=graph_id(model), debug_run_id=run_id,
        table=table, unmapped=pd.DataFrame(unmapped, columns=["node_type", "name", "time_ms", "why"]),
        notes=tuple(notes),
    )


def _cpu_reference(details_by_id: Mapping[int, Mapping[str, Any]], store: Store, variant_id: int,
                   choice: TimeChoice, ops: Sequence[GraphOp], scale: float,
                   est: Mapping[int, float]) -> tuple[dict[int, float], str]:
    """Per-op CPU ms of the int8 model on the chosen board (cpu, then cpu-plain), else the estimate."""
    if choice.board != "host":
        for want in CPU_TARGETS:
            for r in store.benchmark_details(variant_id).itertuples():
                if r.board != choice.board or r.target != want:
                    continue
                prof = _profile(details_by_id.get(int(r.benchmark_id), {}))
                if prof.get("available") and prof.get("ops"):
                    ms, _, _, _ = join_profile(ops, list(prof["ops"]))
                    if ms:
                        return ms, f"{TimeSource.BOARD_PROFILE} on {choice.board} / {want}"
    return {i: v * scale for i, v in est.items()}, str(TimeSource.ESTIMATE)


def _float_on_cpu_ms(op: GraphOp, cpu_int8_ms: float | None, est: Mapping[int, float],
                     est_float: Mapping[int, float], scale: float) -> float:
    """What the op would cost on the CPU in float: its CPU time, times float/int8, plus the boundary pair."""
    if op.is_float:
        return cpu_int8_ms if cpu_int8_ms is not None else est[op.index] * scale
    base = cpu_int8_ms if cpu_int8_ms is not None else est[op.index] * scale
    ratio = est_float[op.index] / est[op.index] if est[op.index] > 0 else 1.0
    boundary_ms = op.boundary_bytes / DDR_BYTES_PER_S * 1e3 + 2 * OP_OVERHEAD_S * 1e3
    return base * ratio + boundary_ms


ERROR_BY_NAME = "tensor name"
ERROR_BY_ORDER = "op type and order"


def match_layer_stats(ops: Sequence[GraphOp], stats: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Debugger rows onto the .tflite's ops: op index -> {rmse_scale, range, error_match}.

    The debugger runs its own debug model of the same recipe, so tensor names mostly agree: a row
    goes to the op of the same type whose output has its name. The converter renames a clashing
    tensor ("StatefulPartitionedCall:0" becomes "…:01" once a DEQUANTIZE takes the name), so the
    rows left over go, type by type and in order, to the ops of that type still without a row.
    """
    if stats.empty:
        return {}
    out: dict[int, dict[str, Any]] = {}
    left: list[Any] = []
    by_name = {(op.output_tensor, op.op_type): op for op in ops}
    for r in stats.itertuples():
        op = by_name.get((str(r.tensor_name), str(r.op_name)))
        if op is not None and op.index not in out:
            out[op.index] = {"rmse_scale": float(r.rmse_scale), "range": float(r.range), "error_match": ERROR_BY_NAME,
                             "layer": str(getattr(r, "layer", "") or "")}
        else:
            left.append(r)
    for r in left:
        op = next((o for o in ops if o.op_type == str(r.op_name) and o.index not in out), None)
        if op is not None:
            out[op.index] = {"rmse_scale": float(r.rmse_scale), "range": float(r.range),
                             "error_match": ERROR_BY_ORDER}
    return out


# ---------------------------------------------------------------- Model Explorer node data
def node_data(cost: OpCost, metrics: Sequence[str] = NODE_DATA_METRICS) -> dict[str, dict[str, Any]]:
    """One Model Explorer `ModelNodeData` document per metric, keyed by the adapter's node ids.

    Model Explorer's TFLite adapter ids the op at index i of the main subgraph as node "i" in the
    graph named after the subgraph ("main"). Ops without a value for a metric are left out.

    Returns:
        metric -> {graph_id: {"name", "results": {node_id: {"value"}}, "gradient"}} (JSON-ready).
    """
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        if metric not in cost.table:
            raise QlabError(f"unknown metric {metric!r}; known: {', '.join(NODE_DATA_METRICS)}")
        results = {str(r["node_id"]): {"value": float(r[metric])} for _, r in cost.table.iterrows()
                   if pd.notna(r[metric]) and math.isfinite(float(r[metric]))}
        if not results:
            continue
        label = f"{cost.variant} {metric}" + ("" if metric in ("rmse_scale", "range", "macs")
                                              else f" ({cost.board}/{cost.target}, {cost.time_source})")
        out[metric] = {cost.graph_id: {"name": label, "results": results, "gradient": _GRADIENT}}
    return out


def file_stem(name: str) -> str:
    """A variant name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "variant"


def write_node_data(cost: OpCost, out_dir: str | Path) -> list[Path]:
    """Writes `<variant>.<metric>.json` per metric into out_dir; returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QlabError(f"cannot create {out}: {exc.strerror}") from None
    paths = []
    for metric, doc in node_data(cost).items():
        path = out / f"{file_stem(cost.variant)}.{metric}.json"
        path.write_text(json.dumps(doc, indent=2))
        paths.append(path)
    return paths


def node_data_zip(cost: OpCost) -> bytes:
    """The same files as `write_node_data`, zipped (the dashboard's download)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for metric, doc in node_data(cost).items():
            zf.writestr(f"{file_stem(cost.variant)}.{metric}.json", json.dumps(doc, indent=2))
    return buf.getvalue()


def explorer_installed() -> bool:
    """Whether `ai-edge-model-explorer` is importable here (it opens the graph with the node data)."""
    import importlib.util

    return importlib.util.find_spec("model_explorer") is not None


def explorer_command(tflite: str | Path, paths: Sequence[str | Path]) -> str:
    """The shell command that opens the .tflite in Model Explorer with these node-data files loaded."""
    import shlex

    return (f"model-explorer {shlex.quote(str(tflite))} --node_data_paths="
            + shlex.quote(",".join(str(p) for p in paths)))


# Model Explorer's own defaults for its local server (model_explorer.consts)
EXPLORER_HOST = "localhost"
EXPLORER_PORT = 8080


def explorer_link(tflite: str | Path, paths: Sequence[str | Path], *, host: str = EXPLORER_HOST,
                  port: int = EXPLORER_PORT) -> str | None:
    """A URL that opens the .tflite in a running Model Explorer server with the node data loaded.

    Built with the package's own `ModelExplorerConfig` (the files are read by that server, so
    they must be on its machine). None when `ai-edge-model-explorer` is not installed.
    """
    if not explorer_installed():
        return None
    from model_explorer.config import ModelExplorerConfig

    config = ModelExplorerConfig()
    config.add_model_from_path(str(tflite))
    for path in paths:
        config.add_node_data_from_path(str(path))
    return f"http://{host}:{port}/?data={config.to_url_param_value()}"


def report_rows(cost: OpCost) -> list[dict[str, Any]]:
    """The joined table as JSON-safe records for a report snapshot."""
    cols = ["op_index", "op_type", "layer", "rmse_scale", "range", "time_ms", "time_share", "time_source",
            "float_on_cpu_ms", "float_extra_ms"]
    df = cost.table[cols].astype(object).where(pd.notna(cost.table[cols]), None)
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
            for r in df.to_dict("records")]
