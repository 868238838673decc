"""The real agent over real HTTP on 127.0.0.1: results, every bad input, crashes, hangs, load."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from board_agent import protocol
from tests.board_agent.harness import RunningAgent, runner_pids, running_agent


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------- happy paths
def test_health_reports_targets_without_auth(agent: RunningAgent) -> None:
    status, data = agent.json("GET", protocol.HEALTH, token=None)
    assert status == 200
    assert data["status"] == "ok" and data["board"] == "testboard"
    assert data["runtime"]["name"] == "ai_edge_litert"
    assert data["targets"]["cpu"]["available"] and data["targets"]["cpu-plain"]["available"]
    assert data["targets"]["npu"] == {
        "available": False,
        "reason": "VX delegate /usr/lib/libvx_delegate.so not found (no i.MX NPU stack on this host)",
    }
    assert data["queue_depth"] == 0 and data["running"] is False


@pytest.mark.parametrize("target", ["cpu", "cpu-plain"])
def test_post_benchmark_returns_every_result_field(agent: RunningAgent, tiny_models: dict[str, bytes],
                                                   target: str) -> None:
    job_id = agent.submit(tiny_models["int8"], f"target={target}&runs=30&warmup=2&threads=2")
    rec = agent.wait(job_id)
    assert rec["status"] == "done", rec["error"]
    result = rec["result"]
    assert set(protocol.RESULT_FIELDS) - {"cache"} <= set(result)
    assert (result["target"], result["runs"], result["warmup"], result["threads"]) == (target, 30, 2, 2)
    assert result["xnnpack"] is (target == "cpu")
    assert 0 < result["min_ms"] <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["init_ms"] > 0 and result["first_ms"] > 0 and result["std_ms"] >= 0
    assert 10 < result["peak_rss_mb"] < 2000
    assert result["runtime"] == {"name": "ai_edge_litert", "version": result["runtime"]["version"]}
    ops = result["ops"]
    assert ops["known"] is True
    if target == "cpu":
        assert ops["delegated"] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"] and ops["cpu"] == []
    else:
        assert ops["delegated"] == [] and ops["cpu"] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert result["profile"] == {"available": False, "reason": "not requested (profile=1)"}
    assert rec["sha256"] and rec["size_bytes"] == len(tiny_models["int8"])
    # the upload is removed when the job ends
    assert os.listdir(agent.agent.workdir + "/uploads") == []


def test_post_benchmark_profile_without_binary_says_not_available(agent: RunningAgent,
                                                                  tiny_models: dict[str, bytes]) -> None:
    rec = agent.wait(agent.submit(tiny_models["float32"], "target=cpu&runs=5&profile=1"))
    assert rec["status"] == "done"
    assert rec["result"]["profile"]["available"] is False
    assert "benchmark_model not found" in rec["result"]["profile"]["reason"]


def test_post_inference_returns_dequantized_outputs(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    from qcore.tflite.litert_io import run_model

    x = np.random.default_rng(1).random((12, 8, 8, 1), dtype=np.float32)
    body = protocol.pack_inference(tiny_models["int8"], _npz(x=x))
    status, data = agent.json("POST", f"{protocol.INFERENCES}?target=cpu", body)
    assert status == 202, data
    rec = agent.wait(data["id"], kind="inferences")
    assert rec["status"] == "done", rec["error"]
    assert rec["result"]["n_samples"] == 12
    assert rec["result"]["io"]["inputs"][0]["quantized_from_float"] is True
    status, headers, raw = agent.request("GET", f"{protocol.INFERENCES}/{data['id']}/outputs")
    assert status == 200 and headers["content-type"] == protocol.NPZ_CONTENT_TYPE
    with np.load(io.BytesIO(raw)) as z:
        board = z["output_0"]
    host, _ = run_model(tiny_models["int8"], x)
    assert board.dtype == np.float32 and board.shape == (12, 10)
    np.testing.assert_allclose(board, host, atol=1e-6)


# ---------------------------------------------------------------------- one test per bad input
def test_post_benchmark_without_token_is_401(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    status, headers, _ = agent.request("POST", f"{protocol.BENCHMARKS}?target=cpu", tiny_models["int8"], token=None)
    assert status == 401 and headers["www-authenticate"] == "Bearer"


def test_post_benchmark_with_wrong_token_is_401(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    status, data = agent.json("POST", f"{protocol.BENCHMARKS}?target=cpu", tiny_models["int8"],
                              token=agent.token + "x")
    assert status == 401 and data["error"] == "missing or wrong bearer token"


def test_get_job_with_wrong_token_is_401(agent: RunningAgent) -> None:
    status, _ = agent.json("GET", f"{protocol.BENCHMARKS}/0123456789abcdef", token="nope")
    assert status == 401


def test_post_benchmark_garbage_body_is_400(agent: RunningAgent) -> None:
    status, data = agent.json("POST", f"{protocol.BENCHMARKS}?target=cpu", b"this is not a model at all")
    assert status == 400 and "no 'TFL3' identifier" in data["error"]


def test_post_benchmark_empty_body_is_400(agent: RunningAgent) -> None:
    status, data = agent.json("POST", f"{protocol.BENCHMARKS}?target=cpu", b"", headers={"Content-Length": "0"})
    assert status == 400 and "empty body" in data["error"]


def test_post_benchmark_truncated_model_is_400(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    model = tiny_models["int8"]
    status, data = agent.json("POST", f"{protocol.BENCHMARKS}?target=cpu", model[: len(model) * 2 // 3])
    assert status == 400
    assert "outside the" in data["error"] or "past the end" in data["error"]


def test_post_benchmark_oversize_body_is_413(tmp_path: Path) -> None:
    with running_agent(tmp_path / "work", max_model_mb=1) as small:
        # the agent answers from Content-Length alone and never reads (or drains) the body
        conn = http.client.HTTPConnection(small.host, small.port, timeout=10)
        conn.putrequest("POST", f"{protocol.BENCHMARKS}?target=cpu")
        conn.putheader("Content-Length", str(1024 * 1024 + 10))
        conn.putheader("Authorization", f"Bearer {small.token}")
        conn.endheaders()
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
        assert resp.status == 413 and "over this agent's limit of 1048576 bytes" in data["error"]
        # the agent goes on and nothing was written
        assert small.json("GET", protocol.HEALTH)[0] == 200
        assert os.listdir(small.agent.workdir + "/uploads") == []


def test_post_benchmark_unknown_target_is_422(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    status, data = agent.json("POST", f"{protocol.BENCHMARKS}?target=gpu", tiny_models["int8"])
    assert status == 422 and data["error"] == "unknown target 'gpu'; known: npu, cpu, cpu-plain"


def test_post_benchmark_npu_on_host_without_delegate_is_422(agent: RunningAgent,
                                                            tiny_models: dict[str, bytes]) -> None:
    status, data = agent.json("POST", f"{protocol.BENCHMARKS}?target=npu", tiny_models["int8"])
    assert status == 422
    assert data["error"] == ("target npu is unavailable on testboard: VX delegate /usr/lib/libvx_delegate.so "
                             "not found (no i.MX NPU stack on this host)")


@pytest.mark.parametrize(("query", "message"), [
    ("target=cpu&runs=0", "runs=0 is outside [1, 100000]"),
    ("target=cpu&threads=many", "threads='many' is not an integer"),
    ("target=cpu&batch=8", "unknown parameter(s) batch"),
    ("target=cpu&target=cpu-plain", "given more than once: target"),
    ("runs=5", "target is required"),
])
def test_post_benchmark_bad_parameters_are_422(agent: RunningAgent, tiny_models: dict[str, bytes], query: str,
                                               message: str) -> None:
    status, data = agent.json("POST", f"{protocol.BENCHMARKS}?{query}", tiny_models["int8"])
    assert status == 422 and message in data["error"]


def test_post_benchmark_full_queue_is_429(tmp_path: Path, tiny_models: dict[str, bytes]) -> None:
    with running_agent(tmp_path / "work", queue=1) as busy:
        first = busy.submit(tiny_models["hang"])
        busy.wait(first, until=("running",))
        second = busy.submit(tiny_models["int8"])
        status, headers, body = busy.request("POST", f"{protocol.BENCHMARKS}?target=cpu", tiny_models["int8"])
        assert status == 429 and headers["retry-after"] == "5"
        assert "queue=1" in json.loads(body)["error"]
        assert busy.json("GET", protocol.HEALTH)[1]["queue_depth"] == 1
        assert busy.json("GET", f"{protocol.BENCHMARKS}/{second}")[1]["status"] == "queued"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", protocol.BENCHMARKS, "POST"),
    ("GET", protocol.BENCHMARKS, "POST"),
    ("POST", protocol.HEALTH, "GET"),
    ("PUT", f"{protocol.BENCHMARKS}/0123456789abcdef", "GET"),
])
def test_wrong_method_is_405_with_allow(agent: RunningAgent, method: str, path: str, allow: str) -> None:
    status, headers, _ = agent.request(method, path, b"x" if method in ("POST", "PUT") else b"")
    assert status == 405 and headers["allow"] == allow


@pytest.mark.parametrize("job_path", [
    "/v1/benchmarks/../../etc/passwd",
    "/v1/benchmarks/..%2f..%2fjobs.json",
    "/v1/benchmarks/%2e%2e",
    "/v1/benchmarks/0123456789abcdef",
    "/v1/inferences/..%2Fjobs/outputs",
])
def test_get_job_with_path_like_id_is_404(agent: RunningAgent, job_path: str) -> None:
    status, data = agent.json("GET", job_path)
    assert status == 404 and "error" in data


def test_post_benchmark_path_like_label_stays_a_label(agent: RunningAgent, tiny_models: dict[str, bytes],
                                                      tmp_path: Path) -> None:
    label = "../../../../tmp/evil.tflite"
    before = set(_files_under(tmp_path))
    job_id = agent.submit(tiny_models["int8"], f"target=cpu&runs=3&label={label}")
    rec = agent.wait(job_id)
    assert rec["status"] == "done" and rec["label"] == label
    created = set(_files_under(tmp_path)) - before
    workdir = Path(agent.agent.workdir)
    assert all(p.resolve().is_relative_to(workdir) for p in created)
    assert not Path("/tmp/evil.tflite").exists()


def test_unknown_endpoint_is_404(agent: RunningAgent) -> None:
    status, data = agent.json("GET", "/v2/health")
    assert status == 404 and data["error"].startswith("no endpoint /v2/health")


def test_post_inference_bad_frame_is_400(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    status, data = agent.json("POST", f"{protocol.INFERENCES}?target=cpu", tiny_models["int8"])
    assert status == 400 and "does not start with b'QLI1'" in data["error"]


def test_post_inference_wrong_input_shape_is_422(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    body = protocol.pack_inference(tiny_models["int8"], _npz(x=np.zeros((3, 28, 28), np.float32)))
    status, data = agent.json("POST", f"{protocol.INFERENCES}?target=cpu", body)
    assert status == 422 and "shape (28, 28) but input" in data["error"]


def test_post_inference_pickled_inputs_are_400(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    body = protocol.pack_inference(tiny_models["int8"], _npz(x=np.array([{"a": 1}], dtype=object)))
    status, data = agent.json("POST", f"{protocol.INFERENCES}?target=cpu", body)
    assert status == 400 and "has dtype '|O'" in data["error"]


def test_get_outputs_of_a_benchmark_job_is_404(agent: RunningAgent, tiny_models: dict[str, bytes]) -> None:
    job_id = agent.submit(tiny_models["int8"], "target=cpu&runs=2")
    agent.wait(job_id)
    assert agent.json("GET", f"{protocol.INFERENCES}/{job_id}/outputs")[0] == 404


# ---------------------------------------------------------------------- isolation
def test_benchmark_whose_runtime_crashes_fails_and_agent_stays_healthy(tmp_path: Path,
                                                                       tiny_models: dict[str, bytes]) -> None:
    with running_agent(tmp_path / "work") as running:
        job_id = running.submit(tiny_models["hang"])
        running.wait(job_id, until=("running",))
        deadline = time.monotonic() + 10
        while not (pids := runner_pids(job_id)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(pids) == 1
        # what a segfault inside the runtime looks like to the agent
        os.kill(pids[0], signal.SIGSEGV)
        rec = running.wait(job_id)
        assert rec["status"] == "failed"
        assert rec["error"].startswith("the runtime crashed (SIGSEGV) on this model; the agent is unaffected")
        assert running.json("GET", protocol.HEALTH)[1]["status"] == "ok"
        assert running.wait(running.submit(tiny_models["int8"], "target=cpu&runs=3"))["status"] == "done"


def test_benchmark_that_hangs_times_out_and_agent_stays_healthy(tmp_path: Path,
                                                                tiny_models: dict[str, bytes]) -> None:
    with running_agent(tmp_path / "work", job_timeout=1.5) as running:
        job_id = running.submit(tiny_models["hang"])
        rec = running.wait(job_id, timeout=30)
        assert rec["status"] == "failed"
        assert rec["error"].startswith("timed out after 1.5 s: the model hung the runtime")
        assert runner_pids(job_id) == []
        status, health = running.json("GET", protocol.HEALTH)
        assert status == 200 and health["running"] is False
        assert running.wait(running.submit(tiny_models["int8"], "target=cpu&runs=3"))["status"] == "done"


def test_health_and_status_under_load_while_benchmark_runs(agent: RunningAgent,
                                                           tiny_models: dict[str, bytes]) -> None:
    job_id = agent.submit(tiny_models["hang"])
    agent.wait(job_id, until=("running",))
    paths = [protocol.HEALTH if i % 2 else f"{protocol.BENCHMARKS}/{job_id}" for i in range(500)]
    seen_running = threading.Event()

    def one(path: str) -> int:
        status, data = agent.json("GET", path, timeout=10)
        if data.get("status") == "running":
            seen_running.set()
        return status

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(one, paths))
    elapsed = time.monotonic() - start
    assert len(statuses) == 500 and statuses.count(200) == 500
    assert seen_running.is_set()
    assert elapsed < 20, f"500 requests took {elapsed:.1f} s"
    # the benchmark was never disturbed: still running, still one child
    assert agent.json("GET", f"{protocol.BENCHMARKS}/{job_id}")[1]["status"] == "running"
    assert len(runner_pids(job_id)) == 1
