"""HTTP client of one board agent (protocol v1): health, benchmark and inference jobs, their results.

Nothing here touches the store; `qcore.boards.runs` orchestrates runs over registered boards and
stores their results, `qcore.boards.farm` fans a matrix out across a pool.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from board_agent import protocol
from qcore.qtyping import Latency, QlabError

log = logging.getLogger(__name__)

# connecting to a board on the LAN takes milliseconds; three seconds means it is off or unrouted
CONNECT_TIMEOUT_S = 3.05
# uploads of a few MB over Wi-Fi and a busy agent still answer well within this
READ_TIMEOUT_S = 30.0
# connect errors only: a GET that reached the agent is never repeated blindly
CONNECT_RETRIES = 2
# a job polls this often; the agent's status reads are cheap
DEFAULT_POLL_S = 0.25
# the slowest sensible job: a 50-run benchmark of a big model on the A53 with profiling
DEFAULT_JOB_TIMEOUT_S = 900.0

TARGET_ALL = "all"
# QLAB_BOARD_NETWORKS=10.0.0.0/8,192.168.1.0/24: the only networks a board URL may point into (unset: any),
# so a board URL cannot send the server's requests to its own or its neighbours' services
ENV_BOARD_NETWORKS = "QLAB_BOARD_NETWORKS"
# the agent names itself in every reply; a reply without it is some other service and is never echoed
AGENT_SERVER_PREFIX = "qlab-board-agent"


class BoardUnreachableError(QlabError):
    """The agent did not answer (connection refused, timeout, DNS): nothing was done or stored."""


class BoardBusyError(QlabError):
    """The agent's queue is full (429): nothing was queued; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def board_networks(text: str | None = None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The networks of QLAB_BOARD_NETWORKS (or `text`); None when unset (every address allowed).

    Raises:
        QlabError: naming an entry that is not a network like 10.0.0.0/8.
    """
    raw = os.environ.get(ENV_BOARD_NETWORKS, "") if text is None else text
    if not raw.strip():
        return None
    nets = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise QlabError(f"{ENV_BOARD_NETWORKS}: {part!r} is not a network (e.g. 10.0.0.0/8, 192.168.1.0/24)") from None
    return nets


def check_board_url(url: str) -> None:
    """Refuses a board URL whose host resolves outside QLAB_BOARD_NETWORKS (when set), before any request.

    Raises:
        QlabError: one line naming the URL, the address and the allowed networks.
    """
    nets = board_networks()
    if nets is None:
        return
    host = urlsplit(url).hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        raise QlabError(f"board URL {url}: cannot resolve {host!r}") from None
    allowed = ", ".join(str(n) for n in nets)
    for text in sorted(addresses):
        address = ipaddress.ip_address(text.split("%")[0])
        if not any(address in n for n in nets):
            raise QlabError(f"board URL {url}: {host} is {address}, outside {ENV_BOARD_NETWORKS} ({allowed})")


# names that moved to qcore.boards.runs when the orchestration left this module; old imports keep working
_MOVED = ("BoardHealth", "client_for", "board_health", "bench_on_board", "accuracy_on_board")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("qcore.boards.runs"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BoardClient:
    """HTTP client of one board agent (protocol v1).

    Args:
        url: the agent's base URL, e.g. "http://imx8mp.local:8765".
        token: the bearer token (None for an agent started with --insecure-no-token).
        name: the board's name, used in messages.
        connect_timeout, read_timeout: seconds for each request.
        retries: how often a failed connection is retried.

    Every failure raises `QlabError` with the URL in the message.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        name: str = "",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        retries: int = CONNECT_RETRIES,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name or self.url
        self._token = token
        self._timeout = (connect_timeout, read_timeout)
        self._session = requests.Session()
        retry = Retry(
            total=retries, connect=retries, read=0, status=0, other=0,
            allowed_methods=frozenset({"GET"}), backoff_factor=0.2, raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def __repr__(self) -> str:  # never shows the token
        return f"BoardClient({self.url!r}, name={self.name!r})"

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self._token:
            headers[protocol.AUTH_HEADER] = f"{protocol.AUTH_SCHEME} {self._token}"
        url = self.url + path
        check_board_url(self.url)
        try:
            resp = self._session.request(method, url, headers=headers, timeout=self._timeout, **kwargs)
        except requests.exceptions.Timeout:
            raise BoardUnreachableError(
                f"board {self.name} at {self.url} did not answer {method} {path} in time") from None
        except requests.exceptions.RequestException as exc:
            raise BoardUnreachableError(f"board {self.name} at {self.url} is unreachable: {_reason(exc)}") from None
        if not resp.headers.get("Server", "").startswith(AGENT_SERVER_PREFIX):
            raise QlabError(f"board {self.name} at {self.url}: {method} {path} -> {resp.status_code}: "
                            f"{_error_text(resp)}")
        if resp.status_code == 429:
            try:
                retry_after = float(resp.headers.get("Retry-After", "1"))
            except ValueError:
                retry_after = 1.0
            raise BoardBusyError(f"board {self.name} at {self.url}: {method} {path} -> 429: {_error_text(resp)}",
                                 retry_after)
        if resp.status_code >= 400:
            raise QlabError(f"board {self.name} at {self.url}: {method} {path} -> {resp.status_code}: "
                            f"{_error_text(resp)}")
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._request(method, path, **kwargs)
        try:
            data = resp.json()
        except ValueError:
            raise QlabError(f"board {self.name} at {self.url}: {path} did not return JSON "
                            "(is this a qlab board agent?)") from None
        if not isinstance(data, dict):
            raise QlabError(f"board {self.name} at {self.url}: {path} returned {type(data).__name__}, not an object")
        return data

    # ------------------------------------------------------------------ endpoints
    def health(self) -> dict[str, Any]:
        """GET /v1/health: status, board, runtime, targets {name: {available, reason}}, queue_depth."""
        return self._json("GET", protocol.HEALTH)

    def submit_benchmark(
        self,
        model: bytes,
        *,
        target: str,
        runs: int = protocol.RUNS.default,
        warmup: int = protocol.WARMUP.default,
        threads: int = protocol.THREADS.default,
        profile: bool = False,
        label: str = "",
    ) -> str:
        """POST /v1/benchmarks with the raw .tflite; returns the job id."""
        params: dict[str, Any] = {"target": target, "runs": runs, "warmup": warmup, "threads": threads,
                                  "profile": int(profile)}
        if label:
            params[protocol.LABEL_PARAM] = label[: protocol.LABEL_MAX]
        data = self._json("POST", protocol.BENCHMARKS, params=params, data=bytes(model),
                          headers={"Content-Type": protocol.TFLITE_CONTENT_TYPE})
        return str(data["id"])

    def submit_inference(
        self,
        model: bytes,
        inputs: np.ndarray | Sequence[np.ndarray],
        *,
        target: str,
        threads: int = protocol.THREADS.default,
        label: str = "",
    ) -> str:
        """POST /v1/inferences with the model and the inputs (float or already quantized); returns the job id.

        Args:
            inputs: one array [n, ...] for a single-input model, or one per model input.
        """
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        buf = io.BytesIO()
        named: dict[str, Any] = (
            {protocol.SINGLE_INPUT_KEY: np.ascontiguousarray(arrays[0])} if len(arrays) == 1
            else {protocol.input_key(i): np.ascontiguousarray(a) for i, a in enumerate(arrays)}
        )
        np.savez(buf, **named)
        params: dict[str, Any] = {"target": target, "threads": threads}
        if label:
            params[protocol.LABEL_PARAM] = label[: protocol.LABEL_MAX]
        body = protocol.pack_inference(bytes(model), buf.getvalue())
        data = self._json("POST", protocol.INFERENCES, params=params, data=body,
                          headers={"Content-Type": protocol.FRAME_CONTENT_TYPE})
        return str(data["id"])

    def job(self, job_id: str, kind: str = protocol.KIND_BENCHMARK) -> dict[str, Any]:
        """GET the job record: id, status (queued|running|done|failed), result, error."""
        return self._json("GET", protocol.job_path(_collection(kind), job_id))

    def wait(
        self,
        job_id: str,
        *,
        kind: str = protocol.KIND_BENCHMARK,
        timeout: float = DEFAULT_JOB_TIMEOUT_S,
        poll: float = DEFAULT_POLL_S,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Polls a job until it ends.

        Returns:
            The job's result (a dict).

        Raises:
            QlabError: when the job failed (with the agent's reason) or did not end within `timeout`.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            rec = self.job(job_id, kind)
            status = rec.get("status")
            if progress is not None and status != last:
                progress(str(status))
            last = str(status)
            if status == protocol.DONE:
                return dict(rec.get("result") or {})
            if status == protocol.FAILED:
                raise QlabError(f"board {self.name}: {kind} job {job_id} failed: {rec.get('error') or 'no reason given'}")
            if time.monotonic() > deadline:
                raise QlabError(f"board {self.name}: {kind} job {job_id} still {status} after {timeout:.0f} s")
            time.sleep(poll)

    def outputs(self, job_id: str) -> list[np.ndarray]:
        """GET /v1/inferences/{id}/outputs: the dequantized float outputs, one array per model output."""
        resp = self._request("GET", protocol.job_path(protocol.INFERENCES, job_id) + protocol.OUTPUTS_SUFFIX)
        try:
            with np.load(io.BytesIO(resp.content), allow_pickle=False) as z:
                keys = sorted((k for k in z.files if k.startswith("output_")), key=lambda k: int(k.split("_")[1]))
                return [z[k] for k in keys]
        except (ValueError, OSError) as exc:
            raise QlabError(f"board {self.name} at {self.url}: outputs of job {job_id} are not a valid .npz: {exc}") from None

    def infer(
        self,
        model: bytes,
        inputs: np.ndarray | Sequence[np.ndarray],
        *,
        target: str,
        threads: int = protocol.THREADS.default,
        timeout: float = DEFAULT_JOB_TIMEOUT_S,
        poll: float = DEFAULT_POLL_S,
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Runs inputs through the model on the board.

        Returns:
            (outputs, one float32 array per model output; the job's result: timings, runtime, quantization).
        """
        job_id = self.submit_inference(model, inputs, target=target, threads=threads)
        result = self.wait(job_id, kind=protocol.KIND_INFERENCE, timeout=timeout, poll=poll)
        return self.outputs(job_id), result


def resolve_targets(health: Mapping[str, Any], spec: str | Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Which targets to run: (chosen, skipped {target: reason}).

    `spec` is "all", a single target, or a list of them. "all" skips targets the agent reports
    unavailable; a named unavailable target raises.

    Raises:
        QlabError: unknown target, or a named target the board cannot run (with its reason).
    """
    names = [spec] if isinstance(spec, str) else list(spec)
    info = health.get("targets", {}) if isinstance(health, Mapping) else {}
    board = health.get("board", "the board") if isinstance(health, Mapping) else "the board"
    if names == [TARGET_ALL]:
        chosen, skipped = [], {}
        for t in protocol.TARGETS:
            if info.get(t, {}).get("available"):
                chosen.append(t)
            else:
                skipped[t] = str(info.get(t, {}).get("reason") or "not reported by the agent")
        if not chosen:
            raise QlabError(f"{board} has no available target: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        return chosen, skipped
    for t in names:
        if t not in protocol.TARGETS:
            raise QlabError(f"unknown target {t!r}; known: {', '.join(protocol.TARGETS)}, {TARGET_ALL}")
        if not info.get(t, {}).get("available"):
            raise QlabError(f"target {t} is unavailable on {board}: {info.get(t, {}).get('reason') or 'not reported'}")
    return names, {}


def latency_from_result(result: Mapping[str, Any], *, board: str = "", job_id: str = "") -> Latency:
    """A `Latency` from a benchmark job's result; everything beyond the times goes to `extra`."""
    try:
        times = {k: float(result[k]) for k in protocol.RESULT_TIMES}
        head = dict(target=str(result["target"]), threads=int(result["threads"]), xnnpack=bool(result["xnnpack"]),
                    runs=int(result["runs"]), warmup=int(result["warmup"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise QlabError(f"board {board or '?'}: benchmark result lacks or garbles field {exc}") from None
    known = set(protocol.RESULT_TIMES) | set(head)
    extra = {k: v for k, v in result.items() if k not in known}
    if board:
        extra["board"] = board
    if job_id:
        extra["job_id"] = job_id
    return Latency(**head, **times, extra=extra)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- helpers
def _collection(kind: str) -> str:
    if kind == protocol.KIND_BENCHMARK:
        return protocol.BENCHMARKS
    if kind == protocol.KIND_INFERENCE:
        return protocol.INFERENCES
    raise ValueError(f"unknown job kind {kind!r}; known: {protocol.KIND_BENCHMARK}, {protocol.KIND_INFERENCE}")


def _reason(exc: BaseException) -> str:
    """The innermost useful line of a requests/urllib3 error (e.g. 'Connection refused')."""
    text = str(exc)
    # the plain phrases first; a bare errno keeps its opening bracket ("[Errno 113] No route to host")
    for marker in ("Connection refused", "Name or service not known", "timed out", "[Errno", "Errno"):
        idx = text.find(marker)
        if idx >= 0:
            return text[idx:].split("'))")[0].rstrip(")'\"")
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _error_text(resp: requests.Response) -> str:
    """The agent's own error message; a reply from anything else is described, never quoted."""
    if not resp.headers.get("Server", "").startswith(AGENT_SERVER_PREFIX):
        kind = resp.headers.get("Content-Type", "no content type").split(";")[0]
        return f"the reply is not a qlab board agent's ({kind}, {len(resp.content)} bytes); is the URL right?"
    try:
        data = resp.json()
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])[:300]
    except ValueError:
        pass
    return resp.reason or "no reason given"
