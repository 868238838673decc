"""The socket side: a ThreadingHTTPServer that feeds requests to `Agent.handle` and writes its answers."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from board_agent import __version__
from board_agent.app import Agent, Response, _error

log = logging.getLogger(__name__)

# a refused body up to this size is read and dropped, so the client sees the status instead of a reset;
# anything larger closes the connection unread
DRAIN_LIMIT = 1024 * 1024
# writing a response to a client that stopped reading gives up after this long
SEND_TIMEOUT_S = 60
_CHUNK = 1 << 16
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Retry-After: 5\r\nContent-Length: 46\r\n\r\n{\"error\":\"too many connections; retry later\"}")


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose reads share one deadline.

    While waiting for a request the deadline is the idle timeout; the first byte of a request
    starts its own deadline, so headers and body together must arrive within request_timeout
    however slowly a client trickles them (a per-recv socket timeout never fires on a trickle).
    """

    def __init__(self, sock: socket.socket, idle_s: float, request_s: float,
                 on_request: Callable[[], None]) -> None:
        self.sock, self.idle_s, self.request_s, self.on_request = sock, idle_s, request_s, on_request
        self.deadline = time.monotonic() + idle_s
        self.waiting = True

    def await_request(self) -> None:
        self.deadline, self.waiting = time.monotonic() + self.idle_s, True

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        start = time.monotonic()
        left = self.deadline - start
        if left <= 0:
            raise TimeoutError("idle keep-alive connection" if self.waiting else "request took too long")
        self.sock.settimeout(left)
        n = self.sock.recv_into(b)
        if n and self.waiting:
            self.deadline, self.waiting = start + self.request_s, False
            self.on_request()
        return n


class AgentServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` of them; the agent's worker runs jobs
    one at a time behind it."""

    daemon_threads = True
    allow_reuse_address = True
    # 20 clients connecting at once must not be refused by a short listen backlog
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        self.max_connections = agent.settings.max_connections
        self.request_timeout = agent.settings.request_timeout
        self.idle_timeout = agent.settings.idle_timeout
        self._conn_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        # connections waiting for their next request, oldest first: the ones to close when full
        self._idle: dict[socket.socket, float] = {}
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            if len(self._open) >= self.max_connections:
                victim = min(self._idle, key=self._idle.__getitem__, default=None)
                if victim is None:
                    self._refuse(request)
                    return
                self._idle.pop(victim, None)
                try:  # wakes its thread, which sees end of stream and closes
                    victim.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open.add(request)
            self._idle[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def set_idle(self, request: socket.socket, idle: bool) -> None:
        with self._conn_lock:
            if idle and request in self._open:
                self._idle[request] = time.monotonic()
            else:
                self._idle.pop(request, None)

    def open_connections(self) -> int:
        with self._conn_lock:
            return len(self._open)

    def _forget(self, request: Any) -> None:
        with self._conn_lock:
            self._open.discard(request)
            self._idle.pop(request, None)

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.settimeout(1.0)
            request.sendall(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"qlab-board-agent/{__version__}"
    sys_version = ""
    server: AgentServer

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection, self.server.idle_timeout, self.server.request_timeout,
                                       lambda: self.server.set_idle(self.connection, False))
        self.rfile = io.BufferedReader(self._reader, _CHUNK)

    def handle_one_request(self) -> None:
        self._reader.await_request()
        self.server.set_idle(self.connection, True)
        try:
            super().handle_one_request()
        finally:
            self.server.set_idle(self.connection, False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def _dispatch(self) -> None:
        agent = self.server.agent
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.close_connection = True
            self._send(_error(411, "chunked bodies are not accepted; send a Content-Length"))
            return
        raw = headers.get("content-length")
        try:
            length = int(raw) if raw is not None else None
            if length is not None and length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            self._send(_error(400, f"bad Content-Length {raw!r}"))
            return
        early = agent.preflight(self.command, split.path, headers, length)
        if early is not None:
            if self.command == "POST" and length and length <= DRAIN_LIMIT:
                self._drain(length)
            elif length:
                self.close_connection = True  # never read a refused body of any size
            self._send(early)
            return
        body = self.rfile.read(length) if length else b""
        if length and len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return
        self._send(agent.handle(self.command, split.path, split.query, headers, body))

    def _drain(self, length: int) -> None:
        left = length
        while left > 0:
            chunk = self.rfile.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)

    def _send(self, response: Response) -> None:
        status, headers, body = response
        try:
            self.connection.settimeout(SEND_TIMEOUT_S)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:  # the client went away or stopped reading
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


def make_server(agent: Agent, host: str, port: int) -> AgentServer:
    """A bound server (port 0 picks a free one: see `server.server_address`)."""
    return AgentServer((host, port), agent)


def serve(agent: Agent, host: str, port: int) -> None:
    """Serves until interrupted, then stops the agent's worker."""
    server = make_server(agent, host, port)
    log.info("qlab board agent %s listening on http://%s:%d", __version__, *server.server_address[:2])
    try:
        server.serve_forever()
    finally:
        server.server_close()
        agent.close()
