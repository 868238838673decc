"""A page on a full disk: the action is refused in words (what could not be written, and why), with no
traceback, nothing half-stored, and the same action working once there is room again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.services.lab import Lab, close, lab
from tests.dashboard.conftest import point_env, texts
from tests.disk import fill, small_disk


@pytest.fixture()
def lab_on_small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """A fresh lab whose data dir (and database) sit on a 32 MB tmpfs."""
    with small_disk(tmp_path / "disk", size_mb=32) as disk:
        point_env(monkeypatch, disk)
        the_lab = lab()
        try:
            yield the_lab
        finally:
            close(the_lab)


def test_models_page_on_a_full_disk_says_so(lab_on_small_disk: Lab, page: Callable[..., AppTest]) -> None:
    ballast = fill(lab_on_small_disk.data_dir)
    at = page("models")
    next(b for b in at.button if b.label == "Add built-in digits").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [t for t in texts(at, "error") if "the disk is full" in t]
    assert errors and "qlab.duckdb" in errors[0], texts(at, "error")
    assert lab_on_small_disk.store.datasets().empty
    ballast.unlink()
    next(b for b in at.button if b.label == "Add built-in digits").click().run()
    assert lab_on_small_disk.store.datasets()["source"].tolist() == ["digits"]
