"""Bring your own .tflite in headless Chromium: upload a file and its float reference, then inspect it."""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_dashboard import button, goto, select, upload, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# the Models page's uploaders in page order: Keras model, dataset, .tflite, float reference
TFLITE_UPLOADER, REFERENCE_UPLOADER = 2, 3


def test_import_a_tflite_with_its_reference(page, server: str, tiny_tflite, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("byo-e2e")
    quant, ref = folder / "zoo_int8.tflite", folder / "zoo_float32.tflite"
    quant.write_bytes(tiny_tflite["int8"])
    ref.write_bytes(tiny_tflite["float32"])
    goto(page, server, "models")
    upload(page, TFLITE_UPLOADER, quant)
    upload(page, REFERENCE_UPLOADER, ref)
    page.get_by_label("model name (optional)").fill("zoo classifier")
    button(page, "Import .tflite").click()
    wait_text(page, re.compile(r"job #\d+ \(import_tflite\) finished"))
    wait_text(page, "zoo classifier")
    goto(page, server, "inspect")
    select(page, "variant", "zoo_int8")
    wait_text(page, "integer-only")
