"""The one module that talks to LiteRT: load, resize, quantize inputs, dequantize outputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qcore.qtyping import QlabError

if TYPE_CHECKING:  # the runtime loads only where a model runs (a worker, the CLI), never for a page
    from ai_edge_litert.interpreter import Interpreter

log = logging.getLogger(__name__)

# a TFLite flatbuffer carries this file identifier at bytes 4..8
TFLITE_IDENTIFIER = b"TFL3"

# big enough to amortize invoke overhead, small enough to keep activations in cache-sized chunks
DEFAULT_BATCH = 256

# custom ops LiteRT's builtin resolver registers itself (register.cc): models using them run here
RUNTIME_CUSTOM_OPS = frozenset({"TFLite_Detection_PostProcess", "Mfcc", "AudioSpectrogram", "NumericVerify"})


def read_tflite(path: str | os.PathLike[str], *, check_identifier: bool = True) -> bytes:
    """Reads a .tflite file.

    Raises:
        QlabError: naming the path when it is missing, a directory, unreadable, or (with
            check_identifier) lacks the TFL3 identifier.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise QlabError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise QlabError(f"{p}: is a directory, not a .tflite file") from None
    except OSError as exc:
        raise QlabError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if check_identifier and data[4:8] != TFLITE_IDENTIFIER:
        raise QlabError(f"{p}: not a TFLite model (no TFL3 identifier)")
    return data


def custom_ops(model: bytes) -> tuple[str, ...]:
    """The custom codes of a .tflite's custom ops (Flex ops included), read from its operator codes.

    Cheap: only the operator-code table is read, not the tensors. A buffer that does not parse
    gives (), and the runtime then explains what is wrong with it.
    """
    from ai_edge_litert import schema_py_generated as schema

    try:
        root = schema.Model.GetRootAs(bytes(model), 0)
        names = []
        for i in range(root.OperatorCodesLength()):
            oc = root.OperatorCodes(i)
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            if code == schema.BuiltinOperator.CUSTOM:
                raw = oc.CustomCode()
                names.append(raw.decode("utf-8", "replace") if raw else "CUSTOM")
    except Exception:  # a corrupt buffer: leave the verdict to the runtime and the inspector
        return ()
    return tuple(sorted(set(names)))


def check_runnable(model: bytes, label: str = "this model") -> None:
    """Refuses a model whose custom ops LiteRT here cannot resolve, naming them.

    Flex (Select TF) ops need the Flex delegate, and other custom ops need a kernel registered
    by the program that made them; ai-edge-litert has neither, and would fail at allocation.

    Raises:
        QlabError: naming the ops that cannot run.
    """
    missing = [name for name in custom_ops(model) if name not in RUNTIME_CUSTOM_OPS]
    if not missing:
        return
    flex = [n for n in missing if n.startswith("Flex")]
    why = ("Select TensorFlow (Flex) ops need the Flex delegate, which qlab's runtime does not have"
           if flex else "no kernel for them is registered in qlab's runtime")
    raise QlabError(
        f"{label} uses custom op{'s' if len(missing) > 1 else ''} {', '.join(missing)} that LiteRT cannot run "
        f"here ({why}); it can be inspected, but not run, timed or evaluated"
    )


def make_interpreter(
    model: bytes,
    *,
    threads: int = 1,
    xnnpack: bool = True,
    preserve_all_tensors: bool = False,
) -> Interpreter:
    """Creates an interpreter over a .tflite flatbuffer (not yet allocated).

    Raises:
        QlabError: when the model has custom ops this runtime cannot run, or the runtime refuses it.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not isinstance(model, bytes | bytearray):
        raise TypeError("make_interpreter needs the model as bytes")
    check_runnable(bytes(model))
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        return Interpreter(
            model_content=bytes(model),
            num_threads=threads,
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=preserve_all_tensors,
        )
    except (ValueError, RuntimeError) as exc:
        raise QlabError(f"the TFLite runtime cannot load this model: {exc}") from None


def quantize(x: np.ndarray, dtype: Any, scale: float, zero_point: int) -> np.ndarray:
    """Float → integer: round to nearest, clip to the dtype's range. A zero scale means no quantization."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return np.asarray(x, dtype=dtype)
    if not scale:
        raise QlabError(f"input tensor of dtype {dtype.name} has no quantization scale")
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(x, dtype=np.float64) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer → float32; float tensors pass through."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu" or not scale:
        return q.astype(np.float32)
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def io_dtypes(model: bytes) -> tuple[str, str]:
    """(input dtype, output dtype) as numpy names, e.g. ("int8", "int8")."""
    it = make_interpreter(model)
    return (np.dtype(it.get_input_details()[0]["dtype"]).name, np.dtype(it.get_output_details()[0]["dtype"]).name)


def _single_input(it: Interpreter) -> dict[str, Any]:
    ins = it.get_input_details()
    if len(ins) != 1:
        raise QlabError(f"qlab evaluates single-input models; this model has {len(ins)} inputs")
    return ins[0]


def _check_shape(x: np.ndarray, detail: dict[str, Any]) -> None:
    want = tuple(int(d) for d in detail["shape"][1:])
    if tuple(x.shape[1:]) != want:
        raise QlabError(
            f"data shape {tuple(x.shape[1:])} does not fit the model input shape {want} "
            f"(input {detail['name']!r}, batch dimension left out)"
        )


def run_model(
    model: bytes,
    x: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
    xnnpack: bool = True,
) -> tuple[np.ndarray, bool]:
    """Runs float inputs through a .tflite model and returns its first output, dequantized.

    Inputs are quantized with the input tensor's scale and zero point when the model has
    integer I/O. The model is resized to `batch_size` (the last batch is zero-padded); when it
    cannot be resized, samples run one at a time.

    Returns:
        (outputs of shape [len(x), ...], whether batching was used).

    Raises:
        QlabError: when the data does not fit the model or the runtime fails.
    """
    outputs, batched = run_outputs(model, x, batch_size=batch_size, threads=threads, xnnpack=xnnpack)
    return outputs[0], batched


def run_outputs(
    model: bytes,
    x: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
    xnnpack: bool = True,
) -> tuple[list[np.ndarray], bool]:
    """Like `run_model`, but returns every output of the model (detectors have several), dequantized.

    Returns:
        (one array of shape [len(x), ...] per output in the model's output order, whether batching was used).

    Raises:
        QlabError: when the data does not fit the model or the runtime fails.
    """
    x = np.asarray(x)
    it = make_interpreter(model, threads=threads, xnnpack=xnnpack)
    inp = _single_input(it)
    _check_shape(x, inp)
    n = len(x)
    batch = max(1, min(batch_size, n)) if n else 1
    try:
        return _run_batched(it, x, batch), batch > 1 or n <= 1
    except (RuntimeError, ValueError) as exc:
        if batch == 1:
            raise QlabError(f"the TFLite runtime failed: {exc}") from None
        log.info("model cannot be resized to batch %d (%s); running one sample at a time", batch, exc)
    it = make_interpreter(model, threads=threads, xnnpack=xnnpack)
    try:
        return _run_batched(it, x, 1, resize=False), False
    except (RuntimeError, ValueError) as exc:
        raise QlabError(f"the TFLite runtime failed: {exc}") from None


def _run_batched(it: Interpreter, x: np.ndarray, batch: int, resize: bool = True) -> list[np.ndarray]:
    inp = _single_input(it)
    if resize:
        it.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]], strict=False)
    it.allocate_tensors()
    inp, outs = _single_input(it), it.get_output_details()
    in_scale, in_zp = inp["quantization"]
    q = quantize(x, inp["dtype"], in_scale, in_zp)
    n = len(x)
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for start in range(0, n, batch):
        chunk = q[start : start + batch]
        if len(chunk) < batch:
            pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        it.set_tensor(inp["index"], chunk)
        it.invoke()
        for k, out in enumerate(outs):
            results[k].append(it.get_tensor(out["index"])[: min(batch, n - start)].copy())
    dequantized = []
    for out, parts in zip(outs, results, strict=True):
        scale, zp = out["quantization"]
        if not parts:
            shape = tuple(int(d) for d in out["shape"][1:])
            dequantized.append(np.zeros((0, *shape), dtype=np.float32))
        else:
            dequantized.append(dequantize(np.concatenate(parts), scale, zp))
    return dequantized
