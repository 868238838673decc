"""Checks on untrusted uploads without a runtime: a TFLite flatbuffer walk and .npz headers.

The agent process never loads a model; it only proves the bytes are a well-formed TFLite
flatbuffer (every table, vector and index in bounds) and reads the input tensors' shapes and
types, so bad uploads get a 400/422 at once instead of a failed job later.
"""

from __future__ import annotations

import ast
import io
import struct
import zipfile
from dataclasses import dataclass

from board_agent import protocol

# TensorType of the TFLite schema -> numpy dtype name
TENSOR_TYPES: dict[int, str] = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
    8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 13: "resource",
    14: "variant", 15: "uint32", 16: "uint16", 17: "int4",
}
# .npy descr -> numpy dtype name, for the dtypes an input may arrive in (no objects, no pickles)
NPY_DESCRS: dict[str, str] = {
    "<f4": "float32", "<f8": "float64", "<f2": "float16", "|i1": "int8", "|u1": "uint8", "<i2": "int16",
    "<u2": "uint16", "<i4": "int32", "<i8": "int64", "|b1": "bool",
}
# flatbuffers nest a few levels in TFLite; anything deeper than this many vectors is not a model
MAX_ELEMENTS = 50_000_000


class UploadError(ValueError):
    """The upload is not what it claims to be; the message says where it broke."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSummary:
    """What the agent knows about an upload before any runtime sees it."""

    version: int
    subgraphs: int
    operators: int
    tensors: int
    buffers: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class _Table:
    """A flatbuffer table at `pos`, with every access bounds-checked."""

    def __init__(self, buf: _Buf, pos: int, what: str) -> None:
        self.buf, self.pos, self.what = buf, pos, what
        soff = buf.i32(pos, what)
        self.vt = pos - soff
        if self.vt < 0 or self.vt + 4 > buf.n:
            raise UploadError(f"{what}: vtable at {self.vt} is outside the {buf.n}-byte file")
        self.vt_len = buf.u16(self.vt, what)
        obj_len = buf.u16(self.vt + 2, what)
        if self.vt_len < 4 or self.vt_len % 2 or self.vt + self.vt_len > buf.n or pos + obj_len > buf.n:
            raise UploadError(f"{what}: table at {pos} runs past the end of the {buf.n}-byte file")

    def _field(self, i: int) -> int:
        slot = 4 + 2 * i
        return self.buf.u16(self.vt + slot, self.what) if slot < self.vt_len else 0

    def scalar(self, i: int, fmt: str, default: int | float = 0) -> int | float:
        off = self._field(i)
        if not off:
            return default
        value: int | float = self.buf.unpack(fmt, self.pos + off, self.what)
        return value

    def _target(self, i: int) -> int | None:
        off = self._field(i)
        if not off:
            return None
        at = self.pos + off
        return at + self.buf.u32(at, self.what)

    def table(self, i: int, what: str) -> _Table | None:
        at = self._target(i)
        return None if at is None else _Table(self.buf, at, what)

    def vector(self, i: int, elem_size: int, what: str) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        at = self._target(i)
        if at is None:
            return 0, 0
        length = self.buf.u32(at, what)
        start = at + 4
        if length > MAX_ELEMENTS or start + length * elem_size > self.buf.n:
            raise UploadError(f"{what}: vector of {length} elements runs past the end of the {self.buf.n}-byte file")
        return start, length

    def tables(self, i: int, what: str) -> list[_Table]:
        start, length = self.vector(i, 4, what)
        return [_Table(self.buf, start + 4 * k + self.buf.u32(start + 4 * k, what), f"{what}[{k}]")
                for k in range(length)]

    def ints(self, i: int, what: str) -> list[int]:
        start, length = self.vector(i, 4, what)
        return [self.buf.i32(start + 4 * k, what) for k in range(length)]

    def string(self, i: int, what: str) -> str:
        start, length = self.vector(i, 1, what)
        return self.buf.data[start:start + length].decode("utf-8", "replace") if length else ""


class _Buf:
    def __init__(self, data: bytes) -> None:
        self.data, self.n = data, len(data)

    def unpack(self, fmt: str, at: int, what: str) -> int | float:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > self.n:
            raise UploadError(f"{what}: offset {at} is outside the {self.n}-byte file")
        value: int | float = struct.unpack_from(fmt, self.data, at)[0]
        return value

    def u16(self, at: int, what: str) -> int:
        return int(self.unpack("<H", at, what))

    def u32(self, at: int, what: str) -> int:
        return int(self.unpack("<I", at, what))

    def i32(self, at: int, what: str) -> int:
        return int(self.unpack("<i", at, what))


def check_tflite(data: bytes) -> ModelSummary:
    """Proves `data` is a structurally sound TFLite model and summarizes it.

    Raises:
        UploadError: no "TFL3" identifier at offset 4, or any table/vector/index out of bounds
            (a truncated or corrupted file).
    """
    if not protocol.has_tflite_magic(data):
        head = bytes(data[:8])
        raise UploadError(f"not a TFLite model: no 'TFL3' identifier at offset 4 (first bytes {head!r})")
    buf = _Buf(bytes(data))
    model = _Table(buf, buf.u32(0, "root"), "model")
    version = int(model.scalar(0, "<I"))
    opcodes = model.tables(1, "operator_codes")
    for code in opcodes:
        code.scalar(0, "<b")
        code.string(1, code.what + ".custom_code")
        code.scalar(3, "<i")
    buffers = model.tables(4, "buffers")
    for b in buffers:
        b.vector(0, 1, b.what + ".data")
        offset, size = int(b.scalar(1, "<Q")), int(b.scalar(2, "<Q"))
        # models over 2 GB keep weights after the flatbuffer, addressed by (offset, size)
        if offset > 1 and offset + size > buf.n:
            raise UploadError(f"{b.what}: external data [{offset}, {offset + size}) is past the end of the file")
    subgraphs = model.tables(2, "subgraphs")
    if not subgraphs:
        raise UploadError("model has no subgraph")
    n_ops = n_tensors = 0
    io: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] = ((), ())
    for si, sg in enumerate(subgraphs):
        tensors = sg.tables(0, f"subgraph {si} tensors")
        specs = []
        for t in tensors:
            shape = tuple(t.ints(0, t.what + ".shape"))
            ttype = int(t.scalar(1, "<b"))
            bidx = int(t.scalar(2, "<I"))
            if bidx >= max(len(buffers), 1):
                raise UploadError(f"{t.what}: buffer index {bidx} but the model has {len(buffers)} buffers")
            quant = t.table(4, t.what + ".quantization")
            if quant is not None:
                quant.vector(2, 4, quant.what + ".scale")
                quant.vector(3, 8, quant.what + ".zero_point")
            specs.append(TensorSpec(t.string(3, t.what + ".name"), TENSOR_TYPES.get(ttype, f"type{ttype}"), shape))
        n_tensors += len(tensors)

        def index(k: int, what: str, count: int = len(tensors)) -> int:
            if not -1 <= k < count:
                raise UploadError(f"{what}: tensor index {k} but the subgraph has {count} tensors")
            return k

        ins = [index(k, f"subgraph {si} inputs") for k in sg.ints(1, f"subgraph {si} inputs")]
        outs = [index(k, f"subgraph {si} outputs") for k in sg.ints(2, f"subgraph {si} outputs")]
        ops = sg.tables(3, f"subgraph {si} operators")
        for op in ops:
            opcode = int(op.scalar(0, "<I"))
            if opcode >= len(opcodes):
                raise UploadError(f"{op.what}: opcode index {opcode} but the model has {len(opcodes)} operator codes")
            for k in op.ints(1, op.what + ".inputs") + op.ints(2, op.what + ".outputs"):
                index(k, op.what)
        n_ops += len(ops)
        if si == 0:
            io = (tuple(specs[k] for k in ins if k >= 0), tuple(specs[k] for k in outs if k >= 0))
    return ModelSummary(version, len(subgraphs), n_ops, n_tensors, len(buffers), io[0], io[1])


@dataclass(frozen=True)
class ArraySpec:
    key: str
    dtype: str
    shape: tuple[int, ...]


def array_nbytes(spec: ArraySpec) -> int:
    """Bytes the array takes once loaded, from its header alone."""
    count = 1
    for d in spec.shape:
        count *= d
    return count * int(next(k for k, v in NPY_DESCRS.items() if v == spec.dtype)[2:])


def npz_arrays(data: bytes, max_bytes: int | None = None) -> dict[str, ArraySpec]:
    """Reads the .npy headers of an .npz (no numpy, nothing extracted).

    Args:
        max_bytes: the most the arrays may take once loaded, summed over the members; a small
            compressed .npz can declare gigabytes of zeros.

    Raises:
        UploadError: not a zip, a member that is not a plain .npy, an object/pickled dtype, or
            arrays over `max_bytes`.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UploadError(f"inputs are not an .npz (zip) archive: {exc}") from None
    out: dict[str, ArraySpec] = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise UploadError(f"inputs: member {info.filename!r} is not an .npy array")
            key = info.filename[: -len(".npy")]
            try:
                with zf.open(info) as f:
                    head = f.read(12)
                    if head[:6] != b"\x93NUMPY":
                        raise UploadError(f"inputs: {key!r} is not an .npy array")
                    major = head[6]
                    hlen = struct.unpack("<H", head[8:10])[0] if major == 1 else struct.unpack("<I", head[8:12])[0]
                    rest = head[10:] if major == 1 else head[12:]
                    if hlen > 65536:
                        raise UploadError(f"inputs: {key!r} has a {hlen}-byte header")
                    text = (rest + f.read(hlen - len(rest))).decode("latin1")
                header = ast.literal_eval(text)
            except (zipfile.BadZipFile, OSError, ValueError, SyntaxError, struct.error) as exc:
                raise UploadError(f"inputs: {key!r} cannot be read: {exc}") from None
            if not isinstance(header, dict) or "descr" not in header or "shape" not in header:
                raise UploadError(f"inputs: {key!r} has no dtype/shape header")
            descr = header["descr"]
            if not isinstance(descr, str) or descr not in NPY_DESCRS:
                raise UploadError(f"inputs: {key!r} has dtype {descr!r}; allowed: {', '.join(NPY_DESCRS.values())}")
            if header.get("fortran_order"):
                raise UploadError(f"inputs: {key!r} is Fortran-ordered; save a C-contiguous array")
            shape = header["shape"]
            if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise UploadError(f"inputs: {key!r} has a malformed shape {shape!r}")
            out[key] = ArraySpec(key, NPY_DESCRS[descr], shape)
    if max_bytes is not None:
        total = sum(array_nbytes(a) for a in out.values())
        if total > max_bytes:
            raise UploadError(f"inputs: the arrays take {total} bytes once loaded, over the limit of {max_bytes} "
                              "bytes (max_inputs_mb)")
    return out


def match_inputs(arrays: dict[str, ArraySpec], model: ModelSummary) -> int:
    """Checks the arrays feed the model's inputs; returns the number of samples.

    A single-input model takes "x" (or "input_0"); others take "input_0", "input_1", ...; each
    array is [n, *input shape without its batch dimension].

    Raises:
        UploadError: naming the missing/extra key or the mismatched shape.
    """
    n_in = len(model.inputs)
    if n_in == 1 and protocol.SINGLE_INPUT_KEY in arrays:
        wanted = [protocol.SINGLE_INPUT_KEY]
    else:
        wanted = [protocol.input_key(i) for i in range(n_in)]
    missing = [k for k in wanted if k not in arrays]
    extra = sorted(set(arrays) - set(wanted))
    if missing or extra:
        raise UploadError(f"inputs: the model has {n_in} input(s) and needs arrays {wanted}; "
                          f"missing {missing}, unexpected {extra}")
    counts = set()
    for key, spec in zip(wanted, model.inputs, strict=True):
        arr = arrays[key]
        if not arr.shape:
            raise UploadError(f"inputs: {key!r} is a scalar; give [n, ...] samples")
        want = spec.shape[1:]
        if len(arr.shape[1:]) != len(want) or any(w not in (-1, g) for w, g in zip(want, arr.shape[1:], strict=True)):
            raise UploadError(f"inputs: {key!r} has samples of shape {arr.shape[1:]} but input "
                              f"{spec.name!r} takes {want} (batch dimension left out)")
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise UploadError(f"inputs: arrays hold different numbers of samples {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise UploadError("inputs: no samples")
    return n
