"""The child process that touches the TFLite runtime: probe, benchmark, or run inputs through a model.

Run as `python -m board_agent.runner SPEC.json`. The spec names the mode and files; the result
(or {"error": ...}) is written as JSON to spec["result"]. A model that crashes or hangs the
runtime takes only this process down; the agent reports it and keeps serving.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import signal
import sys
import time
from typing import Any

from board_agent import protocol


class RunnerError(Exception):
    """A failure to report in words (bad model for this runtime, wrong inputs, no delegate)."""


# ---------------------------------------------------------------------- runtime discovery
# (name shown to users, module holding Interpreter / load_delegate / OpResolverType, distribution name),
# in the order the agent tries them: LiteRT, then NXP Yocto's tflite_runtime, then full TensorFlow
RUNTIMES: tuple[tuple[str, str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow.lite.python.interpreter", "tensorflow"),
)


class Runtime:
    """The first TFLite runtime found among RUNTIMES."""

    def __init__(self) -> None:
        errors: list[str] = []
        for name, module_name, dist in RUNTIMES:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                errors.append(f"{name}: {exc}")
                continue
            self.name, self.module = name, module
            top = sys.modules.get(module_name.split(".")[0])
            self.version = _dist_version(dist) or str(getattr(top, "__version__", "?"))
            break
        else:
            raise RunnerError("no TFLite runtime: " + "; ".join(errors))
        self.Interpreter = self.module.Interpreter
        self.load_delegate = getattr(self.module, "load_delegate", None)
        # every runtime keeps the resolver enum in its interpreter module, when it has one at all
        self.OpResolverType = getattr(self.module, "OpResolverType", None)

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": str(self.version)}

    def make(self, model_path: str, target: str, threads: int, delegate_path: str) -> tuple[Any, Any]:
        """(interpreter, delegate or None) for a target, not yet allocated."""
        kwargs: dict[str, Any] = {"model_path": model_path, "num_threads": threads}
        delegate = None
        if target == protocol.NPU:
            if self.load_delegate is None:
                raise RunnerError(f"{self.name} {self.version} has no load_delegate")
            try:
                delegate = self.load_delegate(delegate_path)
            except (ValueError, RuntimeError, OSError) as exc:
                raise RunnerError(f"cannot load the VX delegate {delegate_path}: {exc}") from None
            kwargs["experimental_delegates"] = [delegate]
            # fallback ops run on the builtin kernels, so "delegated" means the NPU and nothing else
            if self.OpResolverType is not None:
                kwargs["experimental_op_resolver_type"] = self.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif target == protocol.CPU_PLAIN:
            if self.OpResolverType is None:
                raise RunnerError(f"{self.name} {self.version} has no OpResolverType; cannot turn XNNPACK off")
            kwargs["experimental_op_resolver_type"] = self.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif target != protocol.CPU:
            raise RunnerError(f"unknown target {target!r}")
        try:
            return self.Interpreter(**kwargs), delegate
        except (ValueError, RuntimeError) as exc:
            raise RunnerError(f"{self.name} cannot load the model: {_first_line(exc)}") from None


def _dist_version(dist: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------- modes
def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Which runtime is here and whether each target can run."""
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        rt = Runtime()
    except RunnerError as exc:
        reason = str(exc)
        out["runtime"] = {"name": None, "version": None, "error": reason}
        out["targets"] = {t: {"available": False, "reason": reason} for t in protocol.TARGETS}
        return out
    out["runtime"] = rt.describe()
    targets: dict[str, dict[str, Any]] = {protocol.CPU: {"available": True, "reason": f"{rt.name} with XNNPACK"}}
    if rt.OpResolverType is not None:
        targets[protocol.CPU_PLAIN] = {"available": True, "reason": f"{rt.name} builtin kernels"}
    else:
        targets[protocol.CPU_PLAIN] = {"available": False,
                                       "reason": f"{rt.name} {rt.version} has no OpResolverType"}
    path = str(spec.get("delegate", protocol.DEFAULT_NPU_DELEGATE))
    if not os.path.exists(path):
        targets[protocol.NPU] = {"available": False,
                                 "reason": f"VX delegate {path} not found (no i.MX NPU stack on this host)"}
    elif rt.load_delegate is None:
        targets[protocol.NPU] = {"available": False, "reason": f"{rt.name} {rt.version} has no load_delegate"}
    else:
        try:
            rt.load_delegate(path)
            targets[protocol.NPU] = {"available": True, "reason": f"VX delegate {path}",
                                     "delegate": delegate_info(path)}
        except (ValueError, RuntimeError, OSError) as exc:
            targets[protocol.NPU] = {"available": False,
                                     "reason": f"VX delegate {path} does not load: {_first_line(exc)}"}
    out["targets"] = {t: targets[t] for t in protocol.TARGETS}
    return out


def delegate_info(path: str) -> dict[str, Any]:
    """What the VX delegate file says about its version: it has no version call, so its real name."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        size, mtime = st.st_size, int(st.st_mtime)
    except OSError:
        size, mtime = -1, 0
    version = os.path.basename(real).split(".so.", 1)[1] if ".so." in os.path.basename(real) else "unknown"
    return {"name": "vx_delegate", "path": path, "file": real, "version": version, "size_bytes": size,
            "mtime": mtime}


def _fill_inputs(it: Any) -> None:
    """Deterministic inputs in each tensor's dtype: timing must not depend on the data's origin."""
    import numpy as np

    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        dtype, shape = np.dtype(d["dtype"]), tuple(int(s) for s in d["shape"])
        if dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            arr = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            raise RunnerError(f"input {d['name']!r} has dtype {dtype.name}, which the benchmark cannot fill")
        it.set_tensor(d["index"], arr)


def ops_report(it: Any) -> dict[str, Any]:
    """Which ops the delegate took, from the interpreter's node list after delegation.

    The runtime appends one DELEGATE node per delegated partition; the original nodes it replaced
    stay in the list. An original node belongs to a partition when it lies between the
    partition's input and output tensors.
    """
    get = getattr(it, "_get_ops_details", None)
    if get is None:
        return {"known": False, "reason": "this runtime does not list its nodes", "delegated": [], "cpu": []}
    try:
        nodes = get()
    except (ValueError, RuntimeError) as exc:
        return {"known": False, "reason": _first_line(exc), "delegated": [], "cpu": []}
    delegate_nodes = [n for n in nodes if str(n["op_name"]).upper() == "DELEGATE"]
    original = [n for n in nodes if str(n["op_name"]).upper() != "DELEGATE"]
    producer: dict[int, dict[str, Any]] = {}
    for n in original:
        for t in n["outputs"]:
            producer[int(t)] = n
    taken: set[int] = set()
    for d in delegate_nodes:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            n = producer[t]
            if n["index"] not in taken:
                taken.add(n["index"])
                stack.extend(int(x) for x in n["inputs"] if int(x) >= 0)
    return {
        "known": True,
        "source": "interpreter node list after delegation",
        "delegate_nodes": len(delegate_nodes),
        "delegated": [str(n["op_name"]) for n in original if n["index"] in taken],
        "cpu": [str(n["op_name"]) for n in original if n["index"] not in taken],
    }


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 2)


def _open(rt: Runtime, spec: dict[str, Any]) -> tuple[Any, Any, float]:
    """(allocated interpreter, delegate or None, init_ms: creation plus allocation) for a job's target."""
    target = str(spec["target"])
    t0 = time.perf_counter()
    it, delegate = rt.make(spec["model"], target, int(spec["threads"]), str(spec.get("delegate", "")))
    try:
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise RunnerError(f"allocate_tensors failed on {target}: {_first_line(exc)}") from None
    return it, delegate, (time.perf_counter() - t0) * 1e3


def benchmark(spec: dict[str, Any]) -> dict[str, Any]:
    """Times one model on one target: init, first invoke, then steady-state statistics."""
    import numpy as np

    rt = Runtime()
    target, threads = str(spec["target"]), int(spec["threads"])
    runs, warmup = int(spec["runs"]), int(spec["warmup"])
    it, delegate, init_ms = _open(rt, spec)
    _fill_inputs(it)
    invoke = it.invoke
    # the NPU compiles the graph on the first invoke; keep it out of the steady-state figures
    t0 = time.perf_counter()
    try:
        invoke()
    except (ValueError, RuntimeError) as exc:
        raise RunnerError(f"invoke failed on {target}: {_first_line(exc)}") from None
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        invoke()
    times = np.empty(runs, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(runs):
        start = clock()
        invoke()
        times[i] = clock() - start
    times /= 1e6
    ops = ops_report(it)
    del it, delegate
    return {
        "target": target, "threads": threads, "xnnpack": target == protocol.CPU, "runs": runs, "warmup": warmup,
        "init_ms": init_ms, "first_ms": first_ms,
        "min_ms": float(times.min()), "mean_ms": float(times.mean()),
        "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)), "std_ms": float(times.std()),
        "peak_rss_mb": _peak_rss_mb(),
        "runtime": rt.describe(),
        "delegate": _delegate_field(rt, target, str(spec.get("delegate", ""))),
        "ops": ops,
    }


def _delegate_field(rt: Runtime, target: str, path: str) -> dict[str, Any] | None:
    if target == protocol.NPU:
        return delegate_info(path)
    if target == protocol.CPU:
        return {"name": "xnnpack", "version": f"built into {rt.name} {rt.version}"}
    return None


def infer(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs every sample through the model one at a time; float inputs are quantized with the
    input tensor's scale and zero point, outputs are dequantized to float32."""
    import numpy as np

    rt = Runtime()
    target, threads = str(spec["target"]), int(spec["threads"])
    it, delegate, init_ms = _open(rt, spec)
    ins, outs = it.get_input_details(), it.get_output_details()
    check_npz_size(spec["inputs"], int(spec.get("max_input_bytes") or 0))
    with np.load(spec["inputs"], allow_pickle=False) as z:
        keys = ([protocol.SINGLE_INPUT_KEY] if len(ins) == 1 and protocol.SINGLE_INPUT_KEY in z.files
                else [protocol.input_key(i) for i in range(len(ins))])
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise RunnerError(f"inputs lack {missing}; the model has {len(ins)} input(s)")
        arrays = [z[k] for k in keys]
    prepared, io_inputs = [], []
    for d, arr in zip(ins, arrays, strict=True):
        dtype = np.dtype(d["dtype"])
        scale, zp = d["quantization"]
        from_float = arr.dtype.kind == "f" and dtype.kind in "iu"
        if from_float:
            if not scale:
                raise RunnerError(f"input {d['name']!r} is {dtype.name} without a scale; send it already quantized")
            info = np.iinfo(dtype)
            q = np.clip(np.rint(arr.astype(np.float64) / scale + zp), info.min, info.max).astype(dtype)
        elif arr.dtype != dtype and not (arr.dtype.kind == "f" and dtype.kind == "f"):
            raise RunnerError(f"input {d['name']!r} is {dtype.name} but the array is {arr.dtype.name}")
        else:
            q = arr.astype(dtype, copy=False)
        prepared.append(q)
        io_inputs.append({"name": d["name"], "dtype": dtype.name, "shape": [int(s) for s in d["shape"]],
                          "scale": float(scale), "zero_point": int(zp), "quantized_from_float": bool(from_float)})
    n = len(prepared[0])
    batch_shape = [tuple(int(s) for s in d["shape"]) for d in ins]
    results: list[list[Any]] = [[] for _ in outs]
    t0 = time.perf_counter()
    for i in range(n):
        for d, q, shape in zip(ins, prepared, batch_shape, strict=True):
            it.set_tensor(d["index"], q[i:i + 1].reshape(shape))
        try:
            it.invoke()
        except (ValueError, RuntimeError) as exc:
            raise RunnerError(f"invoke failed on sample {i}: {_first_line(exc)}") from None
        for j, d in enumerate(outs):
            results[j].append(it.get_tensor(d["index"]).copy())
    total_ms = (time.perf_counter() - t0) * 1e3
    arrays_out: dict[str, Any] = {}
    io_outputs = []
    for j, d in enumerate(outs):
        stacked = np.concatenate(results[j]) if results[j] else np.zeros((0,), np.float32)
        scale, zp = d["quantization"]
        if stacked.dtype.kind in "iu" and scale:
            stacked = (stacked.astype(np.float32) - np.float32(zp)) * np.float32(scale)
        arrays_out[protocol.output_key(j)] = stacked.astype(np.float32)
        io_outputs.append({"name": d["name"], "dtype": np.dtype(d["dtype"]).name,
                           "shape": [int(s) for s in d["shape"]], "scale": float(scale), "zero_point": int(zp)})
    tmp = spec["outputs"] + ".part.npz"
    np.savez(tmp, **arrays_out)
    os.replace(tmp, spec["outputs"])
    ops = ops_report(it)
    del it, delegate
    return {
        "target": target, "threads": threads, "n_samples": n, "init_ms": init_ms, "total_ms": total_ms,
        "per_sample_ms": total_ms / n if n else 0.0, "peak_rss_mb": _peak_rss_mb(),
        "runtime": rt.describe(), "delegate": _delegate_field(rt, target, str(spec.get("delegate", ""))),
        "io": {"input_dtype": io_inputs[0]["dtype"] if io_inputs else "",
               "output_dtype": io_outputs[0]["dtype"] if io_outputs else "",
               "inputs": io_inputs, "outputs": io_outputs},
        "ops": ops,
    }


def check_npz_size(path: str, max_bytes: int) -> None:
    """Reads every member's .npy header (numpy's own reader, no data) and refuses arrays that
    would take more than `max_bytes` once loaded, before np.load allocates them."""
    import zipfile

    from numpy.lib import format as npy

    if max_bytes <= 0:
        return
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                version = npy.read_magic(f)
                read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read(f)
            count = 1
            for d in shape:
                count *= int(d)
            total += count * dtype.itemsize
            if total > max_bytes:
                raise RunnerError(f"inputs take more than {max_bytes} bytes once loaded ({info.filename})")


MODES = {"probe": probe, "benchmark": benchmark, "infer": infer}


def die_with_parent(parent_pid: int | None) -> None:
    """Asks Linux to SIGKILL this child when the agent dies, so a hung model never outlives it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the agent's timeout still bounds the child
    # the agent may have died between our exec and the prctl: then nobody waits for us
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(3)


def main(argv: list[str] | None = None) -> int:
    """Reads the spec, runs its mode, writes {"ok": true, "result"} or {"ok": false, "error"}; exit 0/1."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m board_agent.runner SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    die_with_parent(spec.get("parent_pid"))
    try:
        payload: dict[str, Any] = {"ok": True, "result": MODES[spec["mode"]](spec)}
        code = 0
    except RunnerError as exc:
        payload, code = {"ok": False, "error": str(exc)}, 1
    except Exception as exc:  # noqa: BLE001 - any runtime error becomes the job's reason
        payload, code = {"ok": False, "error": f"{type(exc).__name__}: {_first_line(exc)}"}, 1
    tmp = spec["result"] + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    os.replace(tmp, spec["result"])
    return code


if __name__ == "__main__":
    sys.exit(main())
