"""/quantize: pick a model, a dataset and recipes; convert as a background job; see the results."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.services import reads, tables
from qcore.qtyping import Job
from qcore.recipes import RECIPES

st.title("Quantize")
lab = ui.current()

c1, c2 = st.columns(2)
with c1:
    model_id = ui.pick_model(lab, key="quantize_model")
with c2:
    dataset_id = ui.pick_dataset(lab, key="quantize_dataset")

st.markdown("**Recipes**")
cols = st.columns(3)
chosen = []
for i, recipe in enumerate(RECIPES.values()):
    with cols[i % 3]:
        if st.checkbox(recipe.name, value=recipe.name in ("float32", "int8"), key=f"quantize_recipe_{recipe.name}"):
            chosen.append(recipe.name)
        st.caption(recipe.summary)

c1, c2 = st.columns(2)
samples = c1.number_input("calibration samples", min_value=1, max_value=10_000, value=100, step=10,
                          key="quantize_calibration", help="the first N training samples, in file order")
bench = c2.checkbox("time each variant on this host afterwards", value=True, key="quantize_bench")

if st.button("Run", type="primary", key="quantize_run", disabled=model_id is None or dataset_id is None):
    if not chosen:
        st.error("choose at least one recipe")
    else:
        with ui.guard("could not start"):
            lab.runner.submit("convert", {"model_id": model_id, "dataset_id": dataset_id, "recipes": chosen,
                                          "calibration_samples": int(samples), "bench": bench})
            st.rerun()


def show_result(job: Job) -> None:
    result = job.result or {}
    ids = tuple(int(v["variant_id"]) for v in result.get("variants", []) if v.get("variant_id") is not None)
    st.caption(f"{result.get('model', '')}: float accuracy {ui.pct(result.get('float_accuracy'))}")
    if ids:
        st.dataframe(tables.compare_table(reads.variants(lab.db_key, variant_ids=ids)), hide_index=True,
                     width="stretch")
    for v in result.get("variants", []):
        if v.get("status") == "failed":
            st.warning(f"{v['recipe']}: {v.get('error')}", icon=":material/warning:")


st.subheader("Latest conversion")
job = ui.latest_job(lab, ("convert", "demo"))
if job is None:
    st.caption("No conversion has run yet.")
ui.job_panel(job, key="quantize_job", on_done=show_result)
