"""Attacks on the board agent over real sockets: oversized bodies, trickled headers, idle floods, orphaned children."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from board_agent import protocol
from tests.board_agent.harness import running_agent
from tests.security.conftest import AgentProcess, start_agent_process

MB = 1024 * 1024


def _send_body(host: str, port: int, head: bytes, total: int) -> tuple[int, bytes]:
    """Sends `head` then up to `total` body bytes until the server hangs up; (bytes sent, reply)."""
    sock = socket.create_connection((host, port), timeout=10)
    sent = 0
    chunk = b"\0" * MB
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the agent closed the connection: that is the refusal
    reply = b""
    try:
        sock.settimeout(2)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    except OSError:
        pass
    sock.close()
    return sent, reply


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("method,path", [("GET", protocol.HEALTH), ("POST", protocol.BENCHMARKS)])
def test_agent_huge_body_refused_unread(agent_process: AgentProcess, method: str, path: str) -> None:
    """A 300 MB body (GET without auth, or POST over the limit) is refused without being read into memory."""
    total = 300 * MB
    head = (f"{method} {path}?target=cpu HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n").encode()
    sent, reply = _send_body(agent_process.host, agent_process.port, head, total)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    peak = agent_process.rss_peak_mb()
    print(f"agent peak RSS after a refused {total // MB} MB {method} body: {peak:.1f} MB (client got {sent // MB} MB out)")
    assert peak < 100
    # and it still serves
    conn = http.client.HTTPConnection(agent_process.host, agent_process.port, timeout=10)
    conn.request("GET", protocol.HEALTH)
    assert conn.getresponse().status == 200
    conn.close()


def test_agent_small_body_on_get_refused(tmp_path: Path) -> None:
    """Even a small body on a GET is refused (413) and the connection closed, never read."""
    with running_agent(tmp_path / "w") as agent:
        status, headers, body = agent.request("GET", protocol.HEALTH, b"x" * 100, token=False,
                                              headers={"Content-Length": "100"})
    assert status == 413
    assert "takes no body" in json.loads(body)["error"]
    assert headers.get("connection") == "close"


def test_agent_trickled_headers_dropped(tmp_path: Path) -> None:
    """A client sending one header line at a time, each well inside the socket timeout, loses the
    connection at the request deadline (here 1.5 s instead of the default 60 s)."""
    with running_agent(tmp_path / "w", request_timeout=1.5) as agent:
        sock = socket.create_connection((agent.host, agent.port), timeout=10)
        sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
        start = time.monotonic()
        dropped_after = None
        for i in range(20):
            time.sleep(0.4)
            try:
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
            except OSError:
                dropped_after = time.monotonic() - start
                break
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    dropped_after = time.monotonic() - start
                    break
            except BlockingIOError:
                pass
            except OSError:
                dropped_after = time.monotonic() - start
                break
            finally:
                sock.setblocking(True)
        sock.close()
    assert dropped_after is not None, "the trickling client was never dropped"
    assert dropped_after < 4.0


def test_agent_idle_keepalive_closed(tmp_path: Path) -> None:
    """A keep-alive connection that sends nothing after its request is closed at idle_timeout."""
    with running_agent(tmp_path / "w", idle_timeout=0.5) as agent:
        conn = http.client.HTTPConnection(agent.host, agent.port, timeout=10)
        conn.request("GET", protocol.HEALTH)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        sock = conn.sock
        start = time.monotonic()
        assert sock.recv(1) == b""  # blocks until the agent hangs up
        assert time.monotonic() - start < 3.0
        conn.close()
        time.sleep(0.2)
        assert agent.server.open_connections() == 0


def test_agent_seventy_idle_connections_do_not_starve(tmp_path: Path) -> None:
    """70 connections that never send a byte leave the agent serving real requests at once."""
    with running_agent(tmp_path / "w") as agent:
        idle = [socket.create_connection((agent.host, agent.port), timeout=10) for _ in range(70)]
        try:
            time.sleep(0.3)
            start = time.monotonic()
            status, _, _ = agent.request("GET", protocol.HEALTH, token=False, timeout=5)
            assert status == 200
            assert time.monotonic() - start < 2.0
            # held: at most max_pending_per_address waiting for a request head (a connection just handed back to the
            # gate counts until the gate's thread takes it and closes the oldest), plus the requests being served
            settings = agent.agent.settings
            deadline = time.monotonic() + 2.0
            while agent.server.gate.held() > settings.max_pending_per_address and time.monotonic() < deadline:
                time.sleep(0.05)
            assert agent.server.gate.held() <= settings.max_pending_per_address
            assert agent.server.open_connections() <= settings.max_pending_per_address + settings.max_connections
        finally:
            for s in idle:
                s.close()


@pytest.mark.slow
def test_agent_forty_reconnecting_slow_header_clients_leave_real_requests_answered(tmp_path: Path) -> None:
    """40 clients trickling their headers (a line every 0.5 s) and reconnecting the moment they are dropped,
    from the same address as the real client: at least 95% of real requests are still answered. Slow
    connections wait in the gate without a thread; past 32 from one address the oldest is closed."""
    with start_agent_process(tmp_path / "work") as agent:
        stop = threading.Event()

        def slow_client() -> None:
            while not stop.is_set():
                try:
                    sock = socket.create_connection((agent.host, agent.port), timeout=5)
                except OSError:
                    time.sleep(0.05)
                    continue
                try:
                    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: board\r\n")
                    for i in range(10_000):
                        if stop.is_set():
                            break
                        sock.sendall(f"X-Slow-{i}: y\r\n".encode())
                        ready, _, _ = select.select([sock], [], [], 0.5)
                        if ready and not sock.recv(1):
                            break  # dropped: reconnect at once
                except OSError:
                    pass
                finally:
                    sock.close()

        attackers = [threading.Thread(target=slow_client, daemon=True) for _ in range(40)]
        for t in attackers:
            t.start()
        time.sleep(2.0)  # every slow client has connected (and the first ones were dropped) by now
        answered, total = 0, 40
        try:
            for _ in range(total):
                conn = http.client.HTTPConnection(agent.host, agent.port, timeout=5)
                try:
                    conn.request("GET", protocol.HEALTH)
                    resp = conn.getresponse()
                    resp.read()
                    answered += resp.status == 200
                except (OSError, http.client.HTTPException):
                    pass
                finally:
                    conn.close()
                time.sleep(0.1)
        finally:
            stop.set()
            for t in attackers:
                t.join(timeout=5)
    assert answered >= 0.95 * total, f"only {answered} of {total} real requests were answered"


def _fake_benchmark_model(folder: Path) -> tuple[Path, Path]:
    """An executable named like NXP's benchmark_model that records its pid and hangs."""
    pidfile = folder / "profiler.pid"
    binary = folder / "benchmark_model"
    binary.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary, pidfile


def _wait_file(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.slow
def test_agent_profile_child_within_job_timeout(tmp_path: Path, agent_models: dict[str, bytes]) -> None:
    """A hanging benchmark_model gets only what is left of the job's one timeout, and is killed with its group."""
    binary, pidfile = _fake_benchmark_model(tmp_path)
    timeout = 6.0
    with running_agent(tmp_path / "w", job_timeout=timeout, benchmark_model=str(binary)) as agent:
        job = agent.submit(agent_models["float32"], "target=cpu&runs=5&warmup=1&profile=1")
        rec = agent.wait(job, timeout=60)
        pid = _wait_file(pidfile, 1)
    assert rec["status"] == protocol.DONE, rec
    assert "timed out" in rec["result"]["profile"]["reason"]
    assert rec["finished_at"] - rec["started_at"] < timeout + 1.5
    assert _wait_dead(pid, 2)


@pytest.mark.slow
def test_agent_profile_child_dies_with_agent(tmp_path: Path, agent_models: dict[str, bytes]) -> None:
    """SIGKILL of the agent process also kills its running benchmark_model child."""
    binary, pidfile = _fake_benchmark_model(tmp_path)
    with start_agent_process(tmp_path / "w", "--benchmark-model", str(binary)) as running:
        conn = http.client.HTTPConnection(running.host, running.port, timeout=10)
        conn.request("POST", f"{protocol.BENCHMARKS}?target=cpu&runs=5&warmup=1&profile=1",
                     body=agent_models["float32"])
        assert conn.getresponse().status == 202
        conn.close()
        pid = _wait_file(pidfile, 60)
        assert _alive(pid)
        os.kill(running.proc.pid, signal.SIGKILL)
        running.proc.wait()
        assert _wait_dead(pid, 5), "benchmark_model outlived the killed agent"


@pytest.mark.slow
def test_agent_profile_child_killed_on_close(tmp_path: Path, agent_models: dict[str, bytes]) -> None:
    """Stopping the agent (Agent.close) kills a running profiler too."""
    binary, pidfile = _fake_benchmark_model(tmp_path)
    with running_agent(tmp_path / "w", benchmark_model=str(binary)) as agent:
        agent.submit(agent_models["float32"], "target=cpu&runs=5&warmup=1&profile=1")
        pid = _wait_file(pidfile, 60)
        agent.agent.close()
        assert _wait_dead(pid, 5)


def _bomb_npz(tmp_path: Path) -> bytes:
    """A ~100 KB .npz whose one array takes 100 MB once loaded (zeros compress ~1000:1)."""
    import numpy as np

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((400_000, 8, 8, 1), np.float32))
    return path.read_bytes()


def test_agent_npz_bomb_refused_from_headers(tmp_path: Path, agent_models: dict[str, bytes]) -> None:
    """Inference inputs whose headers declare more than max_inputs_mb are refused before any np.load."""
    bomb = _bomb_npz(tmp_path)
    assert len(bomb) < 1 * MB
    with running_agent(tmp_path / "w", max_inputs_mb=8) as agent:
        status, data = agent.json("POST", f"{protocol.INFERENCES}?target=cpu",
                                  protocol.pack_inference(agent_models["float32"], bomb))
    assert status == 400
    assert "once loaded" in data["error"]


def test_runner_npz_size_checked_before_load(tmp_path: Path) -> None:
    """The runner child re-reads the headers with numpy's format reader before np.load."""
    from board_agent.runner import RunnerError, check_npz_size

    path = tmp_path / "inputs.npz"
    path.write_bytes(_bomb_npz(tmp_path))
    with pytest.raises(RunnerError, match="once loaded"):
        check_npz_size(str(path), 8 * MB)
    check_npz_size(str(path), 200 * MB)  # under the cap it passes
