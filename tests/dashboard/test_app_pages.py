"""Each page's logic through AppTest, against a temporary store: widgets → one call → render."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.services import reads
from dashboard.services.lab import Lab, lab
from qcore.jobs.contract import ConvertParams, DebugParams, DemoParams
from qcore.lab import reports
from qcore.qtyping import JobStatus, LoadedModel
from tests.dashboard.conftest import PAGE_TIMEOUT_S, plotly_specs, point_env, run_job, texts, values

APP = Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py"


def _no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _by_label(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def _variant_id(the_lab: Lab, name: str) -> int:
    df = the_lab.store.variant_summary()
    return int(df[df["variant"] == name]["variant_id"].iloc[0])


# ---------------------------------------------------------------- overview
def test_overview_empty_store_says_how_to_start(empty_lab: Lab, page) -> None:
    at = page("overview")
    _no_traceback(at)
    assert any("No converted variant yet" in t for t in texts(at, "info"))
    assert [m.value for m in at.metric][:2] == ["0", "0"]


def test_overview_best_variant_per_model(converted: Lab, page) -> None:
    at = page("overview")
    _no_traceback(at)
    best = at.dataframe[0].value
    assert best["model"].tolist() == ["demo-digits-cnn"]
    assert best["most accurate"].iloc[0] in set(converted.store.variant_summary()["variant"])
    # the NPU pick beside it: an NPU-ready variant of the demo (int8 or uint8 are within a point of float)
    summary = converted.store.variant_summary().set_index("variant")
    assert bool(summary.at[best["best for the NPU"].iloc[0], "npu_ready"])
    jobs = at.dataframe[1].value
    assert "demo" in set(jobs["kind"])


# ---------------------------------------------------------------- models
def test_models_upload_model_and_dataset(empty_lab: Lab, page, demo_h5: Path, digits_npz: Path) -> None:
    at = page("models")
    at.file_uploader(key="models_model_file").set_value(("demo.h5", demo_h5.read_bytes(), "application/x-hdf5"))
    at.text_input(key="models_model_name").set_value("my cnn")
    _by_label(at.button, "Add model").click().run()
    _no_traceback(at)
    assert any("model #1 stored" in t for t in texts(at, "success"))
    at.file_uploader(key="models_data_file").set_value(("digits.npz", digits_npz.read_bytes(), "application/zip"))
    at.number_input(key="models_data_scale").set_value(0.5)
    _by_label(at.button, "Add dataset").click().run()
    _no_traceback(at)
    assert any("dataset #1 stored" in t for t in texts(at, "success"))
    assert empty_lab.store.model(1)["name"] == "my cnn"
    at = page("models")  # the summary, read from the file without loading the model
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["layers"]) >= 3 and metrics["BatchNormalization"] == "0"
    assert int(metrics["parameters"].replace(",", "")) > 0
    assert empty_lab.store.dataset(1)["input_scale"] == 0.5
    assert at.dataframe[0].value["name"].tolist() == ["my cnn"]


def test_models_and_quantize_warn_when_the_dataset_does_not_fit(empty_lab: Lab, page) -> None:
    from dashboard.services import uploads

    empty_lab.store.add_model(name="tiny", format="h5", sha256="t" * 64, source_path="/nowhere.h5",
                              input_shape=[None, 4, 4], output_shape=[None, 3], keras_major=2)
    uploads.add_digits(empty_lab, input_scale=255.0, input_offset=0.0)  # digits are stored in [0, 1]
    reads.clear()
    at = page("models")
    _no_traceback(at)
    errors = texts(at, "error")
    assert any("samples of shape (8, 8) but model 'tiny' expects (4, 4)" in t for t in errors)
    assert any("labels 0..9 but model 'tiny' has only 3 outputs" in t for t in errors)
    assert any("inputs reach [0, 255] after x · 255 + 0" in t for t in texts(at, "warning")), texts(at, "warning")
    assert at.dataframe[0].value["sha256"].str.len().max() == 12
    quantize = page("quantize")  # warned before a job is started, not after it fails
    assert any("samples of shape (8, 8)" in t for t in texts(quantize, "error"))


def test_models_wrong_scale_dataset_is_warned_not_called_a_fit(empty_lab: Lab, page) -> None:
    """A dataset whose shape and labels fit but whose scale is wrong gets the warning and no green "fits"."""
    from dashboard.services import uploads

    empty_lab.store.add_model(name="digits-cnn", format="h5", sha256="c" * 64, source_path="/nowhere.h5",
                              input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    uploads.add_digits(empty_lab, input_scale=255.0, input_offset=0.0)
    reads.clear()
    at = page("models")
    _no_traceback(at)
    assert any("inputs reach [0, 255]" in t for t in texts(at, "warning"))
    assert "the dataset fits the model" not in texts(at, "success")
    assert any(t.startswith("shape and labels fit the model; read the warning above") for t in texts(at, "info"))


def test_models_garbage_model_shows_error_in_words(empty_lab: Lab, page) -> None:
    at = page("models")
    at.file_uploader(key="models_model_file").set_value(("broken.h5", b"not hdf5 at all", "application/x-hdf5"))
    _by_label(at.button, "Add model").click().run()
    _no_traceback(at)
    assert any(t.startswith("could not add broken.h5: broken.h5: cannot read this model") for t in texts(at, "error"))
    assert empty_lab.store.models().empty


def test_models_submit_without_file(empty_lab: Lab, page) -> None:
    at = page("models")
    _by_label(at.button, "Add model").click().run()
    assert "choose a model file first" in texts(at, "error")


def test_models_builtin_digits(empty_lab: Lab, page) -> None:
    at = page("models")
    _by_label(at.button, "Add built-in digits").click().run()
    _no_traceback(at)
    assert empty_lab.store.datasets()["source"].tolist() == ["digits"]


# ---------------------------------------------------------------- quantize
def test_quantize_run_as_job_then_result_table(converted: Lab, page) -> None:
    at = page("quantize")
    for name in ("float32", "int8"):
        at.checkbox(key=f"quantize_recipe_{name}").uncheck()
    at.checkbox(key="quantize_recipe_dynamic").check()
    at.checkbox(key="quantize_bench").uncheck()
    _by_label(at.button, "Run").click().run()
    _no_traceback(at)
    job = converted.store.jobs(limit=1)[0]
    assert job.kind == "convert" and job.params["recipes"] == ["dynamic"]
    converted.runner.wait(job.id, timeout=300)
    reads.clear()
    at.run()
    _no_traceback(at)
    assert any(f"job #{job.id} (convert) finished" in t for t in texts(at, "success"))
    assert at.dataframe[0].value["variant"].tolist() == ["dynamic"]
    # dynamic range keeps float activations: the verdict says the ops fall back to the CPU
    assert at.dataframe[0].value["NPU"].iloc[0].startswith("not NPU-ready: ")


def test_quantize_rows_appear_as_each_recipe_finishes(converted: Lab, page) -> None:
    import time

    # enough recipes that the job is still running while the page renders (a worker converts the demo fast)
    recipes = ["float16", "dynamic", "int8-per-tensor", "int8", "uint8", "int16x8", "uint8-per-tensor"]
    job_id = converted.runner.submit(ConvertParams(model_id=1, dataset_id=1, recipes=tuple(recipes), bench=False))
    seen = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = converted.store.job(job_id)
        landed = (job.live or {}).get("variants", [])  # what the worker published so far
        if job.status is JobStatus.RUNNING and 0 < len(landed) < len(recipes) - 2:
            at = page("quantize")  # the page while the other recipes still convert
            _no_traceback(at)
            if converted.store.job(job_id).status is JobStatus.RUNNING:
                seen = (len(landed), at)
            break
        if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            break
        time.sleep(0.05)
    converted.runner.wait(job_id, timeout=300)
    assert seen is not None, "the job never published a recipe's row before it ended"
    n, at = seen
    rows = next(df.value for df in at.dataframe if "NPU" in df.value.columns)
    assert len(rows) >= n and set(rows["variant"]) <= set(recipes)
    assert any(re.match(rf"\d of {len(recipes)} recipes done · .* elapsed", t) for t in texts(at, "caption"))
    reads.clear()


def test_quantize_select_all_and_clear(empty_lab: Lab, page) -> None:
    from qcore.engines import resolve_recipes

    at = page("quantize")
    _by_label(at.button, "Select all").click().run()
    assert all(at.checkbox(key=f"quantize_recipe_{n}").value for n in (r.name for r in resolve_recipes("all", "tf")))
    _by_label(at.button, "Clear").click().run()
    assert not any(at.checkbox(key=f"quantize_recipe_{n}").value for n in (r.name for r in resolve_recipes("all", "tf")))


def test_quantize_engine_aeq_runs_as_job_and_compare_shows_engine(converted: Lab, page) -> None:
    at = page("quantize")
    at.radio(key="quantize_engine").set_value("aeq").run()
    assert "quantize_recipe_weight-only" in [c.key for c in at.checkbox]  # AEQ-only recipe offered
    for name in ("float32", "int8"):
        at.checkbox(key=f"quantize_recipe_{name}").uncheck()
    at.checkbox(key="quantize_recipe_weight-only").check()
    at.checkbox(key="quantize_bench").uncheck()
    _by_label(at.button, "Run").click().run()
    _no_traceback(at)
    job = converted.store.jobs(limit=1)[0]
    assert job.kind == "convert" and job.params["engine"] == "aeq" and job.params["recipes"] == ["weight-only"]
    converted.runner.wait(job.id, timeout=300)
    reads.clear()
    at.run()
    _no_traceback(at)
    table = at.dataframe[0].value
    assert table["variant"].tolist() == ["weight-only@aeq"] and table["engine"].tolist() == ["aeq"]


def test_quantize_without_recipes(converted: Lab, page) -> None:
    at = page("quantize")
    for name in ("float32", "int8"):
        at.checkbox(key=f"quantize_recipe_{name}").uncheck()
    jobs_before = len(converted.store.jobs())
    _by_label(at.button, "Run").click().run()
    assert "choose at least one recipe" in texts(at, "error")
    assert len(converted.store.jobs()) == jobs_before


def test_quantize_failed_job_error_in_words(empty_lab: Lab, page, tmp_path: Path) -> None:
    store = empty_lab.store
    (tmp_path / "gone.h5").write_bytes(b"not an HDF5 file")  # fails on the worker that loads it
    store.add_model(name="gone", format="h5", sha256="g" * 64, source_path=str(tmp_path / "gone.h5"),
                    input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    from dashboard.services import uploads

    uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    job = run_job(empty_lab, ConvertParams(model_id=1, dataset_id=1, recipes=("int8",)))
    assert job.status is JobStatus.FAILED
    at = page("quantize")
    _no_traceback(at)
    assert any("gone.h5" in t and "qlab-job-" not in t and f"job #{job.id}" in t for t in texts(at, "error"))


def test_quantize_running_job_seen_by_every_session(empty_lab: Lab, page) -> None:
    job_id = empty_lab.store.create_job("convert", {"recipes": ["int8"]})
    empty_lab.store.update_job(job_id, status=JobStatus.RUNNING, progress=0.4, message="converting with int8 (1/1)")
    first, second = page("quantize"), page("quantize")  # a reload, or a colleague's browser
    for at in (first, second):
        _no_traceback(at)
        bars = at.get("progress")
        assert len(bars) == 1
        assert bars[0].proto.value == 40
        assert f"job #{job_id} (convert): converting with int8 (1/1)" in bars[0].proto.text


def test_quantize_reload_mid_job_keeps_the_jobs_model_and_dataset(empty_lab: Lab, page) -> None:
    """A reload while model #1 converts on dataset #1 opens on that pair, not on the newest model and the newest
    dataset picked independently, and the job's panel says which model and dataset it works on."""
    from dashboard.services import uploads

    store = empty_lab.store
    first_data = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    uploads.add_digits(empty_lab, input_scale=2.0, input_offset=0.0)  # the newest dataset, for another model
    first = store.add_model(name="mnv2-a", format="h5", sha256="a" * 64, source_path="/a.h5",
                            input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    store.add_model(name="mnv2-b", format="h5", sha256="b" * 64, source_path="/b.h5",
                    input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    job_id = store.create_job("convert", {"model_id": first, "dataset_id": first_data, "recipes": ["int8"]})
    store.update_job(job_id, status=JobStatus.RUNNING, progress=0.3, message="converting with int8 (1/1)")
    reads.clear()
    at = page("quantize")
    _no_traceback(at)
    assert at.selectbox(key="quantize_model").value == first
    assert at.selectbox(key=f"quantize_dataset_{first}").value == first_data
    assert any(t.startswith(f"model #{first} mnv2-a · dataset #{first_data} digits · running")
               for t in texts(at, "caption"))
    assert not texts(at, "error")  # a valid pair: no "every job on this pair will fail"
    store.update_job(job_id, status=JobStatus.CANCELLED)


# ---------------------------------------------------------------- compare
def test_compare_table_plots_and_confusions(converted: Lab, page) -> None:
    at = page("compare")
    _no_traceback(at)
    table = at.dataframe[0].value
    assert {"float32", "int8", "uint8"} <= set(table["variant"])
    specs = plotly_specs(at)
    names = [{t.get("name") for t in s["data"]} for s in specs]
    assert "Pareto front (labelled)" in names[0] and "Pareto front (labelled)" in names[1]
    npu = table.set_index("variant")["NPU"]
    assert npu["int8"] == "NPU-ready: integer-only" and npu["uint8"] == "NPU-ready: integer-only"
    assert npu["float32"].startswith("not NPU-ready: ") and "float ops" in npu["float32"]
    points = next(t for t in specs[0]["data"] if t["name"] == "variants")
    symbols = dict(zip([c[0].split(" / ")[-1] for c in points["customdata"]], points["marker"]["symbol"], strict=True))
    assert symbols["int8"] == "circle" and symbols["float32"] == "circle-open"
    # the NPU verdict sits next to the name, not 15th of 17 columns
    assert list(table.columns[:4]) == ["id", "model", "variant", "NPU"]
    # the pick: NPU-ready, within the budget, the smallest without board timings
    pick = next(t for t in texts(at, "success") if t.startswith("Best for the NPU: "))
    picked = pick.removeprefix("Best for the NPU: ").split(" (#")[0]
    assert npu[picked].startswith("NPU-ready") and "smallest of" in pick
    at.number_input(key="compare_budget").set_value(0.0).run()
    texts_now = texts(at, "success") + texts(at, "warning")
    assert any(t.startswith(("Best for the NPU: ", "No NPU-ready variant is within 0 points")) for t in texts_now)
    # one model with float32: the per-class change and one difference matrix, not a matrix per variant
    heatmaps = [s for s in specs if s["data"] and s["data"][0]["type"] == "heatmap"]
    titles = [json.dumps(h["layout"]["title"]) for h in heatmaps]
    assert len(heatmaps) == 3
    assert "per-class accuracy change vs float32" in titles[0]
    assert len(heatmaps[0]["data"][0]["y"]) == len(table) - 1  # every variant but float32
    assert "minus float32" in titles[1]


def test_compare_opens_with_the_variant_chosen_elsewhere(converted: Lab, page) -> None:
    int8 = _variant_id(converted, "int8")
    at = AppTest.from_file(str(APP.parent / "app_pages" / "compare.py"), default_timeout=PAGE_TIMEOUT_S)
    at.session_state["ui_use_variant"] = (int8, 1)
    at.run()
    _no_traceback(at)
    assert at.dataframe[0].value["variant"].tolist() == ["float32", "int8"]


def test_compare_opens_on_the_model_last_worked_on(empty_lab: Lab, page, tiny_tflite: dict[str, bytes]) -> None:
    """Two models: Compare opens on the one whose variant was made last, not on the newest model or #1."""
    from dashboard.services import uploads

    dataset_id = uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    for name, recipe in (("first", "int8"), ("second", "uint8")):
        uploads.add_tflite(empty_lab, f"{name}.tflite", tiny_tflite[recipe], name=name, dataset_id=dataset_id)
        job = empty_lab.store.jobs(limit=1, kind="import_tflite")[0]
        empty_lab.runner.wait(job.id, timeout=300)
        assert empty_lab.store.job(job.id).status is JobStatus.DONE, empty_lab.store.job(job.id).error
    models = empty_lab.store.models()
    assert len(models) == 2, models[["id", "name"]]
    first, second = int(models["id"].min()), int(models["id"].max())
    reads.clear()
    assert page("compare").multiselect(key="compare_models").value == [second]
    # then the first model's variant is made again (a re-run): that is the model worked on last
    with empty_lab.store.transaction() as cur:
        cur.execute("UPDATE variants SET updated_at = now() + INTERVAL 1 SECOND WHERE model_id = ?", [first])
    reads.clear()
    at = page("compare")
    _no_traceback(at)
    assert at.multiselect(key="compare_models").value == [first]


def test_compare_without_models(empty_lab: Lab, page) -> None:
    at = page("compare")
    _no_traceback(at)
    assert "No model stored yet." in texts(at, "info")


# ---------------------------------------------------------------- debugger
@pytest.fixture()
def debugged(converted: Lab) -> Lab:
    """The converted lab with one debugger run on 20 samples."""
    job = run_job(converted, DebugParams(model_id=1, dataset_id=1, recipe="int8", debug_samples=20))
    assert job.status is JobStatus.DONE, job.error
    reads.clear()
    return converted


def _kept(at: AppTest) -> str:
    return next((t for t in texts(at, "markdown") if "layers kept in float:**" in t), "")


def test_debugger_bars_table_and_preselected_suspects(debugged: Lab, page, demo: LoadedModel) -> None:
    at = page("debugger")
    _no_traceback(at)
    bars = plotly_specs(at)[0]
    # the model's output is named by its Keras layer (the demo's last Dense), not "StatefulPartitionedCall"
    head = str(demo.keras_model.layers[-1].name)
    shown = at.dataframe[0].value
    assert head in shown["layer"].tolist() and head in next(t for t in bars["data"] if t["type"] == "bar")["y"]
    assert not shown["layer"].str.startswith("StatefulPartitionedCall").any()
    assert shown.loc[shown["layer"] == head, "tensor_name"].iloc[0].startswith("StatefulPartitionedCall")
    assert [t["name"] for t in bars["data"] if t["type"] == "bar"] == ["TF debugger: rmse/scale (layer by layer)",
                                                                      "range = 255 · scale"]
    # the reference and threshold lines are named in the legend, with the engine's words
    assert [t["name"] for t in bars["data"] if t["type"] == "scatter"][1] == "0.289 = rounding only"
    threshold = next(s for s in at.slider if s.label.startswith("suspect threshold")).value
    assert threshold in [s.get("x0") for s in bars["layout"]["shapes"]]
    table = at.dataframe[0].value
    # worst first by rmse/scale, short Keras layer names beside the full tensor name
    assert table["rmse_scale"].tolist() == sorted(table["rmse_scale"].tolist(), reverse=True)
    assert (table["layer"].str.len() <= table["tensor_name"].str.len()).all()
    expected = table[table["rmse_scale"] > threshold]["tensor_name"].tolist()
    assert sorted(table[table["suspect"]]["tensor_name"]) == sorted(expected)
    if expected:
        assert _kept(at).startswith(f"**{len(expected)} layers kept in float:**")
    else:
        assert any(t.startswith("No layer stands out") for t in texts(at, "info"))


def test_debugger_shows_the_run_a_job_just_made(debugged: Lab, page) -> None:
    """The page follows its job: a run that finishes while the page is open is the one shown, not the old one."""
    at = page("debugger")
    first = at.selectbox(key="debugger_run").value
    at.number_input(key="debugger_samples").set_value(10)
    _by_label(at.button, "Run debugger").click().run()
    job = debugged.store.jobs(limit=1, kind="debug")[0]
    debugged.runner.wait(job.id, timeout=300)
    reads.clear()
    at.run()
    _no_traceback(at)
    newest = int(debugged.store.debug_runs(1)["id"].iloc[0])
    assert newest != first and at.selectbox(key="debugger_run").value == newest
    assert f"**Per-layer error of run #{newest} · TF converter · int8**" in texts(at, "markdown")


def test_debugger_threshold_slider_changes_suspects(debugged: Lab, page) -> None:
    at = page("debugger")
    next(s for s in at.slider if s.label.startswith("suspect threshold")).set_value(0.0).run()
    table = at.dataframe[0].value
    assert table["suspect"].tolist() == (table["rmse_scale"] > 0.0).tolist()
    assert _kept(at).startswith(f"**{int(table['suspect'].sum())} layers kept in float:**")


def test_debugger_table_selection_feeds_keep_float(debugged: Lab, page) -> None:
    at = page("debugger")
    at.checkbox(key="debugger_keep_suspects").uncheck().run()
    assert _kept(at) == ""
    run_id = int(debugged.store.debug_runs()["id"].iloc[0])
    table = at.dataframe[0].value
    at.session_state[f"debugger_table_{run_id}"] = {"selection": {"rows": [len(table) - 1], "columns": []}}
    at.run()
    _no_traceback(at)
    assert _kept(at) == f"**1 layers kept in float:** {table['layer'].iloc[-1]}"
    run = _by_label(at.button, "Run selective quantization")
    assert not run.disabled


def test_debugger_actions_say_before_running_whether_the_result_is_npu_ready(debugged: Lab, page) -> None:
    at = page("debugger")
    run_id = int(debugged.store.debug_runs()["id"].iloc[0])
    at.number_input(key="debugger_first_k").set_value(2).run()
    _no_traceback(at)
    keep = at.selectbox(key=f"debugger_keep_recipe_{run_id}")
    assert keep.value == "int8"  # the recipe of the run, with int8 I/O
    kept = int(re.match(r"\*\*(\d+) layers kept", _kept(at)).group(1))
    assert f"Not NPU-ready: the {kept} layers kept in float run on the CPU" in " ".join(texts(at, "warning"))
    keep.set_value("int8-fallback").run()
    assert any(t.startswith("Not NPU-ready: int8-fallback keeps float input and output") for t in texts(at, "warning"))
    # the search names its recipe and what NPU-ready would take, before it runs
    assert at.selectbox(key="debugger_search_recipe").value in ("int8", "uint8", "int8-per-tensor", "uint8-per-tensor")
    assert any("the result is NPU-ready only if the search keeps no layer in float" in t for t in texts(at, "info"))
    at.selectbox(key="debugger_search_recipe").set_value("int8-fallback").run()
    assert any(t.startswith("Not NPU-ready: int8-fallback") for t in texts(at, "warning"))


def test_debugger_filter_and_top_n(debugged: Lab, page) -> None:
    at = page("debugger")
    table = at.dataframe[0].value
    op = table["op_name"].iloc[0]
    at.multiselect(key="debugger_filter_ops").set_value([op])
    at.number_input(key="debugger_top_n").set_value(1).run()
    _no_traceback(at)
    assert set(at.dataframe[0].value["op_name"]) == {op}
    assert len(values(plotly_specs(at)[0]["data"][0]["y"])) == 1


def test_debugger_keep_float_runs_selective_and_compares_with_int8(debugged: Lab, page) -> None:
    at = page("debugger")
    at.number_input(key="debugger_first_k").set_value(1).run()
    _by_label(at.button, "Run selective quantization").click().run()
    _no_traceback(at)
    job = debugged.store.jobs(limit=1, kind="selective")[0]
    debugged.runner.wait(job.id, timeout=300)
    assert debugged.store.job(job.id).status is JobStatus.DONE, debugged.store.job(job.id).error
    reads.clear()
    at.run()
    _no_traceback(at)
    compared = next(df.value for df in at.dataframe if "kept float" in df.value.columns)
    assert compared["kind"].tolist() == ["ptq", "selective"]
    engine = "" if compared["variant"].iloc[0] == "int8" else "@aeq"  # the explain loop's engine picks the pair
    assert compared["variant"].iloc[0] == f"int8{engine}"
    assert compared["kept float"].iloc[1] >= 1
    # one sign convention with Compare: the variant's accuracy minus float's
    assert "Δ vs float (points)" in compared.columns and "drop (points)" not in compared.columns
    name = compared["variant"].iloc[1]
    assert re.fullmatch(rf"int8 \+ \d+ float layers?{engine}", name)  # named for what it is, not a hash
    # the selective variant keeps a layer in float: its verdict says what falls back to the CPU
    assert compared["NPU"].iloc[0] == "NPU-ready: integer-only" and compared["NPU"].iloc[1].startswith("not NPU-ready: ")
    assert any(t.startswith(f"{name}: not NPU-ready") for t in texts(at, "warning"))
    assert any(b.label == "Use this variant" for b in at.button)


def test_debugger_search_plots_trials(debugged: Lab, page) -> None:
    at = page("debugger")
    at.number_input(key="debugger_max_drop").set_value(5.0)
    _by_label(at.button, "Search").click().run()
    job = debugged.store.jobs(limit=1, kind="tune")[0]
    debugged.runner.wait(job.id, timeout=300)
    assert debugged.store.job(job.id).status is JobStatus.DONE, debugged.store.job(job.id).error
    reads.clear()
    at.run()
    _no_traceback(at)
    trials = next(s for s in plotly_specs(at) if "conversions tried" in json.dumps(s["layout"].get("title", "")))
    assert trials["data"]
    chosen = debugged.store.tune_runs()["chosen_variant_id"].iloc[0]
    if chosen == chosen:  # the search found a variant: its verdict and the action are shown
        verdicts = texts(at, "warning") + texts(at, "success")
        assert any(t.startswith("search result int8 + ") and "NPU" in t for t in verdicts)
        assert any(b.label == "Use this variant" for b in at.button)


def test_debugger_tensor_comparison(debugged: Lab, page, demo: LoadedModel) -> None:
    at = page("debugger")
    assert at.selectbox(key="debugger_cmp_float").value == _variant_id(debugged, "float32")
    assert at.selectbox(key="debugger_cmp_quant").value == _variant_id(debugged, "int8")
    _by_label(at.button, "Compare tensors").click().run()
    job = debugged.store.jobs(limit=1, kind="compare_tensors")[0]
    debugged.runner.wait(job.id, timeout=300)
    reads.clear()
    at.run()
    _no_traceback(at)
    titles = {json.dumps(s["layout"].get("title", "")): s for s in plotly_specs(at)}
    act = next(s for t, s in titles.items() if "activations: worst" in t)
    const = next(s for t, s in titles.items() if "weights and biases: worst" in t)
    assert len(act["data"][0]["y"]) >= 2 and len(const["data"][0]["y"]) >= 2
    # the output by its Keras name (the demo's last Dense), in the bars and the table
    assert str(demo.keras_model.layers[-1].name) in act["data"][0]["y"]
    assert any(str(demo.keras_model.layers[-1].name) in d.value["layer"].tolist()
               for d in at.dataframe if "snr_db" in d.value.columns)
    # worst first: the lowest SNR on top
    for df in (d.value for d in at.dataframe if "snr_db" in d.value.columns):
        snr = df["snr_db"].astype(float).tolist()
        assert snr == sorted(snr)


# ---------------------------------------------------------------- debugger: the engine of the explained variant
@pytest.fixture(scope="module")
def explained_dir(tmp_path_factory: pytest.TempPathFactory, demo: LoadedModel) -> Path:
    """A lab of its own: the demo's int8 made by the TF converter and by AI Edge Quantizer, and a debugger
    run of int8 with each engine (TF's first)."""
    folder = tmp_path_factory.mktemp("explained-lab")
    (folder / "demo").mkdir()
    shutil.copy(demo.path, folder / "demo" / "demo.h5")
    with pytest.MonkeyPatch.context() as mp:
        point_env(mp, folder)
        the_lab = lab()
        for params in (DemoParams(recipes="int8"),
                       ConvertParams(model_id=1, dataset_id=1, recipes=("int8",), engine="aeq", bench=False),
                       DebugParams(model_id=1, dataset_id=1, recipe="int8", debug_samples=20, engine="tf"),
                       DebugParams(model_id=1, dataset_id=1, recipe="int8", debug_samples=20, engine="aeq")):
            job = run_job(the_lab, params)
            assert job.status is JobStatus.DONE, job.error
    return folder


@pytest.fixture()
def explained(explained_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The lab of both engines, with the environment pointing at it (pages see the same store)."""
    point_env(monkeypatch, explained_dir)
    reads.clear()
    return lab()


def _run_of(the_lab: Lab, engine: str) -> int:
    runs = the_lab.store.debug_runs(1)
    return int(runs[runs["engine"] == engine]["id"].iloc[-1])  # the fixture's run (newest first)


def _finish(the_lab: Lab, kind: str) -> Any:
    job = the_lab.store.jobs(limit=1, kind=kind)[0]
    the_lab.runner.wait(job.id, timeout=300)
    job = the_lab.store.job(job.id)
    assert job.status is JobStatus.DONE, job.error
    reads.clear()
    return job


@pytest.mark.slow
def test_debugger_engine_and_recipe_follow_the_explained_variant(explained: Lab, page) -> None:
    aeq_variant, tf_variant = _variant_id(explained, "int8@aeq"), _variant_id(explained, "int8")
    at = page("debugger")
    _no_traceback(at)
    at.selectbox(key="debugger_variant").set_value(aeq_variant).run()
    _no_traceback(at)
    # preselected from the variant's stored engine and recipe, not from a default
    assert at.radio(key="debugger_engine").value == "aeq"
    assert at.selectbox(key="debugger_recipe").value == "int8"
    assert at.selectbox(key="debugger_deploy_engine").value == "aeq"
    assert any(f"Explains variant **#{aeq_variant} int8@aeq**" in t and "**AI Edge Quantizer**" in t
               for t in texts(at, "markdown"))
    # no mismatch warning (keep-float's NPU outlook may warn that float layers run on the CPU)
    assert not [t for t in texts(at, "warning") if not t.startswith("Not NPU-ready: ")]
    # the debugger runs with that engine and recipe
    at.number_input(key="debugger_samples").set_value(20)
    _by_label(at.button, "Run debugger").click().run()
    _no_traceback(at)
    job = _finish(explained, "debug")
    assert (job.params["engine"], job.params["recipe"]) == ("aeq", "int8")
    assert explained.store.debug_runs(1)["engine"].iloc[0] == "aeq"

    at.selectbox(key="debugger_variant").set_value(tf_variant).run()
    assert at.radio(key="debugger_engine").value == "tf"
    assert at.selectbox(key="debugger_deploy_engine").value == "tf"
    assert any(f"Explains variant **#{tf_variant} int8**" in t and "**TF converter**" in t
               for t in texts(at, "markdown"))
    # another engine by hand: allowed, and the page says it explains another model than the variant
    at.radio(key="debugger_engine").set_value("aeq").run()
    assert any(f"variant #{tf_variant} int8 was made by recipe int8 with the TF converter" in t
               for t in texts(at, "warning"))


@pytest.mark.slow
def test_debugger_per_layer_results_name_the_engine_that_made_them(explained: Lab, page) -> None:
    aeq_run, tf_run = _run_of(explained, "aeq"), _run_of(explained, "tf")
    at = page("debugger")
    at.selectbox(key="debugger_variant").set_value(_variant_id(explained, "int8")).run()
    _no_traceback(at)
    # the newest run of the variant's engine and recipe is the one shown, and every view names it
    assert at.selectbox(key="debugger_run").value == tf_run
    source = f"run #{tf_run} · TF converter · int8"
    assert f"**Per-layer error of {source}**" in texts(at, "markdown")
    assert plotly_specs(at)[0]["layout"]["title"]["text"].endswith(f" · {source}")
    assert any(t.endswith(f"layer rows of {source}. Tick rows to keep those layers in float.")
               for t in texts(at, "caption"))
    assert any(f"Converts recipe int8 with the TF converter, the engine of run #{tf_run}" in t
               for t in texts(at, "caption"))

    at.selectbox(key="debugger_run").set_value(aeq_run).run()
    _no_traceback(at)
    source = f"run #{aeq_run} · AI Edge Quantizer · int8"
    assert plotly_specs(at)[0]["layout"]["title"]["text"].endswith(f" · {source}")
    assert any(f"This result ({source}) is not of the variant you explain" in t for t in texts(at, "warning"))
    assert at.selectbox(key="debugger_run").options[
        [o.startswith(f"#{aeq_run} ") for o in at.selectbox(key="debugger_run").options].index(True)
    ].startswith(f"#{aeq_run} · int8 · AI Edge Quantizer · ")

    # keep-float converts with the engine of the run whose layer names it keeps
    at.number_input(key="debugger_first_k").set_value(1).run()
    _by_label(at.button, "Run selective quantization").click().run()
    job = _finish(explained, "selective")
    assert job.params["engine"] == "aeq"
    at.run()
    _no_traceback(at)
    compared = next(df.value for df in at.dataframe if "kept float" in df.value.columns)
    assert compared["engine"].tolist() == ["AI Edge Quantizer", "AI Edge Quantizer"]


@pytest.mark.slow
def test_debugger_search_uses_and_names_the_variants_engine(explained: Lab, page) -> None:
    at = page("debugger")
    at.selectbox(key="debugger_variant").set_value(_variant_id(explained, "int8@aeq")).run()
    at.number_input(key="debugger_max_drop").set_value(5.0)
    _by_label(at.button, "Search").click().run()
    job = _finish(explained, "tune")
    assert (job.params["engine"], job.params["deploy_engine"], job.params["recipe"]) == ("aeq", "aeq", "int8")
    at.run()
    _no_traceback(at)
    tune_id = int(job.result["tune_run_id"])
    assert at.selectbox(key="debugger_tune_run").value == tune_id
    assert any(o.startswith(f"#{tune_id} · AI Edge Quantizer · ") for o in at.selectbox(key="debugger_tune_run").options)
    trials = next(s for s in plotly_specs(at) if "conversions tried" in json.dumps(s["layout"].get("title", "")))
    assert trials["layout"]["title"]["text"] == "conversions tried by the search · AI Edge Quantizer"
    assert f"Search #{tune_id}: layers ranked and tried with AI Edge Quantizer." in texts(at, "caption")
    if job.result["chosen_variant_id"] is not None:
        verdicts = texts(at, "warning") + texts(at, "success") + texts(at, "caption")
        assert any(t.startswith("search result ") and "@aeq (AI Edge Quantizer)" in t for t in verdicts)


# ---------------------------------------------------------------- inspect
def test_inspect_int8_is_integer_only(converted: Lab, page, demo: LoadedModel) -> None:
    at = page("inspect")
    at.selectbox(key="inspect_variant").set_value(_variant_id(converted, "int8")).run()
    _no_traceback(at)
    verdict = next(m for m in at.metric if m.label == "verdict")
    assert verdict.value == "integer-only"
    tensors = at.dataframe[1].value
    assert "int8" in set(tensors["dtype"]) and tensors["scale"].str.len().gt(0).any()
    # the model's output by its Keras name (the demo's last Dense), beside the converter's tensor name
    output = tensors[tensors["role"] == "output"].iloc[0]
    assert output["layer"] == demo.keras_model.layers[-1].name and output["name"].startswith("StatefulPartitionedCall")


def test_inspect_float32_lints_float_ops(converted: Lab, page) -> None:
    at = page("inspect")
    at.selectbox(key="inspect_variant").set_value(_variant_id(converted, "float32")).run()
    _no_traceback(at)
    assert any("float-op" in t for t in texts(at, "error"))
    counts = plotly_specs(at)[0]
    assert [t["name"] for t in counts["data"]] == ["computes in float", "computes in integer"] or \
        [t["name"] for t in counts["data"]] == ["computes in float"]
    ops = at.dataframe[0].value
    assert "layer" in ops.columns
    first_op = ops["op"].iloc[0]
    at.multiselect(key="inspect_ops").set_value([first_op]).run()
    _no_traceback(at)
    assert set(at.dataframe[0].value["op"]) == {first_op}


# ---------------------------------------------------------------- math
def test_math_seed_example(empty_lab: Lab, page) -> None:
    at = page("math")
    _no_traceback(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["zero point"] == "-64"  # [-2, 6] onto int8
    assert metrics["quantized"] == "32"  # 3.0 → 32
    assert metrics["mean, std_dev"] == "0, 255"  # range (0, 1) as tflite_convert's mean/std_dev
    assert metrics["min, max"] == "-1, 1"  # mean 127.5, std 127.5
    assert plotly_specs(at)[0]["data"][0]["line"]["shape"] == "hv"


def test_math_min_above_max_shows_error(empty_lab: Lab, page) -> None:
    at = page("math")
    at.number_input(key="math_min").set_value(5.0)
    at.number_input(key="math_max").set_value(1.0).run()
    _no_traceback(at)
    assert any(t.startswith("cannot compute") and "min" in t for t in texts(at, "error"))


def test_math_zero_std_dev_shows_error(empty_lab: Lab, page) -> None:
    at = page("math")
    at.number_input(key="math_std").set_value(0.0).run()
    _no_traceback(at)
    assert any("std_dev" in t and "positive" in t for t in texts(at, "error"))


# ---------------------------------------------------------------- qat
@pytest.mark.slow
def test_qat_train_shows_check_and_curves(converted: Lab, page) -> None:
    at = page("qat")
    at.number_input(key="qat_epochs").set_value(2)
    at.number_input(key="qat_samples").set_value(300)
    _by_label(at.button, "Train").click().run()
    _no_traceback(at)
    job = converted.store.jobs(limit=1, kind="qat")[0]
    converted.runner.wait(job.id, timeout=600)
    assert converted.store.job(job.id).status is JobStatus.DONE, converted.store.job(job.id).error
    reads.clear()
    at.run()
    _no_traceback(at)
    labels = [m.label for m in at.metric]
    assert labels[:3] == ["float model", "QAT Keras", "QAT TFLite"]
    curves = plotly_specs(at)[0]
    assert len(values(curves["data"][0]["x"])) == 2  # one point per epoch
    assert texts(at, "warning") or any("agree" in t for t in texts(at, "success"))
    # float I/O QAT model: integer inside, so the verdict is shown either way
    assert any(t.startswith("QAT variant ") and "NPU" in t for t in texts(at, "warning") + texts(at, "success"))


def test_qat_chosen_layers_without_names(converted: Lab, page) -> None:
    at = page("qat")
    at.radio(key="qat_scope").set_value("chosen layers")
    _by_label(at.button, "Train").click().run()
    assert any("choose at least one layer" in t for t in texts(at, "error"))


def test_qat_live_curves_while_training(empty_lab: Lab, page) -> None:
    from dashboard.services import uploads

    uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0)
    empty_lab.store.add_model(name="m", format="h5", sha256="q" * 64, source_path="/nowhere.h5",
                              input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    job_id = empty_lab.store.create_job("qat", {})
    history = [{"epoch": 1, "loss": 0.6, "accuracy": 0.8}, {"epoch": 2, "loss": 0.4, "accuracy": 0.88}]
    # a worker publishes each epoch as structured data while it trains
    empty_lab.store.update_job(job_id, status=JobStatus.RUNNING, progress=0.5, message="QAT epoch 2/4",
                               live={"history": history, "epochs": 4})
    at = page("qat")
    _no_traceback(at)
    live = plotly_specs(at)[0]
    assert values(live["data"][0]["y"]) == [0.6, 0.4] and values(live["data"][1]["y"]) == [0.8, 0.88]


# ---------------------------------------------------------------- boards
def test_boards_register_token_never_shown(empty_lab: Lab, page) -> None:
    at = page("boards")
    at.text_input(key="boards_add_name").set_value("imx-1")
    at.text_input(key="boards_add_url").set_value("http://127.0.0.1:9")
    at.text_input(key="boards_add_token").set_value("s3cret-token-value")
    _by_label(at.button, "Register").click().run()
    _no_traceback(at)
    assert [b.name for b in empty_lab.store.boards()] == ["imx-1"]
    # the same page lists the board it just registered, and says so
    assert at.dataframe[0].value["board"].tolist() == ["imx-1"]
    assert "board 'imx-1' registered" in texts(at, "success")
    assert empty_lab.store.board_token("imx-1")[1] == "s3cret-token-value"
    at = page("boards")  # a fresh session
    health = at.dataframe[0].value
    assert health["board"].tolist() == ["imx-1"] and health["token"].tolist() == ["set"]
    assert not health["reachable"].iloc[0] and "unreachable" in health["error"].iloc[0]
    everything = json.dumps([str(el.proto) for el in at.main], default=str)
    assert "s3cret-token-value" not in everything


def test_boards_bad_url_shows_error(empty_lab: Lab, page) -> None:
    at = page("boards")
    at.text_input(key="boards_add_name").set_value("x")
    at.text_input(key="boards_add_url").set_value("ftp://board")
    _by_label(at.button, "Register").click().run()
    _no_traceback(at)
    assert any("must start with http:// or https://" in t for t in texts(at, "error"))


def test_boards_bench_without_variants(empty_lab: Lab, page) -> None:
    empty_lab.store.add_board("imx-1", "http://127.0.0.1:9", None)
    reads.clear()
    at = page("boards")
    _by_label(at.button, "Benchmark").click().run()
    assert any("choose at least one variant" in t for t in texts(at, "error"))
    assert empty_lab.store.jobs() == []


def test_boards_greys_out_targets_the_board_cannot_run(empty_lab: Lab, page, tmp_path: Path) -> None:
    from tests.board_agent.harness import TOKEN, running_agent

    with running_agent(tmp_path / "agent", board_name="imx-live") as agent:
        empty_lab.store.add_board("imx-live", agent.url, TOKEN)
        empty_lab.store.set_board_labels("imx-live", [("tag", "lab")])
        reads.clear()
        at = page("boards")
        _no_traceback(at)
        boxes = {cb.label: cb for cb in at.checkbox if cb.key and cb.key.startswith("boards_bench_target_")}
        assert boxes["npu"].disabled and not boxes["cpu"].disabled and not boxes["cpu-plain"].disabled
        assert any(t.startswith("npu is unavailable on imx-live: VX delegate") for t in texts(at, "caption"))
        # the pool query sees the board by its tag
        assert any(t == "matches imx-live" for t in texts(at, "caption"))


# ---------------------------------------------------------------- reports
def test_reports_make_then_open_read_only(converted: Lab, page) -> None:
    at = page("reports")
    at.text_input(key="reports_title").set_value("int8 is enough")
    at.text_area(key="reports_notes").set_value("**keep** int8")
    at.multiselect(key="reports_variants").set_value([_variant_id(converted, "float32"), _variant_id(converted, "int8")])
    _by_label(at.button, "Make report").click().run()
    _no_traceback(at)
    success = next(t for t in texts(at, "success") if t.startswith("report made"))
    report_id = re.search(r"\?report=([\w-]+)", success).group(1)
    view = page("reports", query={"report": report_id})
    _no_traceback(view)
    assert view.title[0].value == "int8 is enough"
    assert view.dataframe[0].value["variant"].tolist() == ["float32", "int8"]
    assert len(plotly_specs(view)) >= 4
    assert view.dataframe[0].value["NPU"].tolist()[1] == "NPU-ready: integer-only"
    assert any("**demo-digits-cnn / int8**: NPU-ready: integer-only" in t for t in texts(view, "markdown"))
    assert {b.label for b in view.get("download_button")} == {"Download HTML", "Download bundle (.zip)"}
    assert not view.text_input  # read-only: no form to edit anything


def test_reports_unknown_id_in_words(converted: Lab, page) -> None:
    at = page("reports", query={"report": "nope"})
    _no_traceback(at)
    assert any("no report with id 'nope'" in t for t in texts(at, "error"))


def test_reports_without_title(converted: Lab, page) -> None:
    at = page("reports")
    at.multiselect(key="reports_variants").set_value([_variant_id(converted, "int8")])
    _by_label(at.button, "Make report").click().run()
    assert any("a report needs a title" in t for t in texts(at, "error"))


def test_reports_import_bundle(converted: Lab, page) -> None:
    report_id = reports.make_report(converted.store, "to import", "", [_variant_id(converted, "int8")])
    bundle = reports.export_bundle(converted.store, report_id)
    at = page("reports")
    at.file_uploader(key="reports_bundle").set_value(("r.zip", bundle, "application/zip"))
    _by_label(at.button, "Import").click().run()
    _no_traceback(at)
    done = next(t for t in texts(at, "success") if t.startswith("imported as"))
    new_id = re.search(r"\?report=([\w-]+)", done).group(1)
    # "All reports" on the same page lists it at once
    assert any(f"?report={new_id})" in t for t in texts(at, "markdown"))


def test_reports_import_garbage(converted: Lab, page) -> None:
    at = page("reports")
    at.file_uploader(key="reports_bundle").set_value(("r.zip", b"garbage", "application/zip"))
    _by_label(at.button, "Import").click().run()
    _no_traceback(at)
    assert any("cannot import r.zip: not a qlab report bundle" in t for t in texts(at, "error"))


# ---------------------------------------------------------------- the app's navigation
def test_app_report_link_opens_the_report(converted: Lab) -> None:
    report_id = reports.make_report(converted.store, "linked", "", [_variant_id(converted, "int8")])
    at = AppTest.from_file(str(APP), default_timeout=PAGE_TIMEOUT_S)
    at.query_params["report"] = report_id
    at.run()
    _no_traceback(at)
    assert at.title[0].value == "linked"


def test_app_default_page_is_overview(converted: Lab) -> None:
    at = AppTest.from_file(str(APP), default_timeout=PAGE_TIMEOUT_S).run()
    _no_traceback(at)
    assert at.title[0].value == "qlab"


def test_quantize_data_that_does_not_fit_the_model(converted: Lab, page, tmp_path: Path) -> None:
    import io

    import numpy as np

    from dashboard.services import uploads

    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((4, 4, 4), np.float32), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 4, 4), np.float32), y_test=np.zeros(2, np.int64))
    dataset_id = uploads.add_dataset(converted, "small.npz", buf.getvalue(), input_scale=1.0, input_offset=0.0)
    job = run_job(converted, ConvertParams(model_id=1, dataset_id=dataset_id, recipes=("int8",)))
    assert job.status is JobStatus.FAILED
    at = page("quantize")
    _no_traceback(at)
    shown = " ".join(texts(at, "error"))
    assert f"job #{job.id} (convert) failed" in shown and "(8, 8)" in shown and "(4, 4)" in shown
