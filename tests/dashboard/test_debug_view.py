"""What /debugger explains: the chosen variant's engine and recipe, and the engine every result names."""

from __future__ import annotations

import json

import pandas as pd

from dashboard.components.debugger import layer_bars, tune_trials_plot
from dashboard.services import debug_view
from qcore import defaults


def _variants() -> pd.DataFrame:
    rows = [(1, "float32", "ptq", "float32", "tf", "ok"), (2, "int8", "ptq", "int8", "tf", "ok"),
            (3, "int8@aeq", "ptq", "int8", "aeq", "ok"), (4, "uint8", "ptq", "uint8", "tf", "failed"),
            (5, "int8 + 2 float layers", "selective", "int8", "tf", "ok")]
    return pd.DataFrame(rows, columns=["variant_id", "variant", "kind", "recipe", "engine", "status"])


def _runs() -> pd.DataFrame:
    """Debugger runs newest first, as the store lists them."""
    rows = [(9, "aeq", {"recipe": "int8"}), (8, "tf", {"recipe": "int8-fallback"}), (7, "tf", {"recipe": "int8"})]
    return pd.DataFrame([{"id": i, "engine": e, "settings": json.dumps(s), "n_layers": 4,
                          "created_at": "2026-01-01 10:00"} for i, e, s in rows])


def test_explainable_variants_are_the_ok_ptq_ones_the_debugger_takes() -> None:
    assert debug_view.explainable(_variants()) == {2: "#2 int8 · TF converter", 3: "#3 int8@aeq · AI Edge Quantizer"}


def test_explain_target_reads_the_variants_stored_engine_and_recipe() -> None:
    target = debug_view.explain_target(1, _variants(), 3)
    assert (target.variant_id, target.engine, target.recipe) == (3, "aeq", "int8")
    assert "**#3 int8@aeq**" in target.words and "**AI Edge Quantizer**" in target.words
    none = debug_view.explain_target(1, _variants().iloc[0:0], None)
    assert (none.variant_id, none.engine, none.recipe) == (None, defaults.ENGINE, defaults.DEBUG_RECIPE)
    assert "the default" in none.words


def test_preselect_follows_the_variant_and_leaves_the_users_choice_alone() -> None:
    state: dict[str, object] = {"debugger_run": 7}
    debug_view.preselect(state, debug_view.explain_target(1, _variants(), 3))
    assert (state["debugger_engine"], state["debugger_recipe"], state["debugger_deploy_engine"]) == ("aeq", "int8", "aeq")
    assert "debugger_run" not in state  # the newest run of the variant's engine is shown again
    state["debugger_engine"] = "tf"  # the user's own choice, same variant: kept
    debug_view.preselect(state, debug_view.explain_target(1, _variants(), 3))
    assert state["debugger_engine"] == "tf"
    debug_view.preselect(state, debug_view.explain_target(1, _variants(), 2))
    assert (state["debugger_engine"], state["debugger_recipe"]) == ("tf", "int8")
    del state["debugger_recipe"]  # Streamlit dropped the widget's value while another page was shown
    debug_view.preselect(state, debug_view.explain_target(1, _variants(), 2))
    assert state["debugger_recipe"] == "int8"


def test_mismatch_says_when_the_run_would_explain_another_model() -> None:
    target = debug_view.explain_target(1, _variants(), 3)
    assert debug_view.mismatch(target, "aeq", "int8") == ""
    words = debug_view.mismatch(target, "tf", "int8")
    assert "variant #3 int8@aeq was made by recipe int8 with the AI Edge Quantizer" in words
    assert debug_view.mismatch(debug_view.explain_target(1, _variants(), None), "aeq", "uint8") == ""


def test_runs_are_named_by_their_engine_and_the_variants_run_comes_first() -> None:
    runs = _runs()
    labels = debug_view.run_labels(runs)
    assert labels[9].startswith("#9 · int8 · AI Edge Quantizer · 4 layers")
    assert labels[7].startswith("#7 · int8 · TF converter · 4 layers")
    assert debug_view.run_index(runs, debug_view.explain_target(1, _variants(), 2)) == 2  # run 7: tf, int8
    assert debug_view.run_index(runs, debug_view.explain_target(1, _variants(), 3)) == 0  # run 9: aeq, int8
    assert debug_view.run_source(runs.iloc[0]) == "run #9 · AI Edge Quantizer · int8"
    assert debug_view.run_mismatch(runs.iloc[0], debug_view.explain_target(1, _variants(), 3)) == ""
    assert "not of the variant you explain (#2" in debug_view.run_mismatch(
        runs.iloc[0], debug_view.explain_target(1, _variants(), 2))


def test_charts_and_search_results_name_their_engine() -> None:
    stats = pd.DataFrame({"op_name": ["CONV_2D", "FULLY_CONNECTED"], "tensor_name": ["a/conv", "b/dense"],
                          "rmse_scale": [0.3, 0.9], "range": [2.0, 5.0]})
    fig = layer_bars(stats, 0.7, source="run #9 · AI Edge Quantizer · int8")
    assert fig.layout.title.text.endswith(" · run #9 · AI Edge Quantizer · int8")
    trials = pd.DataFrame({"step": [1], "denylist": ["[]"], "accuracy": [0.9], "size_bytes": [1024], "passed": [True]})
    assert tune_trials_plot(trials, 0.95, 0.9, source="TF converter").layout.title.text.endswith(" · TF converter")
    assert debug_view.tune_source({"engine": "aeq", "deploy_engine": "tf"}) == (
        "AI Edge Quantizer (deployed with TF converter)")
    assert debug_view.tune_source(pd.Series({"engine": "tf", "deploy_engine": "tf"})) == "TF converter"
    assert debug_view.tune_source({"engine": None, "deploy_engine": None}).startswith("engine not recorded")
    runs = pd.DataFrame([{"id": 4, "engine": "aeq", "deploy_engine": "tf", "max_drop": 0.5, "target_accuracy": 0.9,
                          "chosen_variant_id": 12, "created_at": "2026-01-01"}])
    assert debug_view.tune_labels(runs)[4].startswith("#4 · AI Edge Quantizer (deployed with TF converter) · ")


def test_npu_outlook_before_keep_float_or_search() -> None:
    ready, words = debug_view.npu_outlook("int8", 0)
    assert ready and words.startswith("NPU-ready")
    ready, words = debug_view.npu_outlook("uint8", 3)
    assert not ready and "the 3 layers kept in float run on the CPU" in words
    assert not debug_view.npu_outlook("int8-fallback", 0)[0]  # float I/O: never NPU-ready
    assert not debug_view.npu_outlook("int16x8", 0)[0]
    # a float-I/O debug run proposes int8 (the NPU's I/O) for keep-float and the search
    assert debug_view.DEBUG_RECIPES[debug_view.deploy_recipe_index("int8-fallback")] == "int8"
    assert debug_view.DEBUG_RECIPES[debug_view.deploy_recipe_index("uint8")] == "uint8"


def test_selective_table_uses_compares_sign() -> None:
    rows = pd.DataFrame([{"variant": "int8", "kind": "ptq", "engine": "tf", "accuracy": 0.90, "float_accuracy": 0.905,
                          "size_bytes": 1024, "settings": "{}", "npu_label": None, "npu_io": None},
                         {"variant": "int8 + 1 float layer", "kind": "selective", "engine": "tf", "accuracy": 0.91,
                          "float_accuracy": 0.905, "size_bytes": 1100,
                          "settings": '{"denylisted_nodes": ["a"]}', "npu_label": None, "npu_io": None}])
    table = debug_view.selective_table(rows)
    assert table["Δ vs float (points)"].tolist() == [-0.5, 0.5]  # lost half a point; then gained it back
