"""/quantize: pick a model, a dataset and recipes; convert as a background job; see the results."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from dashboard import ui
from dashboard.services import pace, reads, tables
from qcore import defaults
from qcore.engines import ENGINES, supports
from qcore.jobs.contract import ConvertParams
from qcore.qtyping import Job
from qcore.recipes import RECIPES

st.title("Quantize")
lab = ui.current()

c1, c2 = st.columns(2)
with c1:
    model_id = ui.pick_model(lab, key="quantize_model", follow=("convert", "demo"))
with c2:
    dataset_id = ui.pick_dataset(lab, key="quantize_dataset", for_model=model_id, follow=("convert", "demo"))
ui.data_fit(lab, model_id, dataset_id)

engine = st.radio("engine", list(ENGINES), horizontal=True, key="quantize_engine",
                  index=list(ENGINES).index(defaults.ENGINE),
                  format_func=lambda name: f"{ENGINES[name].label} ({ENGINES[name].blurb})")
# how many recipes a row of the grid holds
RECIPES_PER_ROW = 3


def set_all_recipes(value: bool) -> None:
    for name in RECIPES:
        st.session_state[f"quantize_recipe_{name}"] = value


head, all_button, none_button = st.columns([6, 1, 1])
head.markdown("**Recipes**")
all_button.button("Select all", key="quantize_all", on_click=set_all_recipes, args=(True,))
none_button.button("Clear", key="quantize_none", on_click=set_all_recipes, args=(False,))
chosen = []
recipes = [r for r in RECIPES.values() if supports(engine, r)]
for start in range(0, len(recipes), RECIPES_PER_ROW):
    # one st.columns per row, so the grid reads left to right and its rows line up
    for col, recipe in zip(st.columns(RECIPES_PER_ROW), recipes[start:start + RECIPES_PER_ROW], strict=False):
        with col:
            if st.checkbox(recipe.name, value=recipe.name in ("float32", "int8"),
                           key=f"quantize_recipe_{recipe.name}"):
                chosen.append(recipe.name)
            st.caption(recipe.summary)

c1, c2 = st.columns(2)
samples = c1.number_input("calibration samples", min_value=1, max_value=10_000, value=100, step=10,
                          key="quantize_calibration", help="the first N training samples, in file order")
bench = c2.checkbox("time each variant on this host afterwards", value=True, key="quantize_bench")

clicked = st.button("Run", type="primary", key="quantize_run", disabled=model_id is None or dataset_id is None)
if clicked and model_id is not None and dataset_id is not None:
    if not chosen:
        st.error("choose at least one recipe")
    else:
        with ui.guard("could not start"):
            ui.submit(lab, ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=tuple(chosen),
                                            calibration_samples=int(samples), bench=bench, engine=engine))
            st.rerun()


def show_landed(job: Job) -> None:
    """While the job runs: the rows of the recipes done so far, elapsed time and an ETA (cached reads only)."""
    partial = job.live or {}
    st.caption(pace.convert_status(partial, pace.since(job.started_at or job.created_at, datetime.now())))
    landed = tables.landed_table(partial.get("variants", []))
    if not landed.empty:  # the rows are stored together when the job ends; these are the worker's own figures
        st.dataframe(landed, hide_index=True, width="stretch", key="quantize_landed")


def show_result(job: Job) -> None:
    result = job.result or {}
    ids = tuple(int(v["variant_id"]) for v in result.get("variants", []) if v.get("variant_id") is not None)
    st.caption(f"{result.get('model', '')}: float accuracy {ui.pct(result.get('float_accuracy'))}")
    if ids:
        st.dataframe(tables.compare_table(reads.variants(lab.db_key, variant_ids=ids)), hide_index=True,
                     width="stretch")
    for v in result.get("variants", []):
        if v.get("status") == "failed":
            st.warning(f"{v['recipe']}: {ui.md(v.get('error'))}", icon=":material/warning:")


st.subheader("Latest conversion")
job = ui.latest_job(lab, ("convert", "demo"))
if job is None:
    st.caption("No conversion has run yet.")
ui.job_panel(job, key="quantize_job", on_done=show_result, live=show_landed)
