"""/debugger: explain a variant with the engine that made it: per-layer error, suspects, keep them float, search,
compare tensors."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import repair_panel, ui
from dashboard.components.debugger import (
    METRIC_TITLES,
    layer_bars,
    tensor_snr_bars,
    tune_trials_plot,
)
from dashboard.services import debug_view, layers, reads, repair_view
from dashboard.services.debug_view import DEBUG_RECIPES, ENGINE_NAMES, engine_name
from qcore import defaults
from qcore.engines import get_engine
from qcore.engines.tf import LAYER_METRICS
from qcore.jobs.contract import CompareTensorsParams, DebugParams, SelectiveParams, TuneParams
from qcore.qtyping import Job

st.title("Quantization debugger")
st.caption("Per-layer error of the int8 model against float, on the scale of the engine that measured it: "
           "TFLite's QuantizationDebugger verifies layer by layer (rmse/scale ≈ 0.289 is rounding only), AI Edge "
           "Quantizer compares whole models (errors propagate, so every layer reads higher and only a layer far "
           "above the model's own median stands out).")
lab = ui.current()

c1, c2 = st.columns(2)
with c1:
    model_id = ui.pick_model(lab, key="debugger_model", follow=("debug", "selective", "tune", "repair"))
with c2:
    dataset_id = ui.pick_dataset(lab, key="debugger_dataset", for_model=model_id, follow=("debug", "selective", "tune", "repair"))
if model_id is None or dataset_id is None:
    st.stop()

variants = reads.variants(lab.db_key, model_ids=(model_id,))
explainable = debug_view.explainable(variants)
a, b, c = st.columns([2, 2, 1])
variant_id = a.selectbox("variant to explain", list(explainable), format_func=explainable.__getitem__,
                         key="debugger_variant", disabled=not explainable,
                         help="the engine and recipe below follow the variant: its suspects are those of the "
                              "model you deploy")
target = debug_view.explain_target(model_id, variants, variant_id)
debug_view.preselect(st.session_state, target)
engine = b.radio("engine", list(ENGINE_NAMES), format_func=ENGINE_NAMES.__getitem__, horizontal=True,
                 key=debug_view.ENGINE_KEY,
                 help="AI Edge Quantizer is fast (it calibrates once); the TF debugger refuses int16x8, and extra "
                      "metrics and whole-model are TF options")
recipe = c.selectbox("recipe", DEBUG_RECIPES, key=debug_view.RECIPE_KEY)
st.markdown(target.words)
if other := debug_view.mismatch(target, engine, recipe):
    st.warning(other, icon=":material/warning:")

with st.expander("Run the debugger", expanded=reads.debug_runs(lab.db_key, model_id).empty):
    with st.form("debugger_run_form"):
        a, b = st.columns(2)
        calibration = a.number_input("calibration samples", 1, 10_000, defaults.CALIBRATION_SAMPLES,
                                     key="debugger_calibration")
        debug_samples = b.number_input("debug samples", 1, 10_000, defaults.DEBUG_SAMPLES, key="debugger_samples")
        takes = get_engine(engine).debug_options
        extra = st.multiselect("extra layer metrics (TF)", list(LAYER_METRICS), key="debugger_extra",
                               help="; ".join(f"{m.name}: {m.summary}" for m in LAYER_METRICS.values()),
                               disabled="extra_metrics" not in takes)
        whole = st.checkbox("whole-model verification, TF (see errors propagate down the model)",
                            key="debugger_whole", disabled="whole_model" not in takes)
        st.caption(f"Runs recipe {recipe} with the {engine_name(engine)} (chosen above).")
        if st.form_submit_button("Run debugger", type="primary"):
            with ui.guard("could not start"):
                ui.submit(lab, DebugParams(
                    model_id=int(model_id), dataset_id=int(dataset_id), recipe=recipe,
                    calibration_samples=int(calibration), debug_samples=int(debug_samples),
                    extra_metrics=tuple(extra) if "extra_metrics" in takes else (),
                    whole_model=bool(whole) and "whole_model" in takes, engine=engine))
                st.rerun()

ui.job_panel(ui.latest_job(lab, ("debug",)), key="debugger_debug_job")


def debug_result(model_id: int, dataset_id: int) -> None:
    """The chosen debugger run, named by its engine: metrics, bars, table, suspects and "keep these float"."""
    runs = reads.debug_runs(lab.db_key, model_id)
    if runs.empty:
        st.info("No debugger result for this model yet: run it above.", icon=":material/info:")
        return
    labels = debug_view.run_labels(runs)
    followed = debug_view.follow_newest(st.session_state, runs)
    run_id = st.selectbox("debugger result", list(labels), format_func=labels.__getitem__,
                          index=0 if followed else debug_view.run_index(runs, target), key=debug_view.RUN_KEY)
    run = runs[runs["id"] == run_id].iloc[0]
    source = debug_view.run_source(run)
    run_engine = debug_view.run_engine(run)
    settings = debug_view.settings(run)
    stats = reads.layer_stats(lab.db_key, int(run_id))
    st.markdown(f"**Per-layer error of {source}**")
    if other := debug_view.run_mismatch(run, target):
        st.warning(other, icon=":material/warning:")
    metrics = debug_view.model_metrics(run)
    if metrics:
        for col, (name, value) in zip(st.columns(len(metrics)), metrics.items(), strict=True):
            col.metric(name, f"{value:.4g}")

    scale = get_engine(run_engine).metric
    st.caption(scale.words)
    suggested, stands_out = debug_view.threshold(stats, run_engine)
    a, b = st.columns([3, 1])
    threshold = a.slider(f"suspect threshold ({scale.name})", 0.0,
                         max(2.0, debug_view.max_rmse_scale(stats), float(suggested)),
                         float(suggested), 0.01, key=f"debugger_threshold_{run_id}",
                         help="derived from this model's own spread on this engine's scale, the same on every "
                              "page and report: the median plus three robust standard deviations (log scale), "
                              f"never below 1.5 × the reference ({scale.reference_label(stats.get('rmse_scale', []))})")
    first_k = b.number_input("also the first K layers", 0, max(0, len(stats)), 0, key="debugger_first_k")
    suspects = debug_view.suspects(stats, threshold, int(first_k))
    if not stands_out and not stats.empty:
        st.info(f"No layer stands out: every layer's {scale.name} lies within this model's own spread "
                f"(at most {debug_view.max_rmse_scale(stats):.3g}, {scale.engine}). Quantization error is spread "
                "evenly; keeping single layers in float will gain little.", icon=":material/info:")

    c1, c2, c3, c4, c5 = st.columns([2, 2, 1, 2, 2])
    metric_options = debug_view.metrics(stats) or ["rmse_scale"]
    metric = c1.selectbox("rank by", metric_options, format_func=lambda m: METRIC_TITLES.get(m, m),
                          key="debugger_rank_by")
    order = c2.radio("order", ["worst first", "layer order"], horizontal=True, key="debugger_order")
    top_n = c3.number_input("show N", 0, 10_000, 30, key="debugger_top_n", help="0 = every layer")
    text = c4.text_input("filter by layer name", key="debugger_filter", placeholder="e.g. block_3")
    op_filter = c5.multiselect("op types", debug_view.op_types(stats), key="debugger_filter_ops")
    shown = debug_view.ranked_stats(stats, metric, order == "worst first", text, op_filter)
    st.plotly_chart(layer_bars(shown, threshold, suspects, metric=metric, top_n=int(top_n),
                               worst_first=order == "worst first", source=source, scale=scale),
                    key="debugger_bars")
    table = debug_view.stats_table(shown, suspects)
    picked = st.dataframe(table, hide_index=True, width="stretch", key=f"debugger_table_{run_id}",
                          on_select="rerun", selection_mode="multi-row",
                          column_config={"tensor_name": st.column_config.TextColumn("full tensor name")})
    st.caption(f"{len(shown)} of {len(stats)} layer rows of {source}. Tick rows to keep those layers in float.")

    st.subheader("Keep these float")
    include = st.checkbox(f"the {len(suspects)} suspects", value=True, key="debugger_keep_suspects")
    chosen = debug_view.keep_float(table, list(picked.selection.rows) if picked else [], suspects, include)
    if chosen:
        st.markdown(f"**{len(chosen)} layers kept in float:** " + ", ".join(ui.md(x) for x in layers.unique_labels(chosen, layers.known_names(stats))))
    else:
        st.caption("No layer chosen: tick rows in the table, or lower the threshold.")
    ops = st.multiselect("and every op of these types", debug_view.op_types(stats), key="debugger_keep_ops")
    run_recipe = str(settings.get("recipe", defaults.DEBUG_RECIPE))
    a, b = st.columns([1, 3])
    keep_recipe = a.selectbox("convert with recipe", DEBUG_RECIPES, index=debug_view.deploy_recipe_index(run_recipe),
                              key=f"debugger_keep_recipe_{run_id}",
                              help="int8 or uint8 give the NPU its integer I/O; int8-fallback keeps float I/O")
    b.caption(f"Converts recipe {keep_recipe} with the {engine_name(run_engine)}, the engine of run #{run_id} "
              f"(which measured {run_recipe}): the layer names above are that engine's.")
    ready, outlook = debug_view.npu_outlook(keep_recipe, len(chosen) + len(ops))
    (st.success if ready else st.warning)(outlook, icon=":material/memory:")
    if st.button("Run selective quantization", type="primary", key="debugger_selective",
                 disabled=not chosen and not ops):
        with ui.guard("could not start"):
            ui.submit(lab, SelectiveParams(
                model_id=model_id, dataset_id=dataset_id,
                recipe=keep_recipe,
                denylisted_nodes=tuple(chosen), denylisted_ops=tuple(ops),
                calibration_samples=int(settings.get("calibration_samples", defaults.CALIBRATION_SAMPLES)),
                debug_samples=int(settings.get("debug_samples", defaults.DEBUG_SAMPLES)),
                engine=run_engine))
            st.rerun()


def show_selective(job: Job) -> None:
    """The selective variant beside the full-integer one of the same recipe."""
    result = job.result or {}
    selective = result.get("selective") or {}
    sel_id = selective.get("variant_id")
    ids = tuple(v for v in (selective.get("baseline_variant_id"), sel_id) if v is not None)
    if ids:
        st.dataframe(debug_view.selective_table(reads.variants(lab.db_key, variant_ids=ids)), hide_index=True,
                     width="stretch")
    pair = reads.variants(lab.db_key, variant_ids=ids) if ids else None
    if pair is not None and sel_id is not None and (pair["variant_id"] == sel_id).any():
        row = pair[pair["variant_id"] == sel_id].iloc[0]
        ui.npu_verdict(row, str(row["variant"]))
        ui.use_variant_button(int(sel_id), int(row["model_id"]), key="debugger_use_selective")
    if selective.get("ignored_nodes"):
        known = debug_view.document_names(result)
        st.caption("the quantizer kept these quantized (they share their neighbours' scale): "
                   + ", ".join(layers.short_name(n, known) for n in selective["ignored_nodes"]))


debug_result(model_id, dataset_id)
ui.job_panel(ui.latest_job(lab, ("selective",)), key="debugger_selective_job", on_done=show_selective)

repair_panel.show(lab, int(model_id), int(dataset_id), engine)

st.subheader("Automatic search for the fewest float layers")
a, b, c = st.columns([1, 1, 2])
max_drop = a.number_input("max accuracy drop (points)", 0.0, 100.0, defaults.TUNE_MAX_DROP, 0.1,
                          key="debugger_max_drop")
deploy_engine = b.selectbox("deploy with", list(ENGINE_NAMES), format_func=ENGINE_NAMES.__getitem__,
                            key=debug_view.DEPLOY_KEY,
                            help="the chosen layers are converted once more with this engine when it differs")
search_recipe = c.selectbox("search with recipe", DEBUG_RECIPES, index=debug_view.deploy_recipe_index(recipe),
                            key="debugger_search_recipe",
                            help="the recipe ranked, tried and kept: int8 or uint8 for the NPU's integer I/O "
                                 "(the debugger above ran " + recipe + ")")
st.caption(f"Ranks the layers of recipe {search_recipe} with the {engine_name(engine)} and bisects over how many "
           "of the worst to keep in float: about log2(layers) conversions.")
io_ready, io_words = debug_view.npu_outlook(search_recipe, 0)
if io_ready:
    st.info(f"{io_words.removesuffix(' and keeps nothing in float.')}: the result is NPU-ready only if the search "
            "keeps no layer in float; every float layer it keeps runs on the CPU.", icon=":material/memory:")
else:
    st.warning(io_words, icon=":material/memory:")
try_repairs = st.checkbox("try the repairs first (" + " + ".join(defaults.TUNE_REPAIRS) + "): keep layers float only "
                          "when the repaired integer model still misses", value=True, key="debugger_tune_repairs")
if st.button("Search", key="debugger_tune"):
    with ui.guard("could not start"):
        ui.submit(lab, TuneParams(
            model_id=int(model_id), dataset_id=int(dataset_id), max_drop=float(max_drop), recipe=search_recipe,
            calibration_samples=int(calibration), debug_samples=int(debug_samples), engine=engine,
            deploy_engine=deploy_engine, repairs=defaults.TUNE_REPAIRS if try_repairs else ()))
        st.rerun()
ui.job_panel(ui.latest_job(lab, ("tune",)), key="debugger_tune_job")
tune_runs = reads.tune_runs(lab.db_key, model_id)
if not tune_runs.empty:
    tlabels = debug_view.tune_labels(tune_runs)
    tune_id = st.selectbox("search", list(tlabels), format_func=tlabels.__getitem__, key="debugger_tune_run")
    trun = tune_runs[tune_runs["id"] == tune_id].iloc[0]
    searched_by = debug_view.tune_source(trun)
    trials = reads.tune_trials(lab.db_key, int(tune_id))
    st.plotly_chart(tune_trials_plot(trials, float(trun["float_accuracy"]), float(trun["target_accuracy"]),
                                     source=searched_by), key="debugger_trials")
    ranked_by = trun.get("debug_run_id")  # the run that ranked the layers recorded their names
    known = layers.known_names(reads.layer_stats(lab.db_key, int(ranked_by))) if pd.notna(ranked_by) else {}
    st.dataframe(debug_view.trials_table(trials, known), hide_index=True, width="stretch")
    st.caption(f"Search #{tune_id}: layers ranked and tried with {searched_by}.")
    chosen_id = trun["chosen_variant_id"]
    found = reads.variants(lab.db_key, variant_ids=(int(chosen_id),)) if pd.notna(chosen_id) else None
    st.markdown("**Remedy:** " + ui.md(repair_view.remedy(None if found is None or found.empty else found.iloc[0])))
    if found is not None:
        if not found.empty:
            ui.npu_verdict(found.iloc[0], f"search result {found.iloc[0]['variant']} "
                                          f"({engine_name(found.iloc[0]['engine'])})")
            ui.use_variant_button(int(chosen_id), int(model_id), key="debugger_use_tune")

st.subheader("Tensor comparison between two variants")
st.caption("Runs both .tflite files on the same inputs and compares every tensor they share by name "
           "(works for QAT and 16x8 models, which the debugger cannot take).")
any_model = st.toggle("any two variants (all models)", key="debugger_cmp_any",
                      help="e.g. an imported .tflite against another model's float32; inputs come from the float "
                           "variant's dataset")
options = ui.variant_options(reads.variants(lab.db_key, model_ids=None if any_model else (model_id,)))
if len(options) >= 2:
    a, b, c = st.columns([2, 2, 1])
    ids = list(options)
    float_id = a.selectbox("float variant", ids, format_func=options.__getitem__, key="debugger_cmp_float",
                           index=debug_view.default_index(options, "float32"))
    quant_id = b.selectbox("quantized variant", ids, format_func=options.__getitem__, key="debugger_cmp_quant",
                           index=debug_view.default_index(options, "int8", avoid=float_id))
    samples = c.number_input("samples", 1, 1000, 20, key="debugger_cmp_samples")
    if st.button("Compare tensors", key="debugger_cmp_run"):
        with ui.guard("could not start"):
            ui.submit(lab, CompareTensorsParams(float_variant_id=int(float_id), quant_variant_id=int(quant_id),
                                                   samples=int(samples)))
            st.rerun()


def show_comparison(job: Job) -> None:
    """Activations and weights/biases apart, each ranked worst (lowest SNR) first."""
    result = job.result or {}
    st.caption(f"{result.get('float')} vs {result.get('quant')} on {result.get('n_samples')} samples")
    matched = pd.DataFrame(result.get("matched", []))
    a, b = st.columns([1, 3])
    top_n = a.number_input("show N", 0, 10_000, 30, key="debugger_cmp_top_n", help="0 = every tensor")
    text = b.text_input("filter by tensor name", key="debugger_cmp_filter")
    activations, constants = debug_view.split_tensors(matched)
    fmt = {"mse": st.column_config.NumberColumn("mse", format="%.3e"),
           "max_abs_error": st.column_config.NumberColumn("max abs error", format="%.3e"),
           "snr_db": st.column_config.NumberColumn("SNR (dB)", format="%.1f"),
           "cosine": st.column_config.NumberColumn("cosine", format="%.6f")}
    for title, part, key in (("activations", activations, "act"), ("weights and biases", constants, "const")):
        st.markdown(f"**{title.capitalize()}** ({len(part)} tensors)")
        st.plotly_chart(tensor_snr_bars(layers.filter_rows(part, text, name_col="name"), top_n=int(top_n),
                                        title=title), key=f"debugger_snr_{key}")
        st.dataframe(debug_view.matched_table(part, text), hide_index=True, width="stretch", column_config=fmt,
                     key=f"debugger_cmp_table_{key}")
    unmatched = pd.DataFrame(result.get("unmatched", []))
    if not unmatched.empty:
        st.markdown(f"**{len(unmatched)} tensors without a partner**")
        st.dataframe(unmatched, hide_index=True, width="stretch")


ui.job_panel(ui.latest_job(lab, ("compare_tensors",)), key="debugger_cmp_job", on_done=show_comparison)
