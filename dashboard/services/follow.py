"""Pages that follow their jobs: the newest result is shown when it appears, and a write's message survives the rerun
that refreshes the lists above it."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def follow_newest(state: MutableMapping[str, Any] | Any, newest: int | None, key: str, seen_key: str) -> bool:
    """Selects `newest` in the selectbox `key` when it appeared since the page last looked.

    A selectbox keeps its choice across reruns; without this a page stays on the previous result
    after a job ends (a debugger run, a board matrix), until it is reopened.

    Returns:
        True when the newest was just selected (the selectbox then opens on position 0).
    """
    if newest is None:
        return False
    seen = state.get(seen_key)
    state[seen_key] = int(newest)
    if seen is not None and int(newest) != seen:
        state[key] = int(newest)
        return True
    return False


def flash(state: MutableMapping[str, Any] | Any, key: str, message: str) -> None:
    """Keeps a success message for the next run: the page reruns so the lists above the form show the new row."""
    state[key] = message


def take_flash(state: MutableMapping[str, Any] | Any, key: str) -> str:
    """The message a write left for this run, once ("" when none)."""
    return str(state.pop(key, "") or "")
