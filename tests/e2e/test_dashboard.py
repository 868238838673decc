"""The dashboard end to end in headless Chromium, against the real server, in the order a user works.

upload a model and an .npz → run recipes to completion → compare (the plot) → debugger with a
selective quantization → a CPU benchmark on the local agent → a report opened by its link in a
second browser context → the HTML export. Screenshots of the main pages go to $QLAB_SCREENSHOTS (`make screenshots`: docs/screenshots/).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import SCREENSHOTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# conversions, the debugger and board jobs run in the background; the page polls every second
JOB_TIMEOUT_MS = 180_000
state: dict[str, Any] = {}


@pytest.fixture(scope="module")
def mlp_h5(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    """A second model to upload: a small tf_keras MLP trained for a few epochs on digits."""
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([
        tf_keras.layers.InputLayer(input_shape=(8, 8)),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(32, activation="relu"),
        tf_keras.layers.Dense(10),
    ], name="mlp")
    model.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=5, verbose=0)
    path = tmp_path_factory.mktemp("upload") / "mlp.h5"
    model.save(path)
    return path


def goto(page, server: str, path: str) -> None:
    page.goto(f"{server}/{path}")
    page.wait_for_selector('[data-testid="stMain"]')


def button(page, name: str):
    return page.get_by_role("button", name=name, exact=True)


def wait_text(page, text: str | re.Pattern[str], timeout: int = JOB_TIMEOUT_MS) -> None:
    """Waits for text anywhere in the page, dataframe cells included (they sit under a canvas)."""
    page.get_by_text(text).first.wait_for(state="attached", timeout=timeout)


def upload(page, index: int, path: Path) -> None:
    page.locator('[data-testid="stFileUploader"]').nth(index).locator('input[type="file"]').set_input_files(str(path))
    wait_text(page, path.name, timeout=30_000)


def select(page, label: str, text: str) -> None:
    """Picks the option of a selectbox that contains `text` (the value sits in an input, not in text)."""
    box = page.get_by_role("combobox", name=label, exact=True).first
    box.click()
    box.fill(text)
    page.get_by_role("option", name=re.compile(re.escape(text))).first.click()
    page.wait_for_function("([el, t]) => el.value.includes(t)", arg=[box.element_handle(), text])
    page.wait_for_timeout(500)  # the rerun the choice triggers


def choose(page, widget_label: str, option: str) -> None:
    """Adds the option whose variant is `option` to a multiselect (typed first: the list is virtualised); the
    label goes on with the dataset and accuracy ("… / int8 · digits · 93.00%")."""
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text=widget_label)
    box.click()
    page.keyboard.type(option)
    # Playwright sends a regex as /source/: a bare "/" inside would end it
    pattern = re.compile(re.escape(option).replace("/", "\\/") + "( · |$)")
    page.get_by_role("option", name=pattern).first.click()
    page.keyboard.press("Escape")


def shot(page, name: str, height: int = 1800) -> None:
    """Saves a screenshot of the whole page (Streamlit scrolls inside, so the viewport is made tall)."""
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(1500)  # plotly draws after the script finishes
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_first_start_converts_the_demo(page, server: str) -> None:
    goto(page, server, "")
    wait_text(page, "Best variant per model")
    # the bootstrap job converts every recipe of the demo model in the background
    wait_text(page, "demo-digits-cnn")
    wait_text(page, re.compile(r"^demo$"))


def test_upload_npz_and_model(page, server: str, mlp_h5: Path, digits_npz: Path) -> None:
    goto(page, server, "models")
    upload(page, 0, mlp_h5)
    page.get_by_label("name (optional)").first.fill("uploaded-mlp")
    button(page, "Add model").click()
    wait_text(page, re.compile(r"model #\d+ stored"))
    upload(page, 1, digits_npz)
    button(page, "Add dataset").click()
    wait_text(page, re.compile(r"dataset #\d+ stored"))
    wait_text(page, "uploaded-mlp")
    shot(page, "models", 1400)


def test_run_recipes_to_completion(page, server: str) -> None:
    goto(page, server, "quantize")
    select(page, "model", "uploaded-mlp")
    # float32 and int8 are ticked by default; add one more
    page.get_by_label("int8-fallback", exact=True).check(force=True)
    button(page, "Run").click()
    wait_text(page, re.compile(r"job #\d+ \(convert\) finished"))
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for()
    shot(page, "quantize", 1500)


def test_compare_shows_the_plot(page, server: str) -> None:
    goto(page, server, "compare")
    page.locator(".js-plotly-plot").nth(2).wait_for(timeout=60_000)
    assert page.locator(".js-plotly-plot").count() >= 3
    wait_text(page, "Pareto front")
    assert page.get_by_text("accuracy vs size (KiB)").count() >= 1
    shot(page, "compare", 2600)


def test_debugger_selective_quantization(page, server: str) -> None:
    goto(page, server, "debugger")
    select(page, "model", "uploaded-mlp")
    page.get_by_label("debug samples").fill("30")
    button(page, "Run debugger").click()
    wait_text(page, re.compile(r"job #\d+ \(debug\) finished"))
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    page.get_by_label("also the first K layers").fill("1")
    page.get_by_label("also the first K layers").press("Enter")
    run = button(page, "Run selective quantization")
    page.wait_for_function("b => !b.disabled", arg=run.element_handle(), timeout=30_000)
    run.click()
    wait_text(page, re.compile(r"job #\d+ \(selective\) finished"))
    wait_text(page, re.compile(r"float layer"))
    shot(page, "debugger", 2600)


def test_layers_cost_vs_error(page, server: str) -> None:
    goto(page, server, "layers")
    box = page.get_by_role("combobox", name="variant", exact=True).first
    box.click()
    box.fill("uploaded-mlp")
    # Playwright sends a regex as /source/: the "/" in "model / variant" must be escaped
    page.get_by_role("option", name=re.compile(r"uploaded-mlp \/ int8( · |$)")).first.click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    wait_text(page, "Cost vs error: high and left")
    wait_text(page, re.compile(r"total [0-9.]+ ms · error from debugger run #\d+"))
    download = button(page, "Download node data (zip)")
    download.first.wait_for(timeout=60_000)  # rendered after the figure and the table
    assert download.count() == 1
    shot(page, "layers", 2000)


def test_cpu_benchmark_on_the_local_agent(page, server: str) -> None:
    goto(page, server, "boards")
    wait_text(page, "this machine (CPU only)")
    choose(page, "variants", "uploaded-mlp / int8")
    button(page, "Benchmark").click()
    wait_text(page, re.compile(r"job #\d+ \(board_bench\) finished"))
    page.locator(".js-plotly-plot").first.wait_for()
    results = page.locator('[data-testid="stDataFrame"]').filter(has_text="p50_ms")
    results.first.wait_for()
    shot(page, "boards", 2000)


def test_report_link_in_a_second_browser(page, server: str, browser) -> None:
    goto(page, server, "reports")
    page.get_by_label("title").fill("uploaded MLP: float32 vs int8")
    page.get_by_label("notes (markdown)").fill("int8 keeps the accuracy at a quarter of the size.")
    choose(page, "variants", "uploaded-mlp / float32")
    choose(page, "variants", "uploaded-mlp / int8")
    button(page, "Make report").click()
    link = page.locator('a[href*="?report="]').first
    link.wait_for()
    href = link.get_attribute("href")
    assert href and re.search(r"\?report=[\w-]+$", href)
    state["report_url"] = href

    other = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    try:
        tab = other.new_page()
        tab.set_default_timeout(60_000)
        tab.goto(href)
        wait_text(tab, "uploaded MLP: float32 vs int8", timeout=60_000)
        wait_text(tab, "read-only")
        tab.locator(".js-plotly-plot").first.wait_for()
        assert tab.get_by_text("Make a report").count() == 0  # the read-only view has no editing form
        shot(tab, "report", 2600)
    finally:
        other.close()


def test_download_html_export(page, server: str, tmp_path: Path) -> None:
    page.goto(state["report_url"])
    wait_text(page, "uploaded MLP: float32 vs int8")
    with page.expect_download() as info:
        button(page, "Download HTML").click()
    path = tmp_path / "report.html"
    info.value.save_as(path)
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "uploaded MLP: float32 vs int8" in html
    # the charts are inline SVG: no script, no plotly.js, nothing fetched, so it works offline and prints
    assert html.count("<svg") >= 4 and "<script" not in html


def test_screenshots_of_the_other_pages(page, server: str) -> None:
    for path, name, height, wait_for in (
        ("", "overview", 1500, "Best variant per model"),
        ("inspect", "inspect", 1800, "i.MX8M Plus NPU lint"),
        ("math", "math", 1500, "tflite_convert's mean / std_dev"),
    ):
        goto(page, server, path)
        wait_text(page, wait_for)
        shot(page, name, height)
    goto(page, server, "qat")
    select(page, "model", "uploaded-mlp")
    page.get_by_label("epochs").fill("3")
    button(page, "Train").click()
    wait_text(page, re.compile(r"job #\d+ \(qat\) finished"))
    page.locator(".js-plotly-plot").first.wait_for()
    shot(page, "qat", 1500)
    assert np.all([(SCREENSHOTS / f"{n}.png").stat().st_size > 10_000 for n in
                   ("overview", "models", "quantize", "compare", "debugger", "boards", "report", "inspect",
                    "math", "qat")])
