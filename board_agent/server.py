"""The socket side: a ThreadingHTTPServer that feeds requests to `Agent.handle` and writes its answers."""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from board_agent import __version__
from board_agent.app import Agent, Response, _error

log = logging.getLogger(__name__)

# a refused body up to this size is read and dropped, so the client sees the status instead of a reset
DRAIN_LIMIT = 8 * 1024 * 1024
# a client that stalls mid-request for this long loses its connection, not a server thread forever
SOCKET_TIMEOUT_S = 60
_CHUNK = 1 << 16


class AgentServer(ThreadingHTTPServer):
    """One thread per connection; the agent's worker runs jobs one at a time behind it."""

    daemon_threads = True
    allow_reuse_address = True
    # 20 clients connecting at once must not be refused by a short listen backlog
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"qlab-board-agent/{__version__}"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S
    server: AgentServer

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
            self._drain(length)
            self._send(early)
            return
        body = self.rfile.read(length) if length else b""
        if length and len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return
        self._send(agent.handle(self.command, split.path, split.query, headers, body))

    def _drain(self, length: int | None) -> None:
        if not length:
            return
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        left = length
        while left > 0:
            chunk = self.rfile.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)

    def _send(self, response: Response) -> None:
        status, headers, body = response
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
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
