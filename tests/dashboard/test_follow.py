"""Pages follow their jobs: a newer result is selected once when it appears; a write's message survives a rerun."""

from __future__ import annotations

from dashboard.services import follow


def test_follow_newest_selects_a_result_that_appeared_once() -> None:
    state: dict[str, object] = {}
    assert not follow.follow_newest(state, 1, "boards_run", "seen")  # first look: the page's own default
    state["boards_run"] = 1  # the user's choice (or the widget's)
    assert not follow.follow_newest(state, 1, "boards_run", "seen") and state["boards_run"] == 1
    # a 24-cell matrix ends: run 2 is shown, not run 1
    assert follow.follow_newest(state, 2, "boards_run", "seen") and state["boards_run"] == 2
    # the user goes back to run 1: it stays until another run appears
    state["boards_run"] = 1
    assert not follow.follow_newest(state, 2, "boards_run", "seen") and state["boards_run"] == 1
    assert not follow.follow_newest(state, None, "boards_run", "seen")


def test_flash_is_shown_once() -> None:
    state: dict[str, object] = {}
    follow.flash(state, "k", "board 'imx' registered")
    assert follow.take_flash(state, "k") == "board 'imx' registered"
    assert follow.take_flash(state, "k") == ""
