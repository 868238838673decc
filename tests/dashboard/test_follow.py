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


def test_board_job_reasons_grouped_one_line_per_reason() -> None:
    """8 NPU cells unavailable for the same reason read as one line naming the 8 variants, not 8 warnings."""
    from dashboard.services import boards_view

    npu = [{"variant_id": v, "target": "npu", "board": "imx", "reason": "VX delegate not found"} for v in range(1, 9)]
    profile = [{"variant_id": 3, "target": "cpu", "board": "imx", "reason": "timed, but no per-op profile: x"}]
    lines = boards_view.reason_lines(npu + profile)
    assert lines == ["npu on imx: VX delegate not found (variants #1, #2, #3, #4, #5, #6, #7, #8)",
                     "cpu on imx: timed, but no per-op profile: x (variant #3)"]
