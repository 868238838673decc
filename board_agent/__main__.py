"""`python -m board_agent`: read settings and the token, refuse unsafe binds, serve."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Sequence
from typing import Any

from board_agent import protocol
from board_agent.settings import Settings, parse

log = logging.getLogger("board_agent")


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def read_token(settings: Settings, env: dict[str, str] | None = None) -> str | None:
    """The token from --token-file (first line), else $QLAB_AGENT_TOKEN; None when neither.

    Raises:
        ValueError: the file is missing, unreadable or empty.
    """
    env = dict(os.environ) if env is None else env
    if settings.token_file:
        try:
            with open(settings.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
            mode = os.stat(settings.token_file).st_mode
        except OSError as exc:
            raise ValueError(f"cannot read token file {settings.token_file}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"token file {settings.token_file} is empty")
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("token file %s is readable by other users; chmod 600 it", settings.token_file)
        return token
    return env.get(protocol.TOKEN_ENV) or None


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 2 on a refused configuration (message on stderr), else serves until SIGTERM/SIGINT."""
    settings = parse(argv)
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = read_token(settings)
    except ValueError as exc:
        print(f"board_agent: {exc}", file=sys.stderr)
        return 2
    if token is None:
        if not settings.insecure_no_token:
            print(f"board_agent: refusing to start without a token: give --token-file FILE or set "
                  f"{protocol.TOKEN_ENV} (or --insecure-no-token when bound to loopback)", file=sys.stderr)
            return 2
        if not is_loopback(settings.host):
            print(f"board_agent: refusing --insecure-no-token on {settings.host!r}, which is not loopback; "
                  "give a token", file=sys.stderr)
            return 2
    from board_agent.app import Agent
    from board_agent.server import make_server

    try:
        agent = Agent(settings, token)
    except OSError as exc:
        print(f"board_agent: cannot use workdir {settings.workdir}: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(agent, settings.host, settings.port)
    except OSError as exc:
        agent.close()
        print(f"board_agent: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return, so it must not run on the serving thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    log.info("qlab board agent listening on http://%s:%d (board %s, workdir %s)", host, port, agent.board,
             agent.workdir)
    # a line on stdout that scripts (and tests) can wait for
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
