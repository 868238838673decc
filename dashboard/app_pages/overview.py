"""/ : recent models, variants and jobs, and the best variant per model."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.services import reads, tables
from dashboard.services.jobs import ACTIVE

st.title("qlab")
st.caption("Quantize Keras models to TFLite, find what lost accuracy, time them on the i.MX8M Plus, share.")

lab = ui.current()
variants = reads.variants(lab.db_key)
models = reads.models(lab.db_key)
jobs = lab.store.jobs(limit=15)

c1, c2, c3, c4 = st.columns(4)
c1.metric("models", len(models))
c2.metric("variants", int((variants["status"] == "ok").sum()) if not variants.empty else 0)
c3.metric("failed variants", int((variants["status"] == "failed").sum()) if not variants.empty else 0)
c4.metric("jobs running", sum(j.status in ACTIVE for j in jobs))

st.subheader("Best variant per model")
best = tables.best_per_model(variants)
if best.empty:
    st.info("No converted variant yet. The first start converts the demo model in the background; "
            "or add a model on **Models & data** and run recipes on **Quantize**.", icon=":material/info:")
else:
    st.dataframe(best, hide_index=True, width="stretch")
    st.caption(f"Best for the NPU: NPU-ready, at most {tables.NPU_BUDGET_POINTS:g} point below the float model, "
               "fastest on a board where timed, else the smallest. Compare picks with your own budget and board.")


@st.fragment(run_every=ui.POLL_SECONDS if any(j.status in ACTIVE for j in jobs) else None)
def recent_jobs() -> None:
    st.subheader("Jobs")
    current = lab.store.jobs(limit=15)
    for j in current:
        if j.status in ACTIVE:
            bar, button = st.columns([5, 1])
            where = f" on {j.worker_host}" if j.worker_host else ""
            bar.progress(j.progress, text=f"job #{j.id} ({j.kind}){where}: {j.message or str(j.status)}")
            ui.cancel_button(lab, j, button, key=f"overview_cancel_{j.id}")
    if current:
        st.dataframe(tables.jobs_table(current), hide_index=True, width="stretch")
    else:
        st.caption("No job has run yet.")
    if jobs and any(j.status in ACTIVE for j in jobs) and not any(j.status in ACTIVE for j in current):
        reads.clear()
        st.rerun(scope="app")


recent_jobs()

left, right = st.columns(2)
with left:
    st.subheader("Recent models")
    st.dataframe(models[["id", "name", "format", "input_shape", "created_at"]].head(10) if not models.empty
                 else models, hide_index=True, width="stretch")
with right:
    st.subheader("Recent variants")
    if variants.empty:
        st.caption("none yet")
    else:
        recent = variants.sort_values("updated_at", ascending=False).head(10)
        st.dataframe(tables.compare_table(recent)[["id", "model", "variant", "accuracy (%)", "NPU", "size (KiB)", "status"]],
                     hide_index=True, width="stretch")
