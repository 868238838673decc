"""Per-op profiles from NXP's benchmark_model: find the binary, run it, parse its op-profiling tables."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from board_agent import protocol
from board_agent.npu_profile import (
    DEFAULT_NPU_CLOCK_MHZ,
    PROFILE_ENV,
    map_to_tflite,
    parse_npu_profile,
)

# the header benchmark_model prints before the steady-state per-op tables (the init tables come first)
RUN_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs:"
RUN_ORDER = "Run Order"
BY_TYPE = "Summary by node type"
_HEADER_COLS = re.compile(r"\[([^\]]+)\]")
_NUMBER = r"-?\d+(?:\.\d+)?%?"
_TIMINGS = re.compile(r"Timings \(microseconds\):\s*(.*)")
_INFERENCE = re.compile(r"Inference timings in us:\s*(.*)")
_MEMORY = re.compile(r"Memory footprint delta from the start of the tool \(MB\):\s*(.*)")
# the older line of NXP's BSP builds (TF 2.4-2.9): the peak, not the delta
_PEAK_MEMORY = re.compile(r"Peak memory footprint \(MB\):\s*(.*)")
_KV = re.compile(r"([A-Za-z][A-Za-z ()]*?)\s*[=:]\s*(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)")

# run before exec'ing benchmark_model: Linux SIGKILLs it when the agent's worker thread dies (the
# setting survives exec), and it exits at once if the agent is already gone
_EXEC_GUARDED = (
    "import ctypes, os, signal, sys\n"
    "try:\n ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "except (OSError, AttributeError):\n pass\n"
    "if os.getppid() != int(sys.argv[1]):\n os._exit(3)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# column names of benchmark_model's tables -> result keys
_COLUMNS = {
    "node type": "node_type", "start": "start_ms", "first": "first_ms", "avg ms": "avg_ms", "%": "percent",
    "cdf%": "cdf_percent", "mem kb": "mem_kb", "times called": "times_called", "name": "name",
    "count": "count", "avg %": "avg_percent", "cdf %": "cdf_percent",
}


def find_benchmark_model(pattern: str) -> str | None:
    """The newest executable matching the glob (NXP installs /usr/bin/tensorflow-lite-<ver>/examples/)."""
    hits = sorted((p for p in glob.glob(pattern) if os.path.isfile(p) and os.access(p, os.X_OK)), reverse=True)
    return hits[0] if hits else None


def command(binary: str, model: str, target: str, *, threads: int, runs: int, warmup: int,
            delegate: str) -> list[str]:
    """benchmark_model's arguments for one target."""
    cmd = [binary, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}",
           f"--warmup_runs={max(1, warmup)}", "--enable_op_profiling=true"]
    if target == protocol.NPU:
        cmd.append(f"--external_delegate_path={delegate}")
    else:
        cmd.append(f"--use_xnnpack={'true' if target == protocol.CPU else 'false'}")
    return cmd


def run_profile(pattern: str, model: str, target: str, *, threads: int, runs: int, warmup: int, delegate: str,
                timeout: float, env: dict[str, str] | None = None, npu_clock_mhz: float = DEFAULT_NPU_CLOCK_MHZ,
                tflite_ops: list[str] | None = None,
                on_start: Callable[[subprocess.Popen[bytes]], None] | None = None) -> dict[str, Any]:
    """Runs benchmark_model with op profiling; never raises, says why when there is no profile.

    On the npu target the VeriSilicon driver's profiler is switched on too (`PROFILE_ENV`), and
    its per-operation blocks are parsed into result["npu"] (see `npu_profile.parse_npu_profile`),
    paired with `tflite_ops` (the delegated ops in order) where the counts allow. The binary runs
    in its own process group (killed whole on timeout) and dies with the agent.

    Args:
        timeout: seconds left of the job's one timeout.
        on_start: called with the child once it runs, so the agent can kill it when it stops.
    """
    if target == protocol.NPU:
        env = {**(env if env is not None else os.environ), **PROFILE_ENV}
    binary = find_benchmark_model(pattern)
    if binary is None:
        return {"available": False, "reason": f"benchmark_model not found (looked for {pattern})"}
    cmd = command(binary, model, target, threads=threads, runs=runs, warmup=warmup, delegate=delegate)
    if timeout <= 0:
        return {"available": False, "reason": "no time left of the job's job_timeout for benchmark_model",
                "command": " ".join(cmd)}
    try:
        proc = subprocess.Popen([sys.executable, "-c", _EXEC_GUARDED, str(os.getpid()), *cmd],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    except OSError as exc:
        return {"available": False, "reason": f"benchmark_model did not start: {exc}", "command": " ".join(cmd)}
    if on_start is not None:
        on_start(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return {"available": False, "reason": f"benchmark_model timed out (the job's {timeout:.0f} s left)",
                "command": " ".join(cmd)}
    text = out.decode("utf-8", "replace")
    parsed = parse_op_profile(text)
    parsed["command"] = " ".join(cmd)
    if target == protocol.NPU:
        parsed["npu"] = map_to_tflite(parse_npu_profile(text, clock_mhz=npu_clock_mhz), tflite_ops)
    if proc.returncode != 0:
        parsed.update(available=False, reason=f"benchmark_model exited with {proc.returncode}: "
                      + (text.strip().splitlines() or [""])[-1][:300])
    elif not parsed["ops"]:
        parsed.update(available=False, reason="benchmark_model printed no per-op table")
    return parsed


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILLs the child's whole process group (it leads its own session) and reaps it."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def parse_op_profile(text: str) -> dict[str, Any]:
    """Parses benchmark_model's output with --enable_op_profiling.

    Reads the steady-state section (after "Operator-wise Profiling Info for Regular Benchmark
    Runs:"): its "Run Order" table (one row per executed node, delegate partitions included) and
    its "Summary by node type" table, plus the "Inference timings in us" and memory lines. Both
    the tab-separated and the space-aligned layouts, with or without the [start] column, parse.

    Returns:
        {"available": bool, "ops": [...], "by_type": [...], "timings_us": {...}, "inference_us": {...},
        "memory_mb": {...}}; times in ms, percentages as numbers. `memory_mb` is the newer "Memory
        footprint delta" line; the older "Peak memory footprint (MB): init=… overall=…" line goes
        to "peak_memory_mb" (only when printed).
    """
    lines = [_strip_log_prefix(line) for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if RUN_SECTION in line), None)
    out: dict[str, Any] = {"available": False, "ops": [], "by_type": [], "timings_us": {}, "inference_us": {},
                           "memory_mb": {}}
    for line in lines:
        if m := _INFERENCE.search(line):
            out["inference_us"] = _key_values(m.group(1))
        elif m := _MEMORY.search(line):
            out["memory_mb"] = _key_values(m.group(1))
        elif m := _PEAK_MEMORY.search(line):
            out["peak_memory_mb"] = _key_values(m.group(1))
    if start is None:
        return out
    section = lines[start + 1:]
    out["ops"] = _table(section, RUN_ORDER, with_name=True)
    out["by_type"] = _table(section, BY_TYPE, with_name=False)
    for line in section:
        if m := _TIMINGS.search(line):
            out["timings_us"] = _key_values(m.group(1))
            break
    out["available"] = bool(out["ops"])
    return out


def _strip_log_prefix(line: str) -> str:
    # TFLITE_LOG lines may start with "INFO: "
    return line[6:] if line.startswith("INFO: ") else line


def _key_values(text: str) -> dict[str, float]:
    return {k.strip().lower().replace(" ", "_").replace("(", "").replace(")", ""): float(v)
            for k, v in _KV.findall(text)}


def _table(lines: list[str], title: str, *, with_name: bool) -> list[dict[str, Any]]:
    """Rows of the first table whose banner contains `title`; stops at the next banner or blank line."""
    at = next((i for i, line in enumerate(lines) if "=====" in line and title in line), None)
    if at is None or at + 1 >= len(lines):
        return []
    header = [h.strip().lower() for h in _HEADER_COLS.findall(lines[at + 1])]
    if not header:
        return []
    keys = [_COLUMNS.get(h, h.replace(" ", "_")) for h in header]
    n_numbers = len(keys) - 1 - (1 if with_name else 0)
    row_re = re.compile(
        r"^\s*(?P<type>\S.*?)\s+(?P<nums>(?:" + _NUMBER + r"\s+){" + str(n_numbers - 1) + r"}" + _NUMBER + r")"
        + (r"\s+(?P<name>.*?)\s*$" if with_name else r"\s*$")
    )
    rows: list[dict[str, Any]] = []
    for line in lines[at + 2:]:
        if not line.strip() or "=====" in line:
            break
        m = row_re.match(line.replace("\t", "  "))
        if not m:
            continue
        numbers = m.group("nums").split()
        row: dict[str, Any] = {keys[0]: m.group("type").strip()}
        for key, raw in zip(keys[1:1 + n_numbers], numbers, strict=True):
            value = float(raw.rstrip("%"))
            row[key] = int(value) if key in ("times_called", "count") else value
        if with_name:
            row[keys[-1]] = m.group("name")
        rows.append(row)
    return rows
