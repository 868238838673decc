"""The agent as a function: (method, path, query, headers, body) -> (status, headers, body), no sockets.

It validates uploads, keeps the job records, and runs one job at a time on a worker thread,
each in a child process (`python -m board_agent.runner`) with a timeout.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any
from urllib.parse import parse_qs

from board_agent import __version__, protocol
from board_agent.jobs import JobStore
from board_agent.profile import find_benchmark_model, kill_group, run_profile
from board_agent.settings import Settings
from board_agent.system import describe as describe_system
from board_agent.uploads import UploadError, check_tflite, match_inputs, npz_arrays

log = logging.getLogger(__name__)

Response = tuple[int, dict[str, str], bytes]
MB = 1024 * 1024
# the probe imports the runtime and may dlopen the VX delegate; a healthy board needs a few seconds
PROBE_TIMEOUT_S = 60.0
# enough of a crashed child's stderr to name the cause, little enough for a JSON record
STDERR_TAIL = 1500
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    methods: dict[str, Callable[..., Response]]
    auth: bool = True


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, indent=None, separators=(",", ":")).encode()
    out = {"Content-Type": "application/json"}
    out.update(headers or {})
    return status, out, body


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


class Agent:
    """The board agent's state: settings, token, job records, the queue and its worker.

    Args:
        settings: resolved settings (see `board_agent.settings`).
        token: the bearer token, or None when serving with --insecure-no-token.
    """

    def __init__(self, settings: Settings, token: str | None) -> None:
        self.settings = settings
        self._token = token.encode() if token else None
        self.workdir = os.path.realpath(settings.workdir)
        for sub in ("uploads", "outputs", "cache"):
            os.makedirs(os.path.join(self.workdir, sub), mode=0o700, exist_ok=True)
        # uploads of jobs that never finished (the agent stopped): their records fail below
        for name in os.listdir(os.path.join(self.workdir, "uploads")):
            self._remove(os.path.join(self.workdir, "uploads", name))
        self.jobs = JobStore(os.path.join(self.workdir, "jobs.json"), keep=settings.keep_jobs,
                             on_drop=self._drop_outputs)
        self.board = settings.board_name or socket.gethostname()
        self.profile_binary = find_benchmark_model(settings.benchmark_model)
        self.system = describe_system()
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=settings.queue)
        self._submit_lock = threading.Lock()
        self._running: str | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self.probe = self._probe()
        self._worker = threading.Thread(target=self._work, name="qlab-agent-worker", daemon=True)
        self._worker.start()
        job = r"/(?P<job_id>[^/]+)"
        self.routes = [
            Route(re.compile("^" + re.escape(protocol.HEALTH) + "$"), {"GET": self._health}, auth=False),
            Route(re.compile("^" + re.escape(protocol.BENCHMARKS) + "$"), {"POST": self._post_benchmark}),
            Route(re.compile("^" + re.escape(protocol.BENCHMARKS) + job + "$"), {"GET": self._get_benchmark}),
            Route(re.compile("^" + re.escape(protocol.INFERENCES) + "$"), {"POST": self._post_inference}),
            Route(re.compile("^" + re.escape(protocol.INFERENCES) + job + "$"), {"GET": self._get_inference}),
            Route(re.compile("^" + re.escape(protocol.INFERENCES) + job + re.escape(protocol.OUTPUTS_SUFFIX) + "$"),
                  {"GET": self._get_outputs}),
        ]

    # ------------------------------------------------------------------ request entry points
    def body_limit(self, path: str) -> int:
        """Largest body accepted on `path`, in bytes."""
        model = self.settings.max_model_mb * MB
        if path == protocol.INFERENCES:
            return model + self.settings.max_inputs_mb * MB + 12
        return model if path == protocol.BENCHMARKS else 0

    def preflight(self, method: str, path: str, headers: Mapping[str, str], length: int | None) -> Response | None:
        """The checks that need no body: route (404), method (405), token (401), size (411/413).

        The server calls this before reading a body, so a stranger cannot make it read 64 MB.
        """
        route, _ = self._match(path)
        if route is None:
            return _error(404, f"no endpoint {path}; see board_agent/README.md")
        if method not in route.methods:
            allow = ", ".join(sorted(route.methods))
            return _error(405, f"{method} is not allowed on {path}; allowed: {allow}", {"Allow": allow})
        if method != "POST" and length:
            return _error(413, f"{method} takes no body; this one declares {length} bytes")
        if route.auth and not self._authorized(headers):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": protocol.AUTH_SCHEME})
        if method == "POST":
            limit = self.body_limit(path)
            if length is None:
                return _error(411, "send the body with a Content-Length")
            if length > limit:
                return _error(413, f"body of {length} bytes is over this agent's limit of {limit} bytes "
                                   f"(max_model_mb={self.settings.max_model_mb}, "
                                   f"max_inputs_mb={self.settings.max_inputs_mb})")
        return None

    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        """One request to one response; never raises."""
        headers = {k.lower(): v for k, v in headers.items()}
        early = self.preflight(method, path, headers, len(body))
        if early is not None:
            return early
        route, match = self._match(path)
        assert route is not None and match is not None
        try:
            return route.methods[method](query=query, body=body, **match.groupdict())
        except Exception as exc:  # noqa: BLE001 - a bug must cost one request, never the agent
            log.exception("%s %s failed", method, path)
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stops the worker and kills a running child."""
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            self._kill(child)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._worker.join(timeout=10)

    # ------------------------------------------------------------------ plumbing
    def _match(self, path: str) -> tuple[Route | None, re.Match[str] | None]:
        for route in self.routes:
            m = route.pattern.match(path)
            if m:
                return route, m
        return None, None

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self._token is None:
            return True
        value = {k.lower(): v for k, v in headers.items()}.get(protocol.AUTH_HEADER.lower(), "")
        scheme, _, given = value.partition(" ")
        if scheme.lower() != protocol.AUTH_SCHEME.lower():
            given = ""
        # constant time, so response times do not leak how much of a guess was right
        return hmac.compare_digest(given.strip().encode(), self._token)

    def _path(self, sub: str, name: str) -> str:
        """A path inside the workdir; refuses anything that resolves outside it."""
        path = os.path.realpath(os.path.join(self.workdir, sub, name))
        if os.path.dirname(path) != os.path.join(self.workdir, sub):
            raise ValueError(f"refusing path {name!r} outside {sub}/")
        return path

    @staticmethod
    def _remove(path: str) -> None:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass

    def _drop_outputs(self, job_id: str) -> None:
        self._remove(self._path("outputs", f"{job_id}.npz"))

    def _params(self, query: str, allowed: dict[str, protocol.IntParam]) -> tuple[str, dict[str, int], str]:
        """(target, int params, label) from the query string; ValueError with the reason."""
        parsed = parse_qs(query, keep_blank_values=True)
        known = {"target", protocol.LABEL_PARAM, *allowed}
        unknown = sorted(set(parsed) - known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        repeated = sorted(k for k, v in parsed.items() if len(v) > 1)
        if repeated:
            raise ValueError(f"parameter(s) given more than once: {', '.join(repeated)}")
        target = parsed.get("target", [""])[0]
        if not target:
            raise ValueError(f"target is required; one of {', '.join(protocol.TARGETS)}")
        if target not in protocol.TARGETS:
            raise ValueError(f"unknown target {target!r}; known: {', '.join(protocol.TARGETS)}")
        available = self.probe["targets"].get(target, {})
        if not available.get("available"):
            raise ValueError(f"target {target} is unavailable on {self.board}: {available.get('reason', '?')}")
        values = {name: p.parse(parsed.get(name, [None])[0]) for name, p in allowed.items()}
        label = parsed.get(protocol.LABEL_PARAM, [""])[0][: protocol.LABEL_MAX]
        return target, values, label

    # ------------------------------------------------------------------ endpoints
    def _health(self, **_: Any) -> Response:
        prof: dict[str, Any] = ({"available": True, "path": self.profile_binary} if self.profile_binary else
                                {"available": False,
                                 "reason": f"benchmark_model not found ({self.settings.benchmark_model})"})
        return _json(200, {
            "status": "ok",
            "board": self.board,
            "agent": __version__,
            "protocol": protocol.VERSION,
            "runtime": self.probe.get("runtime"),
            "python": self.probe.get("python", platform.python_version()),
            "machine": self.probe.get("machine", platform.machine()),
            "system": self.system,
            "targets": self.probe["targets"],
            "queue_depth": self._queue.qsize(),
            "running": self._running is not None,
            "profile": prof,
            "limits": {"max_model_mb": self.settings.max_model_mb, "max_inputs_mb": self.settings.max_inputs_mb,
                       "queue": self.settings.queue, "job_timeout_s": self.settings.job_timeout},
        })

    def _post_benchmark(self, *, query: str, body: bytes) -> Response:
        try:
            target, values, label = self._params(query, protocol.BENCHMARK_PARAMS)
        except ValueError as exc:
            return _error(422, str(exc))
        if not body:
            return _error(400, "empty body; send the .tflite bytes")
        try:
            check_tflite(body)
        except UploadError as exc:
            return _error(400, str(exc))
        params = {"target": target, **values}
        return self._enqueue(protocol.KIND_BENCHMARK, params, label, body, None)

    def _post_inference(self, *, query: str, body: bytes) -> Response:
        try:
            target, values, label = self._params(query, protocol.INFERENCE_PARAMS)
        except ValueError as exc:
            return _error(422, str(exc))
        try:
            model, npz = protocol.unpack_inference(body)
        except ValueError as exc:
            return _error(400, str(exc))
        if len(model) > self.settings.max_model_mb * MB:
            return _error(413, f"model of {len(model)} bytes is over max_model_mb={self.settings.max_model_mb}")
        if len(npz) > self.settings.max_inputs_mb * MB:
            return _error(413, f"inputs of {len(npz)} bytes are over max_inputs_mb={self.settings.max_inputs_mb}")
        try:
            summary = check_tflite(model)
            arrays = npz_arrays(npz, max_bytes=self.settings.max_inputs_mb * MB)
        except UploadError as exc:
            return _error(400, str(exc))
        try:
            n = match_inputs(arrays, summary)
        except UploadError as exc:
            return _error(422, str(exc))
        params = {"target": target, **values, "n_samples": n}
        return self._enqueue(protocol.KIND_INFERENCE, params, label, model, npz)

    def _enqueue(self, kind: str, params: dict[str, Any], label: str, model: bytes, npz: bytes | None) -> Response:
        with self._submit_lock:
            if self._queue.full():
                return _error(429, f"{self._queue.qsize()} job(s) already wait behind the running one "
                                   f"(queue={self.settings.queue}); retry later", {"Retry-After": "5"})
            rec = self.jobs.create(kind, params, label=label, sha256=sha256(model).hexdigest(),
                                   size_bytes=len(model))
            job_id = rec["id"]
            try:
                with open(self._path("uploads", f"{job_id}.tflite"), "wb") as f:
                    f.write(model)
                if npz is not None:
                    with open(self._path("uploads", f"{job_id}.npz"), "wb") as f:
                        f.write(npz)
                self._queue.put_nowait(job_id)
            except (OSError, queue.Full) as exc:
                self._cleanup(job_id)
                self.jobs.discard(job_id)
                if isinstance(exc, queue.Full):
                    return _error(429, "the queue is full; retry later", {"Retry-After": "5"})
                return _error(507, f"cannot store the upload: {exc}")
        collection = protocol.BENCHMARKS if kind == protocol.KIND_BENCHMARK else protocol.INFERENCES
        return _json(202, {"id": job_id, "status": protocol.QUEUED},
                     {"Location": protocol.job_path(collection, job_id)})

    def _job(self, job_id: str, kind: str) -> dict[str, Any] | None:
        if not protocol.JOB_ID_RE.match(job_id):
            return None
        rec = self.jobs.get(job_id)
        return rec if rec is not None and rec.get("kind") == kind else None

    def _get_benchmark(self, *, job_id: str, **_: Any) -> Response:
        rec = self._job(job_id, protocol.KIND_BENCHMARK)
        return _json(200, rec) if rec else _error(404, f"no benchmark job {job_id!r}")

    def _get_inference(self, *, job_id: str, **_: Any) -> Response:
        rec = self._job(job_id, protocol.KIND_INFERENCE)
        return _json(200, rec) if rec else _error(404, f"no inference job {job_id!r}")

    def _get_outputs(self, *, job_id: str, **_: Any) -> Response:
        rec = self._job(job_id, protocol.KIND_INFERENCE)
        if rec is None:
            return _error(404, f"no inference job {job_id!r}")
        if rec["status"] != protocol.DONE:
            return _error(409, f"job {job_id} is {rec['status']}; outputs exist once it is done"
                          + (f" (error: {rec['error']})" if rec.get("error") else ""))
        try:
            with open(self._path("outputs", f"{job_id}.npz"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return _error(404, f"outputs of job {job_id} are gone (only the last {self.settings.keep_jobs} are kept)")
        return 200, {"Content-Type": protocol.NPZ_CONTENT_TYPE}, data

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None or self._stop.is_set():
                break
            self._running = job_id
            try:
                self._execute(job_id)
            except Exception as exc:  # noqa: BLE001 - a job's failure is its record's business
                log.exception("job %s failed", job_id)
                self.jobs.update(job_id, status=protocol.FAILED, error=f"agent error: {exc}",
                                 finished_at=time.time())
            finally:
                self._cleanup(job_id)
                self._running = None

    def _cleanup(self, job_id: str) -> None:
        for suffix in (".tflite", ".npz", ".spec.json", ".result.json", ".result.json.part"):
            self._remove(self._path("uploads", job_id + suffix))

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != protocol.TOKEN_ENV}
        env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return env

    def _execute(self, job_id: str) -> None:
        rec = self.jobs.get(job_id)
        assert rec is not None
        params = rec["params"]
        target = params["target"]
        self.jobs.update(job_id, status=protocol.RUNNING, started_at=time.time())
        env = self._child_env()
        cache: dict[str, Any] | None = None
        if target == protocol.NPU:
            # one cache directory per model, so "warm" means this very model compiled here before
            cache_dir = self._path("cache", rec["sha256"])
            warm = os.path.isdir(cache_dir) and bool(os.listdir(cache_dir))
            os.makedirs(cache_dir, exist_ok=True)
            env["VIV_VX_ENABLE_CACHE_GRAPH_BINARY"] = "1"
            env["VIV_VX_CACHE_BINARY_GRAPH_DIR"] = cache_dir
            cache = {"dir": cache_dir, "warm": warm}
        model = self._path("uploads", f"{job_id}.tflite")
        spec: dict[str, Any] = {"model": model, "target": target, "threads": params.get("threads", 1),
                                "delegate": self.settings.npu_delegate}
        if rec["kind"] == protocol.KIND_BENCHMARK:
            spec.update(mode="benchmark", runs=params["runs"], warmup=params["warmup"])
        else:
            spec.update(mode="infer", inputs=self._path("uploads", f"{job_id}.npz"),
                        max_input_bytes=self.settings.max_inputs_mb * MB,
                        outputs=self._path("outputs", f"{job_id}.npz"))
        # one deadline for the whole job: the runner and the optional profiler share job_timeout
        deadline = time.monotonic() + self.settings.job_timeout
        result, error = self._spawn(job_id, spec, env, self.settings.job_timeout)
        if error is not None:
            self.jobs.update(job_id, status=protocol.FAILED, error=error, finished_at=time.time())
            return
        assert result is not None
        if cache is not None:
            cache["entries_after"] = len(os.listdir(cache["dir"]))
            result["cache"] = cache
        if rec["kind"] == protocol.KIND_BENCHMARK:
            if params.get("profile"):
                result["profile"] = run_profile(
                    self.settings.benchmark_model, model, target, threads=params["threads"], runs=params["runs"],
                    warmup=params["warmup"], delegate=self.settings.npu_delegate,
                    timeout=deadline - time.monotonic(), env=env, on_start=self._adopt,
                    npu_clock_mhz=self.settings.npu_clock_mhz,
                    tflite_ops=list((result.get("ops") or {}).get("delegated") or []))
                self._child = None
            else:
                result["profile"] = {"available": False, "reason": "not requested (profile=1)"}
        self.jobs.update(job_id, status=protocol.DONE, result=result, finished_at=time.time())

    def _spawn(self, job_id: str, spec: dict[str, Any], env: dict[str, str],
               timeout: float) -> tuple[dict[str, Any] | None, str | None]:
        """Runs the runner on `spec` in a child; (result, None) or (None, reason)."""
        spec_path = self._path("uploads", f"{job_id}.spec.json")
        result_path = self._path("uploads", f"{job_id}.result.json")
        spec = dict(spec, result=result_path, parent_pid=os.getpid())
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        proc = subprocess.Popen(
            [sys.executable, "-m", "board_agent.runner", spec_path], cwd=self.workdir, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        self._child = proc
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            return None, (f"timed out after {timeout:g} s: the model hung the runtime (or job_timeout is too "
                          "short); the child was killed")
        finally:
            self._child = None
        tail = err.decode("utf-8", "replace").strip()[-STDERR_TAIL:]
        if self._stop.is_set():
            return None, "agent stopped while the job ran"
        if proc.returncode < 0:
            try:
                name = signal.Signals(-proc.returncode).name
            except ValueError:
                name = f"signal {-proc.returncode}"
            return None, f"the runtime crashed ({name}) on this model; the agent is unaffected. stderr: {tail}"
        try:
            with open(result_path, encoding="utf-8") as f:
                payload = json.load(f)
        except (OSError, ValueError):
            return None, f"runner exited with {proc.returncode} and no result. stderr: {tail}"
        if not payload.get("ok"):
            return None, str(payload.get("error") or "runner failed without a reason")
        result: dict[str, Any] = payload["result"]
        return result, None

    def _adopt(self, proc: subprocess.Popen[bytes]) -> None:
        """Remembers a running child so `close()` kills it; a child started after close dies at once."""
        self._child = proc
        if self._stop.is_set():
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        kill_group(proc)

    def _probe(self) -> dict[str, Any]:
        """Which runtime and targets this host has, found once in a child at start."""
        job = "probe-" + os.urandom(4).hex()
        spec = {"mode": "probe", "delegate": self.settings.npu_delegate}
        result, error = self._spawn(job, spec, self._child_env(), PROBE_TIMEOUT_S)
        for suffix in (".spec.json", ".result.json"):
            self._remove(self._path("uploads", job + suffix))
        if result is None:
            reason = f"runtime probe failed: {error}"
            log.error("%s", reason)
            return {"runtime": {"name": None, "version": None, "error": reason},
                    "targets": {t: {"available": False, "reason": reason} for t in protocol.TARGETS}}
        for t, info in result["targets"].items():
            log.info("target %s: %s (%s)", t, "available" if info["available"] else "unavailable", info["reason"])
        return result
