"""A real agent on 127.0.0.1 for tests: start it on a free port, talk raw HTTP, build tiny models."""

from __future__ import annotations

import http.client
import importlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from board_agent import protocol
from board_agent.app import Agent
from board_agent.server import AgentServer, make_server
from board_agent.settings import defaults

TOKEN = "test-token-0123456789"


@dataclass
class RunningAgent:
    """An agent serving on a free loopback port."""

    agent: Agent
    server: AgentServer
    host: str
    port: int
    token: str | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        token: str | None | bool = True,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """Raw HTTP (the path is sent exactly as given); token=True sends the agent's token."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if token is True:
            token = self.token
        if isinstance(token, str):
            hdrs["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=body if body or method in ("POST", "PUT") else None, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes = b"", **kwargs: Any) -> tuple[int, dict[str, Any]]:
        status, _, data = self.request(method, path, body, **kwargs)
        return status, json.loads(data) if data else {}

    def submit(self, model: bytes, query: str = "target=cpu") -> str:
        status, data = self.json("POST", f"{protocol.BENCHMARKS}?{query}", model)
        assert status == 202, data
        return str(data["id"])

    def wait(self, job_id: str, *, kind: str = "benchmarks", timeout: float = 60.0,
             until: tuple[str, ...] = protocol.FINISHED) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, rec = self.json("GET", f"/v1/{kind}/{job_id}")
            assert status == 200, rec
            if rec["status"] in until:
                return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {rec['status']} after {timeout} s")
            time.sleep(0.05)


@contextmanager
def running_agent(workdir: Path, token: str | None = TOKEN, **overrides: Any) -> Iterator[RunningAgent]:
    """Starts Agent + ThreadingHTTPServer on 127.0.0.1:<free port>; stops both afterwards."""
    values: dict[str, Any] = {"workdir": str(workdir), "port": 0, "board_name": "testboard",
                              "benchmark_model": str(workdir / "no-benchmark-model")}
    settings = defaults(env={}).replace(**{**values, **overrides})
    agent = Agent(settings, token)
    server = make_server(agent, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield RunningAgent(agent, server, "127.0.0.1", int(server.server_address[1]), token)
    finally:
        server.shutdown()
        server.server_close()
        agent.close()
        thread.join(timeout=10)


def runner_pids(job_id: str) -> list[int]:
    """Pids of runner children working on `job_id` (found in /proc by their spec file)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"board_agent.runner" in cmdline and any(job_id.encode() in part for part in cmdline):
            pids.append(int(entry))
    return pids


def build_tiny_models() -> dict[str, bytes]:
    """An untrained 8x8 CNN as float32 and full-int8 .tflite, plus a model whose WHILE never ends."""
    importlib.import_module("qcore")  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    out: dict[str, bytes] = {}
    out["float32"] = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    conv.representative_dataset = lambda: ([rng.random((1, 8, 8, 1), dtype=np.float32)] for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    out["int8"] = conv.convert()

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def forever(x: Any) -> Any:
        # x only grows (then stays inf), so min(x) > -1 holds forever: the runtime never returns
        _, y = tf.while_loop(lambda i, v: tf.reduce_min(v) > -1.0, lambda i, v: (i + 1.0, v + 1.0),
                             [tf.constant(0.0), x])
        return y

    out["hang"] = tf.lite.TFLiteConverter.from_concrete_functions(
        [forever.get_concrete_function()], forever).convert()
    return out


@dataclass
class AgentProcess:
    """`python -m board_agent` in its own process on a free loopback port: killing it is a board going away."""

    proc: Any
    url: str
    token: str
    name: str

    def kill(self) -> None:
        """SIGKILL, as when a board loses power: open connections reset, no goodbye."""
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def cpu_seconds(self) -> float:
        """User + system CPU of the agent and its reaped runner children, from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def agent_process(workdir: Path, name: str, token: str = TOKEN, timeout: float = 120.0,
                  **settings: Any) -> Iterator[AgentProcess]:
    """Starts a real agent process (its own session, so kill() takes its runner children too)."""
    import subprocess
    import sys

    workdir.mkdir(parents=True, exist_ok=True)
    args = ["--port", "0", "--workdir", str(workdir), "--board-name", name,
            "--benchmark-model", str(workdir / "no-benchmark-model"), "--log-level", "WARNING"]
    for key, value in settings.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    env = dict(os.environ, QLAB_AGENT_TOKEN=token, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "board_agent", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    running = AgentProcess(proc, "", token, name)
    try:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while "listening on " not in line:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent {name} did not start (exit {proc.poll()})")
            line = proc.stdout.readline()
        running.url = line.split("listening on ", 1)[1].strip()
        yield running
    finally:
        running.kill()
