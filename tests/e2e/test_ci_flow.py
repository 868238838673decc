"""A CI pipeline's use of qlab: only `qlab --server` against a fresh server, then the report in Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from qcore.lab.reports import import_bundle
from qcore.qtyping import LoadedModel
from qcore.store import Store
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.serving import ADMIN_TOKEN, REPO, qlab, running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]
# the board `make dashboard` registers for its own local agent
LOCAL_BOARD = "this machine (CPU only)"


def shape(doc: Any) -> Any:
    """A JSON document's keys, all the way down (a list by its first item): what two documents must share."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [shape(doc[0])] if doc else []
    return None


# the same command run here and on the server; what differs (ids, paths, timings) is the values, never the keys
SAME_DOCUMENT = {
    "convert": ["--recipes", "int8", "--calibration-samples", "20"],
    "debug": ["--calibration-samples", "20", "--debug-samples", "10"],
    "tune": ["--max-drop", "5", "--calibration-samples", "20", "--debug-samples", "10"],
    "qat": ["--epochs", "1", "--train-samples", "100"],
    "repair": ["--methods", "cle", "--calibration-samples", "20", "--debug-samples", "10"],
}


def test_ci_flow_with_qlab_server_only(tmp_path: Path, demo: LoadedModel, capfd: pytest.CaptureFixture[str]
                                       ) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with running_server(data) as base:
        code, converted, err = qlab(base, "convert", str(demo.path), "--data", "digits", "--recipes", "float32,int8",
                                    "--calibration-samples", "20")
        assert code == 0, err
        int8 = next(v for v in converted["variants"] if v["recipe"] == "int8")
        assert int8["status"] == "ok" and int8["accuracy"] > 0.8

        # every option reaches the job: --engine picks the engine, --out downloads the variants
        code, aeq, err = qlab(base, "convert", str(demo.path), "--data", "digits", "--recipes", "int8",
                              "--calibration-samples", "20", "--engine", "aeq", "--out", str(tmp_path / "out"))
        assert code == 0, err
        assert [(v["recipe"], v["engine"], v["status"]) for v in aeq["variants"]] == [("int8", "aeq", "ok")]
        assert (tmp_path / "out" / "int8-aeq.tflite").read_bytes()[4:8] == b"TFL3"

        code, listed, err = qlab(base, "list", "--model", str(converted["model_id"]))
        assert code == 0, err
        rows = {v["variant_id"]: v for v in listed["variants"]}
        assert rows[int8["variant_id"]]["npu_ready"] is True and rows[int8["variant_id"]]["engine"] == "tf"
        assert rows[aeq["variants"][0]["variant_id"]]["engine"] == "aeq"

        code, bench, err = qlab(base, "board", "bench", LOCAL_BOARD, f"variant:{int8['variant_id']}", "--target", "cpu",
                                "--runs", "5", "--warmup", "1")
        assert code == 0, err
        assert bench["results"][0]["timings"]["cpu"] > 0

        code, report, err = qlab(base, "report", "make", "--title", "CI nightly", "--variants",
                                 str(int8["variant_id"]), "--notes", "made by test_ci_flow")
        assert code == 0, err
        assert report["url"].startswith(base)

        # a laptop's report joins the team's lab: here the laptop's store got it from a bundle
        bundle = requests.get(f"{base}/api/v1/reports/{report['id']}/bundle",
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60).content
        with Store(tmp_path / "laptop.duckdb") as laptop:
            local_id = import_bundle(laptop, bundle)
        code, pushed, err = qlab(base, "report", "push", local_id, "--db", str(tmp_path / "laptop.duckdb"))
        assert code == 0, err
        assert pushed["id"] not in (local_id, report["id"]) and pushed["url"].startswith(base)

        # local and remote --json are one document: the same keys all the way down, for every job command
        from qcore.cli import main

        local_db = str(tmp_path / "local.duckdb")
        for command, argv in SAME_DOCUMENT.items():
            code, remote_doc, err = qlab(base, command, str(demo.path), "--data", "digits", *argv)
            assert code == 0, err
            capfd.readouterr()
            assert main([command, str(demo.path), "--data", "digits", *argv, "--db", local_db, "--json"]) == 0
            local_doc = json.loads(capfd.readouterr().out)
            assert shape(local_doc) == shape(remote_doc), command
        tflite = tmp_path / "out" / "int8-aeq.tflite"
        code, remote_doc, err = qlab(base, "bench", str(tflite), "--runs", "3", "--warmup", "1")
        assert code == 0, err
        capfd.readouterr()
        assert main(["bench", str(tflite), "--runs", "3", "--warmup", "1", "--db", local_db, "--json"]) == 0
        assert shape(json.loads(capfd.readouterr().out)) == shape(remote_doc)

        code, remote_list, err = qlab(base, "list")
        assert code == 0, err

        code, _, err = qlab(base, "convert", str(demo.path), "--data", "digits", "--recipes", "nope")
        assert code == 2 and "nope" in err and "Traceback" not in err
        code, _, err = qlab(base, "convert", str(demo.path), "--data", "digits", token="wrong-token")
        assert code == 2 and "401" in err

        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(report["url"])
                page.get_by_text("CI nightly").first.wait_for()
                page.get_by_text("made by test_ci_flow").first.wait_for()
                page.get_by_text(f"report {report['id']}").first.wait_for()
                page.locator('[data-testid="stDataFrame"]').first.wait_for()
            finally:
                browser.close()

    # the same store read here gives the same `qlab list --json` document as the server gave
    local = subprocess.run([sys.executable, "-m", "qcore.cli", "list", "--db", str(data / "qlab.duckdb"), "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout) == remote_list
