"""benchmark_model's op-profiling output parsed from realistic samples, and the profile run itself."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from board_agent import profile

# sample outputs of benchmark_model (not under data/, which .gitignore keeps out)
SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture()
def npu_text() -> str:
    """benchmark_model on the i.MX8M Plus with the VX delegate (tab layout, [start] column, one CPU fallback)."""
    return (SAMPLES / "benchmark_model_npu.txt").read_text()


@pytest.fixture()
def xnnpack_text() -> str:
    """A newer benchmark_model with XNNPACK (space-aligned layout, no [start] column)."""
    return (SAMPLES / "benchmark_model_xnnpack.txt").read_text()


def test_parse_op_profile_npu_reads_steady_state_run_order(npu_text: str) -> None:
    result = profile.parse_op_profile(npu_text)
    assert result["available"] is True
    # the init section's ModifyGraphWithDelegate/AllocateTensors rows are not ops
    assert [o["node_type"] for o in result["ops"]] == ["Vx Delegate", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    first = result["ops"][0]
    assert first == {
        "node_type": "Vx Delegate", "start_ms": 0.0, "first_ms": 2.301, "avg_ms": 2.247, "percent": 93.357,
        "cdf_percent": 93.357, "mem_kb": 0.0, "times_called": 1,
        "name": "[sequential/conv2d_1/Relu;sequential/conv2d_1/BiasAdd;sequential/conv2d_1/Conv2D]:5",
    }


def test_parse_op_profile_npu_reads_summary_and_timings(npu_text: str) -> None:
    result = profile.parse_op_profile(npu_text)
    assert [(r["node_type"], r["count"], r["avg_ms"]) for r in result["by_type"]] == [
        ("Vx Delegate", 1, 2.247), ("FULLY_CONNECTED", 1, 0.136), ("SOFTMAX", 1, 0.013), ("RESHAPE", 1, 0.010),
    ]
    assert result["timings_us"] == {"count": 412.0, "first": 2466.0, "curr": 2393.0, "min": 2372.0,
                                    "max": 2689.0, "avg": 2407.14, "std": 30.0}
    assert result["inference_us"] == {"init": 14622.0, "first_inference": 4863211.0, "warmup_avg": 4.86321e6,
                                      "inference_avg": 2424.63}
    assert result["memory_mb"] == {"init": 6.4375, "overall": 31.2891}


def test_parse_op_profile_xnnpack_space_layout_keeps_multiword_types(xnnpack_text: str) -> None:
    result = profile.parse_op_profile(xnnpack_text)
    assert [o["node_type"] for o in result["ops"]] == [
        "QUANTIZE", "Convolution (NHWC, QC8) IGEMM", "Fully Connected (NC, QS8, QC8W) GEMM", "DEQUANTIZE"]
    conv = result["ops"][1]
    assert "start_ms" not in conv
    assert (conv["avg_ms"], conv["percent"], conv["name"]) == (0.058, 63.736,
                                                               "Delegate/Convolution (NHWC, QC8) IGEMM:0")
    assert sum(r["count"] for r in result["by_type"]) == 4


def test_parse_op_profile_without_section_is_not_available() -> None:
    result = profile.parse_op_profile("INFO: STARTING!\nERROR: Failed to load model\n")
    assert result["available"] is False and result["ops"] == [] and result["by_type"] == []


def test_find_benchmark_model_absent_is_none(tmp_path: Path) -> None:
    assert profile.find_benchmark_model(str(tmp_path / "tensorflow-lite-*" / "examples" / "benchmark_model")) is None


def test_command_npu_uses_external_delegate() -> None:
    cmd = profile.command("/bm", "/w/m.tflite", "npu", threads=4, runs=50, warmup=5, delegate="/usr/lib/libvx_delegate.so")
    assert cmd == ["/bm", "--graph=/w/m.tflite", "--num_threads=4", "--num_runs=50", "--warmup_runs=5",
                   "--enable_op_profiling=true", "--external_delegate_path=/usr/lib/libvx_delegate.so"]
    assert profile.command("/bm", "m", "cpu-plain", threads=1, runs=1, warmup=0, delegate="")[-1] == "--use_xnnpack=false"


def test_run_profile_parses_the_binary_output(tmp_path: Path, npu_text: str) -> None:
    # a stand-in for NXP's binary at the path layout the agent globs for; it prints the sample
    binary = tmp_path / "tensorflow-lite-2.11.1" / "examples" / "benchmark_model"
    binary.parent.mkdir(parents=True)
    (tmp_path / "out.txt").write_text(npu_text)
    binary.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat {tmp_path}/out.txt\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    pattern = str(tmp_path / "tensorflow-lite-*" / "examples" / "benchmark_model")
    result = profile.run_profile(pattern, "/w/m.tflite", "npu", threads=2, runs=10, warmup=1,
                                 delegate="/usr/lib/libvx_delegate.so", timeout=10, env=dict(os.environ))
    assert result["available"] is True and len(result["ops"]) == 4
    assert "--external_delegate_path=/usr/lib/libvx_delegate.so" in (tmp_path / "args").read_text()


def test_run_profile_failing_binary_reports_reason(tmp_path: Path) -> None:
    binary = tmp_path / "tensorflow-lite-2.9.1" / "examples" / "benchmark_model"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'ERROR: Could not open model'\nexit 1\n")
    binary.chmod(0o755)
    result = profile.run_profile(str(tmp_path / "tensorflow-lite-*/examples/benchmark_model"), "m", "cpu",
                                 threads=1, runs=1, warmup=1, delegate="", timeout=10)
    assert result["available"] is False
    assert result["reason"] == "benchmark_model exited with 1: ERROR: Could not open model"
