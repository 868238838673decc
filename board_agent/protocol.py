"""The wire contract (v1) between the board agent and qcore's client: paths, fields, statuses, framing.

This is the one module both sides import. It holds only constants and pure functions over
bytes, so the agent can be copied to a board alone (standard library, Python 3.10+).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

VERSION = "v1"
DEFAULT_PORT = 8765

# ------------------------------------------------------------------ endpoints
HEALTH = "/v1/health"
BENCHMARKS = "/v1/benchmarks"  # POST (raw .tflite body) -> 202 {"id"}; GET /{id}
INFERENCES = "/v1/inferences"  # POST (framed model + .npz) -> 202 {"id"}; GET /{id}; GET /{id}/outputs
OUTPUTS_SUFFIX = "/outputs"

# job ids are chosen by the agent: 16 lowercase hex digits; anything else is an unknown job (404)
JOB_ID_RE = re.compile(r"^[0-9a-f]{16}$")

# ------------------------------------------------------------------ auth
TOKEN_ENV = "QLAB_AGENT_TOKEN"
AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"

# ------------------------------------------------------------------ targets
NPU = "npu"
CPU = "cpu"
CPU_PLAIN = "cpu-plain"
TARGETS: tuple[str, ...] = (NPU, CPU, CPU_PLAIN)
TARGET_HELP: dict[str, str] = {
    NPU: "the VX delegate (VeriSilicon NPU), with NXP's graph cache",
    CPU: "the builtin kernels plus XNNPACK, with the chosen thread count",
    CPU_PLAIN: "the builtin kernels without default delegates (no XNNPACK)",
}
DEFAULT_NPU_DELEGATE = "/usr/lib/libvx_delegate.so"

# ------------------------------------------------------------------ job records
QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
JOB_STATUSES: tuple[str, ...] = (QUEUED, RUNNING, DONE, FAILED)
FINISHED: tuple[str, ...] = (DONE, FAILED)
RESTARTED_REASON = "agent restarted"

KIND_BENCHMARK = "benchmark"
KIND_INFERENCE = "inference"

# keys of GET /v1/benchmarks/{id} and GET /v1/inferences/{id}
JOB_FIELDS: tuple[str, ...] = (
    "id", "kind", "status", "params", "label", "sha256", "size_bytes",
    "created_at", "started_at", "finished_at", "result", "error",
)

# keys of a benchmark's "result"; all times in milliseconds
RESULT_TIMES: tuple[str, ...] = (
    "init_ms", "first_ms", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms",
)
RESULT_FIELDS: tuple[str, ...] = (
    "target", "threads", "xnnpack", "runs", "warmup", *RESULT_TIMES,
    "peak_rss_mb",  # ru_maxrss of the child that ran the model
    "runtime",  # {"name", "version"}
    "delegate",  # {"name", "path", "version"} or null
    "ops",  # {"known": bool, "delegated": [...], "cpu": [...], "delegate_nodes": n, "source": ...}
    "cache",  # npu only: {"dir", "warm": bool}
    "profile",  # {"available": bool, "reason"?, "ops"?: [...], "by_type"?: [...], "npu"?: per-NPU-operation rows}
)

# ------------------------------------------------------------------ query parameters
@dataclass(frozen=True)
class IntParam:
    """A bounded integer query parameter."""

    name: str
    default: int
    low: int
    high: int
    help: str

    def parse(self, raw: str | None) -> int:
        """The value, or ValueError naming the parameter and the allowed range."""
        if raw is None or raw == "":
            return self.default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{self.name}={raw!r} is not an integer") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name}={value} is outside [{self.low}, {self.high}]")
        return value


RUNS = IntParam("runs", 50, 1, 100_000, "timed invokes after the warmup")
WARMUP = IntParam("warmup", 5, 0, 10_000, "untimed invokes after the first")
THREADS = IntParam("threads", 1, 1, 64, "CPU threads of the interpreter")
PROFILE = IntParam("profile", 0, 0, 1, "1: also run benchmark_model --enable_op_profiling")

BENCHMARK_PARAMS: dict[str, IntParam] = {p.name: p for p in (RUNS, WARMUP, THREADS, PROFILE)}
INFERENCE_PARAMS: dict[str, IntParam] = {p.name: p for p in (THREADS,)}
# free-text label shown in job records; never used as a file name
LABEL_PARAM = "label"
LABEL_MAX = 200

# ------------------------------------------------------------------ bodies
TFLITE_MAGIC = b"TFL3"
TFLITE_MAGIC_OFFSET = 4
TFLITE_CONTENT_TYPE = "application/octet-stream"

# POST /v1/inferences body: b"QLI1", u64 little-endian model length, the model, then the .npz
FRAME_MAGIC = b"QLI1"
FRAME_CONTENT_TYPE = "application/x-qlab-inference"
_FRAME_HEADER = struct.Struct("<4sQ")
NPZ_CONTENT_TYPE = "application/x-npz"
# input arrays in the .npz: "x" for a single-input model, else "input_0", "input_1", ...
# outputs come back as "output_0", "output_1", ... (dequantized float32)
SINGLE_INPUT_KEY = "x"


def input_key(i: int) -> str:
    return f"input_{i}"


def output_key(i: int) -> str:
    return f"output_{i}"


def has_tflite_magic(data: bytes) -> bool:
    """True when `data` carries the TFLite file identifier at offset 4."""
    end = TFLITE_MAGIC_OFFSET + len(TFLITE_MAGIC)
    return len(data) >= end and data[TFLITE_MAGIC_OFFSET:end] == TFLITE_MAGIC


def pack_inference(model: bytes, npz: bytes) -> bytes:
    """The body of POST /v1/inferences: header, model bytes, then the .npz of inputs."""
    return _FRAME_HEADER.pack(FRAME_MAGIC, len(model)) + bytes(model) + bytes(npz)


def unpack_inference(body: bytes) -> tuple[bytes, bytes]:
    """(model, npz) from a framed body.

    Raises:
        ValueError: when the frame header is missing or the lengths do not add up.
    """
    if len(body) < _FRAME_HEADER.size:
        raise ValueError(f"body of {len(body)} bytes is shorter than the {_FRAME_HEADER.size}-byte frame header")
    magic, model_len = _FRAME_HEADER.unpack_from(body)
    if magic != FRAME_MAGIC:
        raise ValueError(f"body does not start with {FRAME_MAGIC!r}; see board_agent/README.md for the framing")
    start = _FRAME_HEADER.size
    if model_len == 0 or start + model_len > len(body):
        raise ValueError(f"frame says the model has {model_len} bytes but the body holds {len(body) - start}")
    return body[start:start + model_len], body[start + model_len:]


def job_path(collection: str, job_id: str) -> str:
    """e.g. job_path(BENCHMARKS, "0123456789abcdef") -> "/v1/benchmarks/0123456789abcdef"."""
    return f"{collection}/{job_id}"
