"""The exported HTML report in headless Chromium at 1280 px: no horizontal overflow, notes rendered as HTML,
charts drawn as inline SVG."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcore.lab import reports
from qcore.qtyping import Evaluation, Latency
from qcore.store import Store, sha256_bytes
from qcore.tflite.inspection import npu_verdict

pytestmark = pytest.mark.browser

NOTES = "**int8** keeps the accuracy at a *quarter* of the size.\n\n- fits the NPU\n- `uint8` for cameras"


def _report(store: Store, tiny_tflite: dict[str, bytes]) -> dict:
    """A report with long names, every table and the figures, as the dashboard exports it."""
    model_id = store.add_model(name="mobilenet_v2_1.00_224-imagenet-finetuned-on-our-own-very-long-dataset-name",
                               format="h5", sha256="m" * 64, source_path="/x.h5", input_shape=[None, 8, 8],
                               output_shape=[None, 2], keras_major=2)
    dataset_id = store.add_dataset(name="digits", source="digits", sha256="d" * 64, input_scale=1.0,
                                   input_offset=0.0, n_train=10, n_test=20, num_classes=2)
    store.set_reference(model_id, dataset_id, 0.95, 1.0, 20)
    ev = Evaluation(accuracy=0.9, top5=1.0, agreement=0.99, confusion=((9, 1), (0, 10)), n_samples=20, batched=True)
    ids = []
    for name in ("float32", "int8", "uint8"):
        vid = store.save_variant(model_id=model_id, dataset_id=dataset_id, name=name + " + 12 float layers" * (
            name == "int8"), kind="ptq", recipe=name, tflite=tiny_tflite[name], evaluation=ev,
            npu=npu_verdict(tiny_tflite[name]))
        ids.append(vid)
        for board, target in (("host", "host"), ("imx8mp-evk-lab-bench-number-one", "npu")):
            store.add_benchmark(Latency(target=target, threads=1, xnnpack=True, runs=10, warmup=2, init_ms=1.0,
                                        first_ms=900.0, min_ms=0.2, mean_ms=0.3, p50_ms=0.25, p90_ms=0.3,
                                        p99_ms=0.4, std_ms=0.01), sha256=sha256_bytes(tiny_tflite[name]),
                                board=board, variant_id=vid)
    return store.report(reports.make_report(store, "int8 for the i.MX8M Plus NPU", NOTES, ids))


def test_exported_html_fits_1280_px_and_renders_notes(browser, tmp_store: Store, tiny_tflite, tmp_path: Path) -> None:
    from dashboard.services import report_view

    path = tmp_path / "report.html"
    path.write_text(report_view.html(_report(tmp_store, tiny_tflite)))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        tab = context.new_page()
        tab.goto(path.as_uri())
        tab.locator(".fig svg").first.wait_for(timeout=60_000)
        # the charts are inline SVG: each is drawn with a real size, and the page runs no script
        sizes = tab.evaluate("[...document.querySelectorAll('.fig svg')].map(s => { const r = "
                             "s.getBoundingClientRect(); return [r.width, r.height]; })")
        assert len(sizes) >= 4 and all(w > 600 and h > 150 for w, h in sizes), sizes
        assert tab.evaluate("document.scripts.length") == 0
        assert tab.locator(".fig svg title").count() >= 6  # hover texts, as native tooltips
        # every label (long names turned 30°, the legend, titles) lies inside its drawing, none cut off
        outside = tab.evaluate("""[...document.querySelectorAll('.fig svg')].flatMap(svg => {
            const v = svg.viewBox.baseVal;
            return [...svg.querySelectorAll('text')].filter(t => {
                const b = t.getBBox(), m = t.getCTM(), s = svg.getCTM();
                const p = new DOMPoint(b.x, b.y).matrixTransform(s.inverse().multiply(m));
                const q = new DOMPoint(b.x + b.width, b.y + b.height).matrixTransform(s.inverse().multiply(m));
                return Math.min(p.x, q.x) < -1 || Math.max(p.x, q.x) > v.width + 1
                    || Math.min(p.y, q.y) < -1 || Math.max(p.y, q.y) > v.height + 1;
            }).map(t => t.textContent);
        })""")
        assert outside == []
        widths = tab.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window"
        assert tab.locator(".notes strong").first.inner_text() == "int8"
        assert tab.locator(".notes li").count() == 2 and tab.locator(".notes code").inner_text() == "uint8"
        assert "**" not in tab.locator(".notes").inner_text()
        assert tab.get_by_text("imx8mp-evk-lab-bench-number-one").count() >= 1  # the board, named
        # no cell breaks inside a number or a word ("4.06 / 4", "accurac / y (%)"): each sits on one line
        broken = tab.evaluate("""[...document.querySelectorAll('th,td')].filter(c => {
            const r = document.createRange(); r.selectNodeContents(c);
            return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1;
        }).map(c => c.innerText)""")
        assert broken == []
        # the NPU marks are words, so a host without an emoji font shows them too
        marks = tab.locator(".npu .mark").all_inner_texts()
        assert marks == ["not NPU-ready", "NPU-ready", "NPU-ready"]
        text = tab.locator("body").inner_text()
        assert not any(ch in text for ch in "✅❌"), "emoji marks need an emoji font"
    finally:
        context.close()
