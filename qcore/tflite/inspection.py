"""Reads a .tflite flatbuffer in pure Python: ops, tensors, quantization, and i.MX8M Plus NPU lint."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ai_edge_litert import schema_py_generated as schema

from qcore.qtyping import Inspection, LintFinding, NpuVerdict, OpInfo, QlabError, TensorInfo

log = logging.getLogger(__name__)

# a flatbuffer starts with the root table's offset (4 bytes), then the file identifier
_IDENTIFIER = b"TFL3"
_IDENTIFIER_AT = slice(4, 8)
# every TFLite model written since 2018 carries schema version 3
_SCHEMA_VERSION = 3

_DTYPES: dict[int, str] = {v: k.lower() for k, v in vars(schema.TensorType).items() if k.isupper()}
_OP_NAMES: dict[int, str] = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
FLOAT_DTYPES = frozenset(
    {"float32", "float16", "float64", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
)
# weights of 8 bits or fewer: the tensors whose per-channel scales matter to the NPU
_WEIGHT_INT_DTYPES = frozenset({"int8", "uint8", "int4", "uint4", "int2"})
# ops that read only a tensor's shape, never its values, so a float input costs no float math
_SHAPE_ONLY_OPS = frozenset({"SHAPE", "RANK"})
# converting ops: linted as quant-pair / boundary-quant / float16-weights, not as float-op
_QUANT_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class _Graph:
    """One subgraph as read from the file (tensor indices are local to it)."""

    tensors: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    custom: frozenset[int]  # indices of ops that are custom ops


def inspect(model: bytes | bytearray | str | os.PathLike[str]) -> Inspection:
    """Lists the ops and tensors of a .tflite model and lints it for the i.MX8M Plus NPU.

    The flatbuffer is read by the generated Python schema, never by the C++ runtime, so a
    truncated or random file raises an error instead of taking the process down.

    Args:
        model: the flatbuffer's bytes, or the path of a .tflite file.

    Returns:
        An Inspection: every op (with whether it computes in float), every tensor of the main
        subgraph with dtype, shape and quantization, the integer-only verdict and lint findings.

    Raises:
        QlabError: "<path>: not a TFLite model: <reason>" for empty, truncated, random or
            corrupt files, or naming the path when it cannot be read.
    """
    if isinstance(model, bytes | bytearray | memoryview):
        data, path, label = bytes(model), "", "model"
    else:
        path = label = str(model)
        data = _read(model)
    return _parse(data, path, label)


def _read(path: str | os.PathLike[str]) -> bytes:
    # imported here: litert_io loads the LiteRT runtime, which reading a flatbuffer never needs
    # (the store computes verdicts in the owner process)
    from qcore.tflite.litert_io import read_tflite

    # the parser explains a bad identifier in more detail than the reader would
    return read_tflite(path, check_identifier=False)


def _bad(label: str, reason: str) -> QlabError:
    return QlabError(f"{label}: not a TFLite model: {reason}")


def npu_verdict(model: bytes | bytearray | str | os.PathLike[str]) -> NpuVerdict:
    """The compact NPU answer for a .tflite: integer-only, or which ops fall back to the CPU.

    Pure flatbuffer reading (no interpreter), cheap enough to run whenever a variant is saved.

    Args:
        model: the flatbuffer's bytes, or the path of a .tflite file.

    Returns:
        An NpuVerdict: ready when the lint has no error, float ops counted per op type over
        every subgraph, inner QUANTIZE/DEQUANTIZE, custom ops, I/O dtypes, weight elements.

    Raises:
        QlabError: as `inspect` for files that are not TFLite models.
    """
    if isinstance(model, bytes | bytearray | memoryview):
        data, label = bytes(model), "model"
    else:
        label = str(model)
        data = _read(model)
    graphs = _read_graphs(data, label)
    lint = _lint(graphs)
    main = graphs[0]
    all_ops = [(g, op) for g in graphs for op in g.ops]
    float_counts: Counter[str] = Counter(
        op.name for _, op in all_ops if op.is_float and op.name not in _QUANT_OPS
    )
    inner_quant = sum(
        1
        for g, op in all_ops
        if op.name in _QUANT_OPS
        and not _is_boundary(op.name, op.inputs, op.outputs, g.tensors, g.inputs, g.outputs)
        and _converts_float(op, g.tensors)
    )
    custom = sorted({op.name for g, op in all_ops if op.index in g.custom})
    weights = sum(
        math.prod(max(d, 1) for d in t.shape) for g in graphs for t in g.tensors if t.is_constant
    )
    return NpuVerdict(
        ready=not any(f.severity == "error" for f in lint),
        n_ops=len(all_ops),
        float_ops=tuple(float_counts.most_common()),
        quant_ops=inner_quant,
        custom_ops=tuple(custom),
        problems=tuple(dict.fromkeys(f.code for f in lint if f.severity == "error")),
        input_dtype="/".join(sorted({main.tensors[i].dtype for i in main.inputs})),
        output_dtype="/".join(sorted({main.tensors[i].dtype for i in main.outputs})),
        weight_elements=int(weights),
    )


def _parse(data: bytes, path: str, label: str) -> Inspection:
    return dataclasses.replace(_summarize(_read_graphs(data, label), path, len(data)),
                               output_names=output_names(data))


def _read_graphs(data: bytes, label: str) -> list[_Graph]:
    if not data:
        raise _bad(label, "the file is empty")
    if len(data) < _IDENTIFIER_AT.stop:
        raise _bad(label, f"only {len(data)} bytes long")
    if data[_IDENTIFIER_AT] != _IDENTIFIER:
        raise _bad(
            label,
            f"no {_IDENTIFIER.decode()!r} identifier at bytes 4..8 (found {data[_IDENTIFIER_AT]!r})",
        )
    try:
        graphs = _Reader(data, label).graphs()
    except QlabError:
        raise
    except Exception as exc:  # noqa: BLE001
        # arbitrary bytes behind a valid identifier can make the generated reader raise almost
        # anything (struct.error, IndexError, ValueError, UnicodeDecodeError...): all mean corrupt
        raise _bad(label, f"corrupt flatbuffer ({type(exc).__name__}: {exc})") from None
    return graphs


class _Reader:
    """Walks the flatbuffer with bounds checks, so garbage lengths fail fast instead of looping."""

    def __init__(self, data: bytes, label: str) -> None:
        self.data = data
        self.label = label
        self.model = schema.Model.GetRootAs(data, 0)

    def _count(self, n: int, what: str, item_bytes: int = 4) -> int:
        if n < 0 or n * item_bytes > len(self.data):
            raise _bad(self.label, f"{what} claims {n} entries in a {len(self.data)}-byte file")
        return n

    def graphs(self) -> list[_Graph]:
        m = self.model
        version = m.Version()
        if version != _SCHEMA_VERSION:
            raise _bad(self.label, f"schema version {version}, expected {_SCHEMA_VERSION}")
        opcodes = [
            self._opcode(m.OperatorCodes(j))
            for j in range(self._count(m.OperatorCodesLength(), "operator codes"))
        ]
        n_buffers = self._count(m.BuffersLength(), "buffers")
        constant = [self._has_data(m.Buffers(j), j) for j in range(n_buffers)]
        n_graphs = self._count(m.SubgraphsLength(), "subgraphs")
        if n_graphs == 0:
            raise _bad(self.label, "it has no subgraph")
        return [self._graph(m.Subgraphs(g), g, opcodes, constant) for g in range(n_graphs)]

    def _opcode(self, oc: Any) -> tuple[str, bool]:
        # files written before the int32 field existed keep the code in the int8 one
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            return (custom.decode("utf-8", "replace") if custom else "CUSTOM"), True
        return _OP_NAMES.get(code, f"UNKNOWN_OP_{code}"), False

    def _has_data(self, buf: Any, j: int) -> bool:
        """Whether a buffer holds data, checking that the data lies inside the file."""
        if buf is None:
            return False
        size = len(self.data)
        n = self._count(buf.DataLength(), f"buffer {j}", item_bytes=1)
        # vtable slot 4 is the first field, `data`; its vector must end inside the file
        slot = buf._tab.Offset(4)
        if n and buf._tab.Vector(slot) + n > size:
            raise _bad(self.label, f"buffer {j} runs past the end of the file (truncated?)")
        # models over 2 GB keep tensor data after the flatbuffer: offset > 1 and a size
        offset, external = int(buf.Offset()), int(buf.Size())
        if offset > 1 and external > 0 and offset + external > size:
            raise _bad(self.label, f"buffer {j} points past the end of the file (truncated?)")
        return bool(n > 0 or (offset > 1 and external > 0))

    def _ints(self, n: int, get: Any, what: str) -> tuple[int, ...]:
        return tuple(int(get(k)) for k in range(self._count(n, what)))

    def _graph(
        self, sg: Any, g: int, opcodes: list[tuple[str, bool]], constant: list[bool]
    ) -> _Graph:
        n_tensors = self._count(sg.TensorsLength(), f"subgraph {g} tensors")
        tensors = tuple(self._tensor(sg.Tensors(i), i, g, constant) for i in range(n_tensors))

        def check(indices: tuple[int, ...], what: str, optional: bool = False) -> tuple[int, ...]:
            low = -1 if optional else 0
            for t in indices:
                if not low <= t < n_tensors:
                    raise _bad(self.label, f"{what} refers to tensor {t} of {n_tensors}")
            return indices

        inputs = check(
            self._ints(sg.InputsLength(), sg.Inputs, "graph inputs"), f"subgraph {g} input"
        )
        outputs = check(
            self._ints(sg.OutputsLength(), sg.Outputs, "graph outputs"), f"subgraph {g} output"
        )
        ops: list[OpInfo] = []
        custom: set[int] = set()
        for k in range(self._count(sg.OperatorsLength(), f"subgraph {g} operators")):
            op = sg.Operators(k)
            idx = int(op.OpcodeIndex())
            if not 0 <= idx < len(opcodes):
                raise _bad(self.label, f"operator {k} uses opcode {idx} of {len(opcodes)}")
            name, is_custom = opcodes[idx]
            # -1 marks an optional input left out (e.g. a bias)
            ins = check(
                self._ints(op.InputsLength(), op.Inputs, "op inputs"),
                f"operator {k} ({name}) input",
                optional=True,
            )
            outs = check(
                self._ints(op.OutputsLength(), op.Outputs, "op outputs"),
                f"operator {k} ({name}) output",
                optional=True,
            )
            if is_custom:
                custom.add(k)
            ops.append(
                OpInfo(
                    k,
                    name,
                    ins,
                    outs,
                    _computes_in_float(name, ins, outs, tensors, inputs, outputs),
                )
            )
        return _Graph(tensors, tuple(ops), inputs, outputs, frozenset(custom))

    def _tensor(self, t: Any, i: int, g: int, constant: list[bool]) -> TensorInfo:
        type_code = int(t.Type())
        if type_code not in _DTYPES:
            raise _bad(self.label, f"tensor {i} of subgraph {g} has unknown type code {type_code}")
        buffer = int(t.Buffer())
        if not 0 <= buffer < max(len(constant), 1):
            raise _bad(self.label, f"tensor {i} uses buffer {buffer} of {len(constant)}")
        raw_name = t.Name()
        shape = self._ints(t.ShapeLength(), t.Shape, "tensor shape")
        scales: tuple[float, ...] = ()
        zero_points: tuple[int, ...] = ()
        axis = 0
        q = t.Quantization()
        if q is not None:
            n_scales = self._count(q.ScaleLength(), "quantization scales")
            scales = tuple(float(s) for s in q.ScaleAsNumpy()) if n_scales else ()
            n_zps = self._count(q.ZeroPointLength(), "zero points", item_bytes=8)
            zero_points = tuple(int(z) for z in q.ZeroPointAsNumpy()) if n_zps else ()
            axis = int(q.QuantizedDimension())
        return TensorInfo(
            index=i,
            name=raw_name.decode("utf-8", "replace") if raw_name else f"tensor_{i}",
            dtype=_DTYPES[type_code],
            shape=shape,
            scales=scales,
            zero_points=zero_points,
            quantized_dimension=axis,
            is_constant=bool(buffer < len(constant) and constant[buffer])
            or int(t.ExternalBuffer()) > 0,
        )


def _is_boundary(
    name: str,
    ins: tuple[int, ...],
    outs: tuple[int, ...],
    tensors: tuple[TensorInfo, ...],
    graph_inputs: tuple[int, ...],
    graph_outputs: tuple[int, ...],
) -> bool:
    """A QUANTIZE of a graph input or a DEQUANTIZE into a graph output: I/O conversion, not compute."""
    real_ins = [i for i in ins if i >= 0]
    if name == "QUANTIZE":
        return bool(real_ins) and all(i in graph_inputs for i in real_ins)
    if name == "DEQUANTIZE":
        # a DEQUANTIZE of a constant is a float16/int8 weight being expanded for a float kernel
        return (
            bool(outs)
            and all(o in graph_outputs for o in outs)
            and not any(tensors[i].is_constant for i in real_ins)
        )
    return False


def _computes_in_float(
    name: str,
    ins: tuple[int, ...],
    outs: tuple[int, ...],
    tensors: tuple[TensorInfo, ...],
    graph_inputs: tuple[int, ...],
    graph_outputs: tuple[int, ...],
) -> bool:
    """An op computes in float when any non-constant tensor it reads or writes is floating point."""
    if name in _SHAPE_ONLY_OPS or _is_boundary(
        name, ins, outs, tensors, graph_inputs, graph_outputs
    ):
        return False
    return any(
        tensors[t].dtype in FLOAT_DTYPES and not tensors[t].is_constant
        for t in (*ins, *outs)
        if t >= 0
    )


def _summarize(graphs: list[_Graph], path: str, size: int) -> Inspection:
    main = graphs[0]
    float_ops: list[str] = []
    for graph in graphs:
        for op in graph.ops:
            if op.is_float and op.name not in float_ops:
                float_ops.append(op.name)
    lint = sorted(_lint(graphs), key=lambda f: _SEVERITY_ORDER.get(f.severity, 3))
    return Inspection(
        path=path,
        size_bytes=size,
        ops=main.ops,
        tensors=main.tensors,
        inputs=main.inputs,
        outputs=main.outputs,
        integer_only=not float_ops,
        float_ops=tuple(float_ops),
        lint=tuple(lint),
    )


def _names(tensors: list[TensorInfo], limit: int = 3) -> str:
    shown = ", ".join(repr(t.name) for t in tensors[:limit])
    return shown + (f" and {len(tensors) - limit} more" if len(tensors) > limit else "")


def _lint(graphs: list[_Graph]) -> list[LintFinding]:
    """Findings for the i.MX8M Plus NPU (VeriSilicon, driven by the VX delegate): 8-bit integer only."""
    out: list[LintFinding] = []
    main = graphs[0]
    all_ops = [(g, op) for g in graphs for op in g.ops]
    all_tensors = [t for g in graphs for t in g.tensors]

    float_counts: Counter[str] = Counter(
        op.name for _, op in all_ops if op.is_float and op.name not in _QUANT_OPS
    )
    hybrid = {
        op.name
        for g, op in all_ops
        if op.is_float
        and any(
            t >= 0 and g.tensors[t].is_constant and g.tensors[t].dtype == "int8" for t in op.inputs
        )
    }
    for name, count in float_counts.items():
        why = (
            " (dynamic-range hybrid kernel: int8 weights, float activations)"
            if name in hybrid
            else ""
        )
        out.append(
            LintFinding(
                "error",
                "float-op",
                f"{count} × {name} computes in float{why} and will fall back to the CPU; "
                "the NPU runs 8-bit integer ops only (try the int8 or uint8 recipe)",
            )
        )

    for name in sorted({op.name for g, op in all_ops if op.index in g.custom}):
        out.append(
            LintFinding(
                "error", "custom-op", f"custom op {name} has no NPU kernel and runs on the CPU"
            )
        )

    int16 = [t for t in all_tensors if t.dtype == "int16" and not t.is_constant]
    if int16:
        out.append(
            LintFinding(
                "error",
                "int16-activations",
                f"{len(int16)} activation tensors are int16 (16x8 quantization), e.g. {_names(int16)}; "
                "the NPU runs 8-bit only, so these ops run on the CPU",
            )
        )

    fp16 = [t for t in all_tensors if t.dtype == "float16" and t.is_constant]
    if fp16:
        out.append(
            LintFinding(
                "error",
                "float16-weights",
                f"{len(fp16)} weight tensors are stored as float16, e.g. {_names(fp16)}; they are "
                "expanded to float32 at run time and the NPU cannot run them (use int8 or uint8)",
            )
        )

    per_channel = [
        t for t in all_tensors if t.is_constant and t.per_channel and t.dtype in _WEIGHT_INT_DTYPES
    ]
    if per_channel:
        first = per_channel[0]
        out.append(
            LintFinding(
                "warning",
                "per-channel",
                f"{len(per_channel)} weight tensors are quantized per channel (e.g. {first.name!r}: "
                f"{len(first.scales)} scales on axis {first.quantized_dimension}); per-channel weights are a "
                "known slow path on VeriSilicon NPUs: try int8-per-tensor or uint8-per-tensor",
            )
        )

    inner_quant = [
        op
        for g, op in all_ops
        if op.name in ("QUANTIZE", "DEQUANTIZE")
        and not _is_boundary(op.name, op.inputs, op.outputs, g.tensors, g.inputs, g.outputs)
        and _converts_float(op, g.tensors)
    ]
    if inner_quant:
        around = sorted(float_counts)
        where = f" around {', '.join(around)}" if around else ""
        out.append(
            LintFinding(
                "warning",
                "quant-pair",
                f"{len(inner_quant)} QUANTIZE/DEQUANTIZE ops inside the graph{where}: each is a round-trip "
                "through float on the CPU and splits the NPU's graph into pieces",
            )
        )

    boundary = [
        op
        for op in main.ops
        if _is_boundary(op.name, op.inputs, op.outputs, main.tensors, main.inputs, main.outputs)
        and _converts_float(op, main.tensors)
    ]
    if boundary:
        kinds = " and ".join(sorted({op.name for op in boundary}))
        ints = "/".join(
            sorted(
                {
                    main.tensors[t].dtype
                    for op in boundary
                    for t in (*op.inputs, *op.outputs)
                    if t >= 0 and main.tensors[t].dtype not in FLOAT_DTYPES
                }
            )
        )
        out.append(
            LintFinding(
                "warning",
                "boundary-quant",
                f"float I/O: {kinds} at the graph boundary converts between float and {ints} on the CPU; "
                "the int8/uint8 recipes take integer input and output directly",
            )
        )

    out.append(_io_finding(main))
    if len(graphs) > 1:
        out.append(
            LintFinding(
                "info",
                "subgraphs",
                f"{len(graphs)} subgraphs (control flow); ops and tensors listed are the main subgraph's, "
                "the verdict and lint cover all",
            )
        )
    return out


def _converts_float(op: OpInfo, tensors: tuple[TensorInfo, ...]) -> bool:
    """A QUANTIZE/DEQUANTIZE between float and integer (not int8 → int8 requantization)."""
    live = [tensors[t] for t in (*op.inputs, *op.outputs) if t >= 0 and not tensors[t].is_constant]
    return any(t.dtype in FLOAT_DTYPES for t in live) and any(
        t.dtype not in FLOAT_DTYPES for t in live
    )


def _io_finding(main: _Graph) -> LintFinding:
    ins = sorted({main.tensors[i].dtype for i in main.inputs})
    outs = sorted({main.tensors[i].dtype for i in main.outputs})
    io = f"input {'/'.join(ins) or 'none'}, output {'/'.join(outs) or 'none'}"
    if "int8" in ins or "int8" in outs:
        return LintFinding(
            "info",
            "io-dtype",
            f"{io}: the NPU takes either, but NXP's demos and camera pipelines feed uint8; "
            "the uint8 recipes keep uint8 I/O",
        )
    if set(ins) | set(outs) <= {"uint8"}:
        return LintFinding(
            "info", "io-dtype", f"{io}: the layout NXP's demos and camera pipelines use"
        )
    return LintFinding(
        "info", "io-dtype", f"{io}: float I/O; an NPU-ready model takes and returns int8 or uint8"
    )


def check_integer_only(tflite: bytes, what: str, who: str = "the converter") -> None:
    """Refuses a model an integer-only recipe made that still computes in float.

    TF 2.21's converter leaves ops without an int8 kernel in float between DEQUANTIZE/QUANTIZE even
    with TFLITE_BUILTINS_INT8 only, and AI Edge Quantizer leaves ops it does not quantize; an
    integer-only recipe must not hand that to an NPU.

    Args:
        what: what was made, e.g. "recipe int8" or "recipe int8 (engine aeq)".
        who: what made it, e.g. "the converter" or "AI Edge Quantizer".

    Raises:
        QlabError: naming the ops left in float.
    """
    result = inspect(tflite)
    if result.integer_only:
        return
    culprits = [op for op in result.float_ops if op not in _QUANT_OPS] or list(result.float_ops)
    raise QlabError(f"{what}: {who} has no integer kernel for op {', '.join(culprits)} and left it in float; "
                    "try int8-fallback, which keeps such ops in float on purpose")


# ops that only convert between float and integer: the tensor they read carries the same output
_CONVERTERS = (schema.BuiltinOperator.QUANTIZE, schema.BuiltinOperator.DEQUANTIZE)


def output_names(model: bytes | bytearray) -> dict[str, str]:
    """Tensor name → the signature's output key ("StatefulPartitionedCall:0" → "predictions").

    The converter names a model's output tensors after the SavedModel call, not the layer; the key
    its signature gives each output is the Keras output layer's name for tf_keras and Keras 3 models.
    Where a QUANTIZE or DEQUANTIZE writes the output (float I/O around an integer model, AI Edge
    Quantizer's "…_dequant"), the tensor it reads carries the key too. Only the table of contents is
    read (no buffers), so AI Edge Quantizer's files with buffers after the flatbuffer read the same.

    Returns:
        Every output of every signature (the first signature wins a tensor named twice); {} for a
        file without signatures or one that does not parse.
    """
    try:
        root = schema.Model.GetRootAs(bytes(model), 0)
        codes = [max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
                 for oc in (root.OperatorCodes(j) for j in range(root.OperatorCodesLength()))]
        out: dict[str, str] = {}
        for i in range(root.SignatureDefsLength()):
            sig = root.SignatureDefs(i)
            graph = root.Subgraphs(sig.SubgraphIndex())
            keys = {int(sig.Outputs(j).TensorIndex()): (sig.Outputs(j).Name() or b"").decode("utf-8", "replace")
                    for j in range(sig.OutputsLength())}
            for k in range(graph.OperatorsLength()):
                op = graph.Operators(k)
                if codes[op.OpcodeIndex()] in _CONVERTERS and op.OutputsLength() and op.Outputs(0) in keys:
                    keys.setdefault(int(op.Inputs(0)), keys[int(op.Outputs(0))])
            for index, key in keys.items():
                if key:
                    out.setdefault(graph.Tensors(index).Name().decode("utf-8", "replace"), key)
        return out
    except Exception:  # noqa: BLE001  (a corrupt file has no names to offer; the inspector says why)
        return {}
