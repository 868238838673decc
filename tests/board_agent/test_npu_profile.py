"""The VeriSilicon driver's per-operation profile, parsed from real i.MX 8M Plus EVK captures (samples/SOURCES-imx8mp-captures.md)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from board_agent import npu_profile, profile

SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture(scope="module")
def yolo_text() -> str:
    """benchmark_model of YOLOv3-tiny on the EVK's NPU with the driver profiler on (75 NPU ops x 51 invokes)."""
    return (SAMPLES / "04-imx8mp-vx-yolov3tiny-vivprofile.txt").read_text()


@pytest.fixture(scope="module")
def mobilenet_text() -> str:
    """benchmark_model of MobileNetV1 int8 on the EVK's NPU without the driver profiler."""
    return (SAMPLES / "01-imx8mp-vx-mobilenet-npu.txt").read_text()


def test_parse_blocks_splits_warmup_and_steady_state(yolo_text: str) -> None:
    sections = npu_profile.parse_blocks(yolo_text)
    assert [len(s) for s in sections] == [75, 3750]
    assert sections[0][0] == {"total_read_mb": 0.587583, "total_write_mb": 0.508909, "axi_read_mb": 0.0,
                              "axi_write_mb": 0.0, "ddr_read_mb": 0.587583, "ddr_write_mb": 0.508909,
                              "cycles_total": 679774.0, "cycles_idle": 136423.0, "cycles_busy": 543351.0}
    assert all(b["cycles_busy"] == b["cycles_total"] - b["cycles_idle"] for s in sections for b in s)


def test_parse_npu_profile_per_operation_rows(yolo_text: str) -> None:
    result = npu_profile.parse_npu_profile(yolo_text)
    assert result["available"] is True
    assert (result["invokes"], result["ops_per_invoke"], result["clock_mhz"]) == (50, 75, 1000.0)
    ops = result["ops"]
    assert [o["index"] for o in ops] == list(range(75))
    for o in ops:
        # medians are taken per counter, so busy = total - idle holds per block (below), not per row
        assert 0 < o["cycles_busy"] <= o["cycles_total"]
        assert o["time_ms"] == pytest.approx(o["cycles_total"] / 1e6)
        assert o["name"] is None and o["type"] is None
    # the third operation (a 3x3 convolution stage) dominates DDR traffic early in the graph
    assert ops[2]["ddr_read_mb"] > 5.0 and ops[2]["cycles_total"] > 2.5e6
    assert sum(o["share"] for o in ops) == pytest.approx(1.0)


def test_parse_npu_profile_total_matches_measured_time_at_1ghz(yolo_text: str) -> None:
    result = npu_profile.parse_npu_profile(yolo_text)
    measured_ms = profile.parse_op_profile(yolo_text)["inference_us"]["inference_avg"] / 1e3
    assert measured_ms == pytest.approx(38.9099)
    # the cycle sum at the default clock lands within 10 % of benchmark_model's own average
    assert result["total_ms"] == pytest.approx(measured_ms, rel=0.10)
    # the 800 MHz nominal clock would not: the EVK runs in overdrive
    nominal = npu_profile.parse_npu_profile(yolo_text, clock_mhz=800.0)
    assert nominal["total_ms"] > measured_ms * 1.15
    assert result["first_invoke_ms"] is not None and result["first_invoke_ms"] > 0


def test_parse_npu_profile_without_driver_blocks_says_why(mobilenet_text: str) -> None:
    result = npu_profile.parse_npu_profile(mobilenet_text)
    assert result["available"] is False
    assert "CNN_PERF, NN_EXT_SHOW_PERF and VIV_VX_PROFILE" in result["reason"]


def test_parse_npu_profile_bad_clock_is_refused(yolo_text: str) -> None:
    assert npu_profile.parse_npu_profile(yolo_text, clock_mhz=0)["reason"] == "npu clock 0 MHz must be positive"


def test_map_to_tflite_pairs_only_equal_counts(yolo_text: str) -> None:
    fused = npu_profile.map_to_tflite(npu_profile.parse_npu_profile(yolo_text), ["CONV_2D"] * 24)
    assert fused["mapping"] == "none" and "75 NPU operations for 24 delegated TFLite ops" in fused["mapping_reason"]
    assert {o["mapping"] for o in fused["ops"]} == {"none"} and fused["ops"][0]["tflite_op"] is None
    names = [f"OP_{i}" for i in range(75)]
    paired = npu_profile.map_to_tflite(npu_profile.parse_npu_profile(yolo_text), names)
    assert paired["mapping"] == "by_order"
    assert (paired["ops"][7]["tflite_index"], paired["ops"][7]["tflite_op"]) == (7, "OP_7")


def test_parse_op_profile_reads_older_peak_memory_line(mobilenet_text: str) -> None:
    result = profile.parse_op_profile(mobilenet_text)
    assert result["peak_memory_mb"] == {"init": 7.26953, "overall": 34.3164}
    assert [o["node_type"] for o in result["ops"]] == ["Vx Delegate"]
    assert result["ops"][0]["avg_ms"] == 2.504


def test_run_profile_npu_switches_the_driver_profiler_on(tmp_path: Path, yolo_text: str) -> None:
    # a stand-in for NXP's binary that records its environment and prints the real EVK capture
    binary = tmp_path / "tensorflow-lite-2.9.1" / "examples" / "benchmark_model"
    binary.parent.mkdir(parents=True)
    (tmp_path / "out.txt").write_text(yolo_text)
    binary.write_text(f"#!/bin/sh\nenv > {tmp_path}/env\ncat {tmp_path}/out.txt\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    pattern = str(tmp_path / "tensorflow-lite-*" / "examples" / "benchmark_model")
    result = profile.run_profile(pattern, "/w/m.tflite", "npu", threads=1, runs=50, warmup=1,
                                 delegate="/usr/lib/libvx_delegate.so", timeout=30, env=dict(os.environ),
                                 npu_clock_mhz=800.0, tflite_ops=["CONV_2D"] * 75)
    env = (tmp_path / "env").read_text().splitlines()
    assert {"CNN_PERF=1", "NN_EXT_SHOW_PERF=1", "VIV_VX_PROFILE=1"} <= set(env)
    assert result["available"] is True and result["ops"][0]["node_type"] == "Vx Delegate"
    assert result["npu"]["clock_mhz"] == 800.0 and result["npu"]["mapping"] == "by_order"
    # the CPU targets leave the driver's profiler off
    profile.run_profile(pattern, "/w/m.tflite", "cpu", threads=1, runs=1, warmup=1, delegate="", timeout=30,
                        env={"PATH": os.environ.get("PATH", "")})
    assert "VIV_VX_PROFILE=1" not in (tmp_path / "env").read_text()


# ---------------------------------------------------------------------- the NPU path, up to the missing library
def test_runner_npu_target_calls_load_delegate_on_the_vx_path(tmp_path: Path,
                                                              tiny_models: dict[str, bytes]) -> None:
    from board_agent import runner

    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_models["int8"])
    fake = tmp_path / "libvx_delegate.so"
    fake.write_bytes(b"not an ELF shared object")
    spec = {"mode": "benchmark", "model": str(model), "target": "npu", "threads": 1, "runs": 1, "warmup": 0,
            "delegate": str(fake), "result": str(tmp_path / "result.json")}
    # in a child, as the agent runs it (the runner asks the kernel to kill it with its parent)
    proc = subprocess.run([sys.executable, "-m", "board_agent.runner", _write_spec(tmp_path, spec)],
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-500:]
    error = _read_result(tmp_path)["error"]
    assert error.startswith(f"cannot load the VX delegate {fake}: ")
    probed = runner.probe({"delegate": str(fake)})["targets"]["npu"]
    assert probed["available"] is False and probed["reason"].startswith(f"VX delegate {fake} does not load: ")
    missing = runner.probe({"delegate": str(tmp_path / "absent.so")})["targets"]["npu"]
    assert missing["reason"] == f"VX delegate {tmp_path / 'absent.so'} not found (no i.MX NPU stack on this host)"


def _write_spec(tmp_path: Path, spec: dict[str, object]) -> str:
    import json

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _read_result(tmp_path: Path) -> dict[str, object]:
    import json

    data: dict[str, object] = json.loads((tmp_path / "result.json").read_text())
    return data
