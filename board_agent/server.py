"""The socket side: a ThreadingHTTPServer that feeds requests to `Agent.handle` and writes its answers."""

from __future__ import annotations

import logging
import selectors
import socket
import socketserver
import threading
import time
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
# a request head longer than this (request line and headers) is refused with 431 before it is parsed
MAX_HEAD_BYTES = 64 * 1024
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: 37\r\n\r\n{\"error\":\"request headers too large\"}")
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Retry-After: 5\r\nContent-Length: 45\r\n\r\n{\"error\":\"too many connections; retry later\"}")


class _Pending:
    """A connection waiting for a whole request head, held by the gate without a thread of its own."""

    __slots__ = ("sock", "address", "buf", "deadline")

    def __init__(self, sock: socket.socket, address: str, buf: bytes, deadline: float) -> None:
        self.sock, self.address, self.buf, self.deadline = sock, address, bytearray(buf), deadline


class _Gate:
    """One selector thread that holds every connection until its request head (request line and headers)
    has arrived, before authentication and before any thread is spent on it.

    A slow or idle client costs a socket and a few bytes, not a thread; a client that trickles its head
    is closed at request_timeout from its first byte, an idle one at idle_timeout. Past
    `max_pending_per_address` held connections from one address (or `max_pending` in all) the oldest one
    is closed: slow clients are by definition the oldest, while a real request's head arrives at once and
    leaves the gate on the next turn of the loop.
    """

    def __init__(self, server: AgentServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._incoming: list[_Pending] = []
        self._held: dict[socket.socket, _Pending] = {}  # arrival order: the first is the oldest
        self._per_address: dict[str, int] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-gate", daemon=True)
        self._thread.start()

    def held(self) -> int:
        with self._lock:
            return len(self._held) + len(self._incoming)

    def add(self, sock: socket.socket, address: str, buf: bytes = b"") -> None:
        """Hands a connection to the gate (a new one, or a kept-alive one with what it sent after its request)."""
        timeout = self.server.request_timeout if buf else self.server.idle_timeout
        with self._lock:
            self._incoming.append(_Pending(sock, address, buf, time.monotonic() + timeout))
        self._wake()

    def close(self) -> None:
        self._stopped.set()
        self._wake()
        self._thread.join(timeout=5)
        with self._lock:
            for p in [*self._held.values(), *self._incoming]:
                _close(p.sock)
            self._held.clear()
            self._incoming.clear()
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # the pipe is full (the loop wakes anyway) or closed (stopping)
            pass

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stopped.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                if key.fileobj is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    self._read(self._held.get(key.fileobj))  # type: ignore[call-overload]
            self._take_incoming()
            now = time.monotonic()
            if now >= next_sweep:  # deadlines need no more than a tenth of a second's precision
                next_sweep = now + 0.1
                for p in [p for p in self._held.values() if p.deadline <= now]:
                    self._drop(p)

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for p in incoming:
            if self._try_now(p):  # a real client's head is usually here by now: it never waits in the gate
                continue
            if self._per_address.get(p.address, 0) >= self.server.max_pending_per_address:
                self._drop(next(q for q in self._held.values() if q.address == p.address))
            if len(self._held) >= self.server.max_pending:
                self._drop(next(iter(self._held.values())))
            try:
                p.sock.setblocking(False)
                self.selector.register(p.sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                _close(p.sock)
                continue
            with self._lock:
                self._held[p.sock] = p
            self._per_address[p.address] = self._per_address.get(p.address, 0) + 1

    def _try_now(self, p: _Pending) -> bool:
        """Reads what a new connection has sent already; True when that settled it (released or closed)."""
        if _head_end(p.buf) < 0:
            try:
                p.sock.setblocking(False)
                data = p.sock.recv(_CHUNK)
            except BlockingIOError:
                return False
            except OSError:
                data = b""
            if not data:
                _close(p.sock)
                return True
            if not p.buf:
                p.deadline = time.monotonic() + self.server.request_timeout
            p.buf += data
        if _head_end(p.buf) < 0:
            return False
        if _blocking(p.sock):
            self.server.dispatch(p.sock, p.address, bytes(p.buf))
        else:
            _close(p.sock)
        return True

    def _read(self, p: _Pending | None) -> None:
        if p is None:
            return
        try:
            data = p.sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(p)
            return
        if not p.buf:  # the first byte of a request starts its deadline
            p.deadline = time.monotonic() + self.server.request_timeout
        p.buf += data
        if _head_end(p.buf) >= 0:
            self._release(p)
        elif len(p.buf) > MAX_HEAD_BYTES:
            self._forget(p)
            _refuse(p.sock, _TOO_LARGE)

    def _release(self, p: _Pending) -> None:
        self._forget(p)
        if _blocking(p.sock):
            self.server.dispatch(p.sock, p.address, bytes(p.buf))
        else:
            _close(p.sock)

    def _forget(self, p: _Pending) -> None:
        try:
            self.selector.unregister(p.sock)
        except (KeyError, ValueError, OSError):
            pass
        with self._lock:
            self._held.pop(p.sock, None)
        left = self._per_address.get(p.address, 1) - 1
        if left > 0:
            self._per_address[p.address] = left
        else:
            self._per_address.pop(p.address, None)

    def _drop(self, p: _Pending) -> None:
        self._forget(p)
        _close(p.sock)


def _head_end(buf: bytearray) -> int:
    """Where a request head ends in `buf` (after its blank line), or -1."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = buf.find(b"\n\n")
    return end + 2 if end >= 0 else -1


def _blocking(sock: socket.socket) -> bool:
    """Puts a socket back in blocking mode for its request's thread; False when it is already gone."""
    try:
        sock.setblocking(True)
        return True
    except OSError:
        return False


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _refuse(sock: socket.socket, reply: bytes) -> None:
    try:
        sock.setblocking(True)
        sock.settimeout(1.0)
        sock.sendall(reply)
    except OSError:
        pass
    _close(sock)


class _Reader:
    """The request's stream for http.server: the head the gate read, then the socket, all within one
    deadline (a per-recv timeout never fires on a trickle)."""

    def __init__(self, sock: socket.socket, buf: bytes, deadline: float) -> None:
        self.sock, self.buf, self.deadline = sock, bytearray(buf), deadline

    def _fill(self) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request took too long")
        self.sock.settimeout(left)
        data = self.sock.recv(_CHUNK)
        self.buf += data
        return bool(data)

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0 or (0 <= limit <= len(self.buf)):
                n = end + 1 if end >= 0 else limit
                if limit >= 0:
                    n = min(n, limit)
                line = bytes(self.buf[:n])
                del self.buf[:n]
                return line
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            if not self._fill():
                break
        n = len(self.buf) if n < 0 else min(n, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def leftover(self) -> bytes:
        """What the client sent after this request (a pipelined next one)."""
        return bytes(self.buf)

    def close(self) -> None:
        pass


class AgentServer(ThreadingHTTPServer):
    """Connections wait in the gate (no thread) until their request head has arrived; each request then
    runs on a thread of its own, at most `max_connections` at once (503 beyond), and a kept-alive
    connection goes back to the gate for its next request. The agent's worker runs jobs one at a time."""

    daemon_threads = True
    allow_reuse_address = True
    # 20 clients connecting at once must not be refused by a short listen backlog
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        settings = agent.settings
        self.max_connections = settings.max_connections
        self.max_pending = settings.max_pending
        self.max_pending_per_address = settings.max_pending_per_address
        self.request_timeout = settings.request_timeout
        self.idle_timeout = settings.idle_timeout
        self._conn_lock = threading.Lock()
        self._busy: set[socket.socket] = set()
        super().__init__(address, _Handler)  # type: ignore[arg-type]  # made by _serve_one, with the head
        self.gate = _Gate(self)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.gate.add(request, str(client_address[0]))

    def dispatch(self, sock: socket.socket, address: str, head: bytes) -> None:
        """Serves one request whose head has arrived, on a thread of its own (503 when max_connections are busy)."""
        with self._conn_lock:
            if len(self._busy) >= self.max_connections:
                refuse = True
            else:
                refuse = False
                self._busy.add(sock)
        if refuse:
            _refuse(sock, _BUSY)
            return
        threading.Thread(target=self._serve_one, args=(sock, address, head), daemon=True,
                         name="agent-request").start()

    def _serve_one(self, sock: socket.socket, address: str, head: bytes) -> None:
        keep, leftover = False, b""
        try:
            handler = _Handler(sock, (address, 0), self, head)
            keep, leftover = not handler.close_connection, handler.rfile.leftover()
        except Exception:  # a client that vanished or overran its deadline mid-request
            log.debug("request from %s ended early", address, exc_info=True)
        finally:
            with self._conn_lock:
                self._busy.discard(sock)
        if keep and not self.gate._stopped.is_set():
            self.gate.add(sock, address, leftover)
        else:
            _close(sock)

    def open_connections(self) -> int:
        """Connections held now: waiting in the gate, or being served."""
        with self._conn_lock:
            busy = len(self._busy)
        return busy + self.gate.held()

    def server_close(self) -> None:
        super().server_close()
        self.gate.close()


class _Handler(BaseHTTPRequestHandler):
    """One request on a connection whose head the gate already read."""

    protocol_version = "HTTP/1.1"
    server_version = f"qlab-board-agent/{__version__}"
    sys_version = ""
    server: AgentServer
    rfile: _Reader  # type: ignore[assignment]

    def __init__(self, request: socket.socket, client_address: Any, server: AgentServer, head: bytes) -> None:
        self._head = head
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = _Reader(self.connection, self._head, time.monotonic() + self.server.request_timeout)
        self.wfile = socketserver._SocketWriter(self.connection)  # type: ignore[attr-defined]

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

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
