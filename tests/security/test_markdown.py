"""User text inside the dashboard's markdown stays text: a report title cannot become a link."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from dashboard.services.lab import Lab
from dashboard.ui import md
from tests.dashboard.conftest import empty_lab, page  # noqa: F401 - fixtures

EVIL = "[click me](http://evil.example/steal) $\\pi$ :red[alarm] <b>x</b> **bold**"


def _markdown(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown] + [t.value for t in at.title]


def test_md_escapes_link_and_directives() -> None:
    out = md(EVIL)
    assert "](http" not in out.replace("\\]", "")
    assert out.count("\\[") == 2 and "\\$" in out and "\\<b\\>" in out


def test_report_title_is_not_a_link(empty_lab: Lab, page: Callable[..., AppTest]) -> None:  # noqa: F811
    report_id = empty_lab.store.save_report(EVIL, "", {"variants": []})
    for at in (page("reports"), page("reports", query={"report": report_id})):
        assert not at.exception
        shown = _markdown(at)
        assert any("click me" in t for t in shown)
        for text in shown:
            assert "[click me](" not in text  # escaped: \[click me\](…) shows as text, not a link
            assert "$\\pi$" not in text and ":red[" not in text
