"""The lab as a new user meets it on a MobileNetV2-sized model, in headless Chromium: the README's screenshots.

A MobileNetV2 (alpha 0.35, 32×32×3, 64 quantized layers) built offline and trained briefly on digits32 goes
through a fresh server the way a CI script drives it (`qlab --server`): every recipe on the TF converter, int8 on
AI Edge Quantizer, the debugger on both engines, a CPU benchmark on the local agent, a short QAT run and a report.
Then each page is opened in Chromium, checked for what a user reads there, and photographed.

Opt-in (several minutes on 2 cores): `QLAB_MOBILENET=1`; `make screenshots` runs it with
QLAB_SCREENSHOTS=docs/screenshots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.services.lab import LOCAL_BOARD
from qcore.inputs.data import Dataset, save_npz
from tests.conftest import train_mnv2
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS
from tests.e2e.serving import qlab, running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(os.environ.get("QLAB_MOBILENET") != "1",
                                 reason="the MobileNetV2-sized tour (minutes): set QLAB_MOBILENET=1")]

TIMEOUT_MS = 120_000
state: dict[str, Any] = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, digits32: Dataset) -> Path:
    """MobileNetV2 (alpha 0.35, 32×32×3, 10 classes) trained 10 epochs on digits32 (about a minute): a model a
    user would bring, unlike the suite's one-epoch fixture, so the pages show real accuracy."""
    return train_mnv2(digits32, tmp_path_factory.mktemp("mnv2-model") / "mnv2-035.h5", epochs=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, trained: Path, digits32: Dataset) -> Iterator[str]:
    """A fresh server whose lab holds the MobileNetV2 session's work, made through `qlab --server`."""
    files = tmp_path_factory.mktemp("mnv2-files")
    data_file = files / "digits32.npz"
    save_npz(digits32, data_file)
    data = tmp_path_factory.mktemp("mnv2-lab")
    with running_server(data, QLAB_WORKERS="1") as base:
        model = str(trained)
        code, tf, err = qlab(base, "convert", model, "--data", str(data_file), "--recipes",
                             "float32,dynamic,float16,int8,int8-fallback,int16x8")
        assert code == 0, err
        state["variants"] = {v["recipe"]: v for v in tf["variants"]}
        assert state["variants"]["float32"]["accuracy"] > 0.6, "the tour's model did not learn digits32"
        state["model_id"] = tf["model_id"]
        code, aeq, err = qlab(base, "convert", model, "--data", str(data_file), "--recipes", "int8,int16x8",
                              "--engine", "aeq")
        assert code == 0, err
        code, debug, err = qlab(base, "debug", model, "--data", str(data_file), "--recipe", "int8",
                                "--debug-samples", "50")
        assert code == 0, err
        state["debug"] = debug
        code, _, err = qlab(base, "debug", model, "--data", str(data_file), "--recipe", "int8",
                            "--debug-samples", "50", "--engine", "aeq")
        assert code == 0, err
        for v in tf["variants"] + aeq["variants"]:
            code, _, err = qlab(base, "bench", f"variant:{v['variant_id']}", "--runs", "30", "--warmup", "3")
            assert code == 0, err
        for recipe in ("float32", "int8"):
            code, _, err = qlab(base, "board", "bench", LOCAL_BOARD, f"variant:{state['variants'][recipe]['variant_id']}",
                                "--target", "cpu", "--runs", "20", "--warmup", "3")
            assert code == 0, err
        code, _, err = qlab(base, "qat", model, "--data", str(data_file), "--epochs", "2", "--train-samples", "512",
                            "--int-io")
        assert code == 0, err
        ids = [str(v["variant_id"]) for v in tf["variants"] + aeq["variants"]]
        code, report, err = qlab(base, "report", "make", "--variants", ",".join(ids),
                                 "--title", "MobileNetV2 0.35 on digits32: what ships on the NPU",
                                 "--notes", "Every post-training recipe on both engines, the debugger, a CPU run.")
        assert code == 0, err
        state["report"] = report
        yield base


@pytest.fixture(scope="module")
def page(lab: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        try:
            yield tab
        finally:
            browser.close()


def visit(page: Any, base: str, path: str) -> None:
    page.goto(f"{base}/{path}")
    page.wait_for_selector('[data-testid="stMain"]')


def wait_text(page: Any, text: str | re.Pattern[str]) -> None:
    page.get_by_text(text).first.wait_for(state="attached")


def shot(page: Any, name: str, height: int) -> Path:
    """The whole page at 1440 px wide (Streamlit scrolls inside, so the viewport is made tall)."""
    page.set_viewport_size({"width": 1440, "height": height})
    page.wait_for_timeout(2000)  # plotly draws after the script finishes
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1440, "height": 900})
    assert path.stat().st_size > 20_000
    return path


def test_overview_names_the_npu_pick(page: Any, lab: str) -> None:
    visit(page, lab, "")
    wait_text(page, "Best variant per model")
    wait_text(page, "mnv2-035")
    shot(page, "overview", 1500)


def test_models(page: Any, lab: str) -> None:
    visit(page, lab, "models")
    wait_text(page, "digits32")
    shot(page, "models", 1500)


def test_quantize_results(page: Any, lab: str) -> None:
    visit(page, lab, "quantize")
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    shot(page, "quantize", 1600)


def test_compare_picks_what_ships_on_the_npu(page: Any, lab: str) -> None:
    visit(page, lab, "compare")
    page.locator(".js-plotly-plot").nth(1).wait_for()
    wait_text(page, "Which one do I ship on the NPU?")
    shot(page, "compare", 2600)


def test_debugger_on_64_layers(page: Any, lab: str) -> None:
    visit(page, lab, "debugger")
    page.locator(".js-plotly-plot").first.wait_for()
    wait_text(page, re.compile(r"block_\d+_"))
    shot(page, "debugger", 2600)


def test_boards(page: Any, lab: str) -> None:
    visit(page, lab, "boards")
    wait_text(page, LOCAL_BOARD)
    page.locator(".js-plotly-plot").first.wait_for()
    shot(page, "boards", 2000)


def test_qat(page: Any, lab: str) -> None:
    visit(page, lab, "qat")
    page.locator(".js-plotly-plot").first.wait_for()
    shot(page, "qat", 1600)


def test_inspect_and_math(page: Any, lab: str) -> None:
    visit(page, lab, "inspect")
    wait_text(page, "i.MX8M Plus NPU lint")
    shot(page, "inspect", 1800)
    visit(page, lab, "math")
    wait_text(page, "tflite_convert's mean / std_dev")
    shot(page, "math", 1500)


def test_report_link(page: Any, lab: str) -> None:
    page.goto(state["report"]["url"])
    wait_text(page, "what ships on the NPU")
    page.locator(".js-plotly-plot").first.wait_for()
    shot(page, "report", 2600)
