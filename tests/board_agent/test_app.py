"""The agent as a function, without sockets: routing, 405/404/401/411/413 before any body is read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from board_agent import protocol
from board_agent.app import Agent
from board_agent.settings import defaults

TOKEN = "app-token"


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[Agent]:
    """An Agent (no server) with a 1 MB model cap and a token."""
    agent = Agent(defaults(env={}).replace(workdir=str(tmp_path / "w"), max_model_mb=1, board_name="b"), TOKEN)
    try:
        yield agent
    finally:
        agent.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_handle_health_needs_no_socket_and_no_token(app: Agent) -> None:
    status, headers, body = app.handle("GET", protocol.HEALTH, "", {}, b"")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["board"] == "b"


def test_handle_wrong_method_is_405_with_allow(app: Agent) -> None:
    status, headers, _ = app.handle("PATCH", protocol.INFERENCES, "", AUTH, b"")
    assert status == 405 and headers["Allow"] == "POST"


def test_handle_header_names_are_case_insensitive(app: Agent) -> None:
    status, _, body = app.handle("POST", protocol.BENCHMARKS, "target=gpu", {"AUTHORIZATION": f"bearer {TOKEN}"},
                                 b"x")
    assert status == 422 and "unknown target" in json.loads(body)["error"]


def test_preflight_oversize_length_is_413_before_the_body(app: Agent) -> None:
    early = app.preflight("POST", protocol.BENCHMARKS, AUTH, 50 * 1024 * 1024)
    assert early is not None and early[0] == 413


def test_preflight_missing_length_is_411(app: Agent) -> None:
    early = app.preflight("POST", protocol.BENCHMARKS, AUTH, None)
    assert early is not None and early[0] == 411


def test_preflight_stranger_gets_401_not_413(app: Agent) -> None:
    early = app.preflight("POST", protocol.BENCHMARKS, {}, 50 * 1024 * 1024)
    assert early is not None and early[0] == 401


def test_preflight_bearer_scheme_is_required(app: Agent) -> None:
    early = app.preflight("GET", f"{protocol.BENCHMARKS}/0123456789abcdef", {"Authorization": f"Basic {TOKEN}"}, 0)
    assert early is not None and early[0] == 401


def test_handle_without_token_configured_accepts_anyone(tmp_path: Path) -> None:
    agent = Agent(defaults(env={}).replace(workdir=str(tmp_path / "w")), None)
    try:
        status, _, _ = agent.handle("GET", f"{protocol.BENCHMARKS}/0123456789abcdef", "", {}, b"")
        assert status == 404
    finally:
        agent.close()


def test_agent_start_removes_stale_uploads(tmp_path: Path) -> None:
    uploads = tmp_path / "w" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "0123456789abcdef.tflite").write_bytes(b"left over by a killed agent")
    agent = Agent(defaults(env={}).replace(workdir=str(tmp_path / "w")), TOKEN)
    agent.close()
    assert list(uploads.iterdir()) == []
