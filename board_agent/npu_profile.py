"""Per-NPU-operation figures from the VeriSilicon driver's profiler (CNN_PERF / NN_EXT_SHOW_PERF / VIV_VX_PROFILE).

The VX delegate shows as one node in benchmark_model's op profile (it does not profile inside the
delegate), so per-layer NPU figures come from the driver. With the variables of `PROFILE_ENV`
set, the driver prints one block of nine counters per NPU operation and invoke:

    [   10] TOTAL_READ_BANDWIDTH  (MByte): 1.566536
    [   11] TOTAL_WRITE_BANDWIDTH (MByte): 5.281226
    ...
    [   16] GPUTOTALCYCLES: 963446
    [   17] GPUIDLECYCLES: 347846
    [   18] GPUCYCLES: 615600

The bracketed number counts printed lines, not operations. An NPU operation is a fused graph
node of the driver, not a TFLite op, and the blocks carry no names; `map_to_tflite` pairs them
with TFLite ops only when the counts match, and says so in every row.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

# the driver's profiler switches (NXP i.MX Machine Learning User's Guide, "NPU profiling")
PROFILE_ENV: dict[str, str] = {"CNN_PERF": "1", "NN_EXT_SHOW_PERF": "1", "VIV_VX_PROFILE": "1"}

# The NPU core clock of the i.MX 8M Plus: 1000 MHz in overdrive mode, 800 MHz in nominal mode.
# Source: Linux drivers/clk/imx/clk-imx8mp.c (IMX8MP_CLK_ML_CORE limits: nominal 800 MHz, overdrive
# 1000 MHz) and NXP's imx8mp.dtsi, which clocks ML_CORE from SYS_PLL2_1000M (the EVK runs overdrive).
# The EVK capture agrees: ~37 M total cycles per invoke against a measured 38.9 ms.
DEFAULT_NPU_CLOCK_MHZ = 1000.0

SOURCE = "VeriSilicon driver profiler (VIV_VX_PROFILE=1)"

_LINE = re.compile(r"^\s*\[\s*\d+\]\s*([A-Z_]+)\s*(?:\(MByte\))?\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*$")
_COUNT = re.compile(r"\bcount=(\d+)\b")
_RUNNING = "Running benchmark for at least"

# driver counter -> field of an operation row
COUNTERS: dict[str, str] = {
    "TOTAL_READ_BANDWIDTH": "total_read_mb",
    "TOTAL_WRITE_BANDWIDTH": "total_write_mb",
    "AXI_READ_BANDWIDTH": "axi_read_mb",
    "AXI_WRITE_BANDWIDTH": "axi_write_mb",
    "DDR_READ_BANDWIDTH": "ddr_read_mb",
    "DDR_WRITE_BANDWIDTH": "ddr_write_mb",
    "GPUTOTALCYCLES": "cycles_total",
    "GPUIDLECYCLES": "cycles_idle",
    "GPUCYCLES": "cycles_busy",
}
# the counter that closes a block
_LAST = "GPUCYCLES"

# mapping confidence written into every row
MAPPING_BY_ORDER = "by_order"
MAPPING_NONE = "none"


def parse_blocks(text: str) -> list[list[dict[str, float]]]:
    """Counter blocks grouped by benchmark section (a "Running benchmark ..." line starts one).

    Returns:
        One list per section that holds blocks; each block maps field names of COUNTERS to values.
    """
    sections: list[list[dict[str, float]]] = [[]]
    block: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw[6:] if raw.startswith("INFO: ") else raw
        if _RUNNING in line:
            sections.append([])
            block = {}
            continue
        m = _LINE.match(line)
        if not m or m.group(1) not in COUNTERS:
            continue
        block[COUNTERS[m.group(1)]] = float(m.group(2))
        if m.group(1) == _LAST:
            sections[-1].append(block)
            block = {}
    return [s for s in sections if s]


def _section_counts(text: str) -> list[int]:
    """The `count=N` of each benchmark section, in order (invokes per section)."""
    counts: list[int] = []
    in_section = False
    for line in text.splitlines():
        if _RUNNING in line:
            in_section = True
            continue
        m = _COUNT.search(line)
        if in_section and m and line.lstrip().startswith("count="):
            counts.append(int(m.group(1)))
            in_section = False
    return counts


def parse_npu_profile(text: str, *, clock_mhz: float = DEFAULT_NPU_CLOCK_MHZ) -> dict[str, Any]:
    """Per-NPU-operation cycles, time at `clock_mhz` and DDR traffic from the driver's output.

    Uses the last section (benchmark_model's steady-state runs): its blocks divided by its
    `count=` give the operations per invoke; each operation's figures are medians over invokes.
    The first invoke (it compiles the graph) is reported apart as `first_invoke_ms`.

    Returns:
        {"available", "source", "clock_mhz", "invokes", "ops_per_invoke", "total_ms", "busy_ms",
        "ddr_read_mb", "ddr_write_mb", "first_invoke_ms", "ops": [row, ...]} or
        {"available": False, "reason"}. A row: index, name, type (None: the driver prints
        neither), cycles_total/idle/busy, time_ms (total cycles at the clock), busy_ms,
        share (of the invoke's total cycles), ddr/total/axi read and write MB.
    """
    if clock_mhz <= 0:
        return {"available": False, "reason": f"npu clock {clock_mhz} MHz must be positive", "source": SOURCE}
    sections = parse_blocks(text)
    if not sections:
        return {"available": False, "source": SOURCE,
                "reason": "no per-operation blocks from the NPU driver (were CNN_PERF, NN_EXT_SHOW_PERF and "
                          "VIV_VX_PROFILE set, and did the graph run on the NPU?)"}
    counts = _section_counts(text)
    blocks = sections[-1]
    invokes = counts[-1] if len(counts) >= len(sections) and counts else 0
    if invokes <= 0 or len(blocks) % invokes:
        return {"available": False, "source": SOURCE,
                "reason": f"{len(blocks)} driver blocks do not split into {invokes or '?'} invokes"}
    per = len(blocks) // invokes
    hz = clock_mhz * 1e6
    ops: list[dict[str, Any]] = []
    for i in range(per):
        samples = blocks[i::per]
        row: dict[str, Any] = {"index": i, "name": None, "type": None}
        for field in COUNTERS.values():
            row[field] = statistics.median(b.get(field, 0.0) for b in samples)
        row["time_ms"] = row["cycles_total"] / hz * 1e3
        row["busy_ms"] = row["cycles_busy"] / hz * 1e3
        ops.append(row)
    total_cycles = sum(r["cycles_total"] for r in ops)
    for r in ops:
        r["share"] = r["cycles_total"] / total_cycles if total_cycles else 0.0
    out: dict[str, Any] = {
        "available": True, "source": SOURCE, "clock_mhz": clock_mhz, "invokes": invokes, "ops_per_invoke": per,
        "total_ms": sum(r["time_ms"] for r in ops), "busy_ms": sum(r["busy_ms"] for r in ops),
        "ddr_read_mb": sum(r["ddr_read_mb"] for r in ops), "ddr_write_mb": sum(r["ddr_write_mb"] for r in ops),
        "first_invoke_ms": None, "ops": ops,
    }
    if len(sections) > 1 and sections[0] and len(sections[0]) % per == 0:
        out["first_invoke_ms"] = sum(b.get("cycles_total", 0.0) for b in sections[0][:per]) / hz * 1e3
    return out


def map_to_tflite(profile: dict[str, Any], tflite_ops: Sequence[str] | None) -> dict[str, Any]:
    """Adds `tflite_index`, `tflite_op` and `mapping` to every NPU row, where the order allows.

    The driver fuses ops (a convolution with its activation and requantization is one NPU
    operation), so only an equal count lets row i stand for the i-th delegated TFLite op; then
    mapping = "by_order". Otherwise mapping = "none" and `mapping_reason` says why.
    """
    if not profile.get("available"):
        return profile
    ops = profile["ops"]
    known = list(tflite_ops or [])
    if known and len(known) == len(ops):
        for i, row in enumerate(ops):
            row.update(tflite_index=i, tflite_op=known[i], mapping=MAPPING_BY_ORDER)
        profile["mapping"] = MAPPING_BY_ORDER
        profile["mapping_reason"] = (f"{len(ops)} NPU operations for {len(known)} delegated TFLite ops: "
                                     "paired in execution order")
    else:
        for row in ops:
            row.update(tflite_index=None, tflite_op=None, mapping=MAPPING_NONE)
        profile["mapping"] = MAPPING_NONE
        profile["mapping_reason"] = (
            f"{len(ops)} NPU operations for {len(known)} delegated TFLite ops: the driver fused or split ops, "
            "so no op-by-op pairing" if known else "the delegated TFLite ops are unknown")
    return profile
