"""Bring your own .tflite in the dashboard: upload on the Models page, then Compare, Inspect, Debugger, Boards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.services import reads, uploads
from dashboard.services.lab import LOCAL_BOARD, Lab
from qcore.jobs.contract import BoardAccuracyParams, BoardBenchParams, HostBenchParams
from qcore.qtyping import JobStatus, QlabError
from tests.dashboard.conftest import plotly_specs, run_job, texts, values
from tests.dashboard.test_tasks import local_agent  # noqa: F401  (fixture: the real agent on loopback)

REPO = Path(__file__).resolve().parents[2]


def _no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _by_label(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def _wait_for_import(the_lab: Lab) -> None:
    job = the_lab.store.jobs(limit=1, kind="import_tflite")[0]
    the_lab.runner.wait(job.id, timeout=300)
    reads.clear()


@pytest.fixture()
def imported(empty_lab: Lab, tiny_tflite: dict[str, bytes]) -> Lab:
    """An empty lab with digits and the demo's int8 .tflite imported with its float32 .tflite as reference."""
    dataset_id = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    uploads.add_tflite(empty_lab, "cnn_int8.tflite", tiny_tflite["int8"],
                       reference=("cnn_float32.tflite", tiny_tflite["float32"]), dataset_id=dataset_id)
    _wait_for_import(empty_lab)
    job = empty_lab.store.jobs(limit=1, kind="import_tflite")[0]
    assert job.status is JobStatus.DONE, job.error
    return empty_lab


def test_models_page_upload_tflite_with_reference(empty_lab: Lab, page, tiny_tflite: dict[str, bytes]) -> None:
    dataset_id = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    at = page("models")
    at.file_uploader(key="models_tflite_file").set_value(("cnn_int8.tflite", tiny_tflite["int8"], "application/octet-stream"))
    at.file_uploader(key="models_tflite_reference").set_value(
        ("cnn_float32.tflite", tiny_tflite["float32"], "application/octet-stream"))
    at.text_input(key="models_tflite_name").set_value("digits cnn")
    at.selectbox(key="models_tflite_dataset").set_value(dataset_id)
    _by_label(at.button, "Import .tflite").click().run()
    _no_traceback(at)
    _wait_for_import(empty_lab)
    at.run()
    _no_traceback(at)
    assert any("import_tflite) finished" in t for t in texts(at, "success")), texts(at, "error")
    shown = " ".join(texts(at, "markdown"))
    assert "digits cnn" in shown and "top-1 vs labels" in shown and "accuracy" in shown
    models = empty_lab.store.models()
    assert models["format"].tolist() == ["tflite"] and models["name"].tolist() == ["digits cnn"]
    rows = empty_lab.store.variant_summary()
    assert set(rows["variant"]) == {"cnn_int8", "cnn_float32 (reference)"}
    assert (rows["accuracy"] > 0.8).all() and (rows["kind"] == "imported").all()
    # the stored models table shows it as tflite-only
    assert "tflite" in set(at.dataframe[0].value["format"])


def test_models_page_refuses_a_file_that_is_not_tflite(empty_lab: Lab, page) -> None:
    at = page("models")
    at.file_uploader(key="models_tflite_file").set_value(("notes.tflite", b"plain text, no flatbuffer",
                                                          "application/octet-stream"))
    _by_label(at.button, "Import .tflite").click().run()
    _no_traceback(at)
    assert any(t.startswith("could not import notes.tflite: notes.tflite: not a TFLite model")
               for t in texts(at, "error"))
    assert empty_lab.store.jobs(kind="import_tflite") == [] and empty_lab.store.models().empty


def test_add_tflite_wrong_suffix_and_empty(empty_lab: Lab, tiny_tflite: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match=r"model.onnx: a \.tflite model must be one of \.tflite"):
        uploads.add_tflite(empty_lab, "model.onnx", tiny_tflite["int8"])
    with pytest.raises(QlabError, match="ref.tflite: the file is empty"):
        uploads.add_tflite(empty_lab, "m.tflite", tiny_tflite["int8"], reference=("ref.tflite", b""))
    assert empty_lab.store.jobs(kind="import_tflite") == []


def test_add_tflite_refused_by_its_job_leaves_no_upload(empty_lab: Lab) -> None:
    """A file with the TFL3 identifier but no model behind it passes the cheap checks; its import job
    fails, and nothing of it stays under uploads/ (the job carried the bytes)."""
    garbage = b"\x00\x00\x00\x00TFL3" + b"\xff" * 200
    job_id = uploads.add_tflite(empty_lab, "broken.tflite", garbage)
    empty_lab.runner.wait(job_id, timeout=120)
    assert empty_lab.store.job(job_id).status.value == "failed"
    assert list((empty_lab.data_dir / "uploads").glob("*")) == []


def test_upload_checks_do_not_load_litert_or_tensorflow() -> None:
    code = ("import sys; from dashboard.services import uploads; from qcore.lab.import_tflite import check_tflite_bytes;"
            "check_tflite_bytes(b'\\x1c\\0\\0\\0TFL3' + bytes(8), 'x.tflite');"
            "print(sorted(m for m in ('ai_edge_litert.interpreter', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_import_task_custom_op_refusal_shown_in_words(empty_lab: Lab, page, foreign_tflite) -> None:
    uploads.add_tflite(empty_lab, "custom.tflite", foreign_tflite["custom"])
    _wait_for_import(empty_lab)
    at = page("models")
    _no_traceback(at)
    assert any("custom op BesselI1e" in t for t in texts(at, "warning"))
    vid = int(empty_lab.store.variant_summary()["variant_id"].iloc[0])
    at = page("inspect")
    at.selectbox(key="inspect_variant").set_value(vid).run()
    _no_traceback(at)
    assert any("BesselI1e" in t for t in texts(at, "error"))  # the lint's custom-op finding
    job = run_job(empty_lab, HostBenchParams(variant_ids=(vid,), runs=3))
    assert job.status is JobStatus.FAILED and "custom op BesselI1e" in job.error


# ---------------------------------------------------------------- the variant on the other pages
def test_imported_variant_in_compare_and_inspect(imported: Lab, page) -> None:
    ids = [int(v) for v in imported.store.variant_summary()["variant_id"]]
    job = run_job(imported, HostBenchParams(variant_ids=tuple(ids), runs=5, warmup=1))
    assert job.status is JobStatus.DONE, job.error
    reads.clear()
    at = page("compare")
    _no_traceback(at)
    table = at.dataframe[0].value
    assert set(table["variant"]) == {"cnn_int8", "cnn_float32 (reference)"}
    assert set(table["scored by"]) == {"top-1 vs labels"}
    row = table[table["variant"] == "cnn_int8"].iloc[0]
    assert row["agreement (%)"] > 90 and abs(row["Δ vs float (points)"]) < 5
    assert (table["host p50 (ms)"] > 0).all()
    at = page("inspect")
    int8 = int(imported.store.variant_summary().query("variant == 'cnn_int8'")["variant_id"].iloc[0])
    at.selectbox(key="inspect_variant").set_value(int8).run()
    _no_traceback(at)
    assert next(m for m in at.metric if m.label == "verdict").value == "integer-only"


def test_imported_variants_tensor_comparison_on_debugger(imported: Lab, page) -> None:
    at = page("debugger")
    _no_traceback(at)
    _by_label(at.button, "Compare tensors").click().run()
    job = imported.store.jobs(limit=1, kind="compare_tensors")[0]
    imported.runner.wait(job.id, timeout=300)
    reads.clear()
    at.run()
    _no_traceback(at)
    job = imported.store.job(job.id)
    assert job.status is JobStatus.DONE, job.error
    assert "cnn_float32 (reference)" in job.result["float"] and "cnn_int8" in job.result["quant"]
    titles = {json.dumps(s["layout"].get("title", "")): s for s in plotly_specs(at)}
    act = next(s for t, s in titles.items() if "activations: worst" in t)
    assert len(values(act["data"][0]["y"])) >= 2


def test_non_classifier_scored_by_mse_in_compare(empty_lab: Lab, page, foreign_tflite) -> None:
    dataset_id = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    uploads.add_tflite(empty_lab, "landmarks_int8.tflite", foreign_tflite["two_int8"],
                       reference=("landmarks_float.tflite", foreign_tflite["two_float"]), dataset_id=dataset_id)
    _wait_for_import(empty_lab)
    at = page("models")
    _no_traceback(at)
    assert any("MSE vs reference" in t for t in texts(at, "markdown"))
    assert any("2 outputs" in t and "not by top-1" in t for t in texts(at, "warning"))
    at = page("compare")
    _no_traceback(at)
    table = at.dataframe[0].value.set_index("variant")
    assert table.loc["landmarks_int8", "scored by"] == "MSE vs reference"
    assert 0 < table.loc["landmarks_int8", "output MSE"] < 0.05
    assert pd.isna(table.loc["landmarks_int8", "accuracy (%)"])


def test_imported_variant_on_the_board_agent(imported: Lab, local_agent, monkeypatch) -> None:  # noqa: F811
    from dashboard.services import lab as lab_mod
    from dashboard.services.lab import register_local_agent

    url, token_file = local_agent
    monkeypatch.setenv(lab_mod.ENV_AGENT_URL, url)
    monkeypatch.setenv(lab_mod.ENV_AGENT_TOKEN_FILE, str(token_file))
    assert register_local_agent(imported)
    vid = int(imported.store.variant_summary().query("variant == 'cnn_int8'")["variant_id"].iloc[0])
    job = run_job(imported, BoardBenchParams(board=LOCAL_BOARD, variant_ids=(vid,), targets=("cpu",), runs=5,
                                              warmup=1))
    assert job.status is JobStatus.DONE, job.error
    assert (imported.store.benchmarks(variant_ids=[vid], board=LOCAL_BOARD)["p50_ms"] > 0).all()
    job = run_job(imported, BoardAccuracyParams(board=LOCAL_BOARD, variant_ids=(vid,), target="cpu"))
    assert job.status is JobStatus.DONE, job.error
    evals = imported.store.device_evaluations([vid]).set_index("device")
    assert evals.loc[f"board:{LOCAL_BOARD}/cpu", "accuracy"] == pytest.approx(evals.loc["host", "accuracy"])


def test_board_accuracy_of_a_variant_without_data_says_so(empty_lab: Lab, tiny_tflite) -> None:
    uploads.add_tflite(empty_lab, "bare.tflite", tiny_tflite["uint8"])
    _wait_for_import(empty_lab)
    vid = int(empty_lab.store.variant_summary()["variant_id"].iloc[0])
    empty_lab.store.add_board("b", "http://127.0.0.1:9", None)
    job = run_job(empty_lab, BoardAccuracyParams(board="b", variant_ids=(vid,), target="cpu"))
    assert job.status is JobStatus.FAILED and "has no dataset" in job.error and "bare" in job.error


def test_tensor_comparison_across_models(empty_lab: Lab, page, tiny_tflite: dict[str, bytes]) -> None:
    dataset_id = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    for name in ("float32", "int8"):  # two separate tflite-only models, no reference between them
        uploads.add_tflite(empty_lab, f"other_{name}.tflite", tiny_tflite[name], dataset_id=dataset_id)
        _wait_for_import(empty_lab)
    rows = empty_lab.store.variant_summary().set_index("variant")
    assert rows.loc["other_float32", "model_id"] != rows.loc["other_int8", "model_id"]
    at = page("debugger")
    at.toggle(key="debugger_cmp_any").set_value(True).run()
    at.selectbox(key="debugger_cmp_float").set_value(int(rows.loc["other_float32", "variant_id"])).run()
    at.selectbox(key="debugger_cmp_quant").set_value(int(rows.loc["other_int8", "variant_id"])).run()
    _by_label(at.button, "Compare tensors").click().run()
    job = empty_lab.store.jobs(limit=1, kind="compare_tensors")[0]
    empty_lab.runner.wait(job.id, timeout=300)
    job = empty_lab.store.job(job.id)
    assert job.status is JobStatus.DONE, job.error
    assert "other_float32" in job.result["float"] and "other_int8" in job.result["quant"]
    assert len(job.result["matched"]) >= 2
