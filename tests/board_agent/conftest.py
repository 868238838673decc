"""Fixtures of the board agent's tests: tiny real models and a real agent on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.board_agent.harness import RunningAgent, build_tiny_models, running_agent


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, bytes]:
    """float32 and int8 8x8 CNNs and a model that hangs the runtime, converted once per session."""
    return build_tiny_models()


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    """A real agent on 127.0.0.1 with a token, default settings and a fresh workdir."""
    with running_agent(tmp_path / "work") as running:
        yield running
