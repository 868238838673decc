"""The Debugger page's repair section: run a repair as a job, see the per-layer error before and after each repair."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.components.repair import stage_bars
from dashboard.services import reads, repair_view
from dashboard.services.debug_view import engine_name
from dashboard.services.lab import Lab
from qcore import defaults
from qcore.explain.repairs import estimate_conversions
from qcore.jobs.contract import RepairParams


def show(lab: Lab, model_id: int, dataset_id: int, engine: str) -> None:
    """Widgets → one repair job → the repaired variant beside the plain one, its stages, steps and skips."""
    st.subheader("Repair: stay integer")
    st.caption("Keeping layers float sends them to the CPU. Repairs change the Keras model before the recipe "
               "instead (cross-layer equalization, bias correction, AdaRound), so every op stays 8-bit integer "
               "and per-tensor where the recipe is.")
    a, b = st.columns([3, 1])
    methods = a.multiselect("repairs", list(repair_view.METHOD_WORDS), default=list(defaults.REPAIR_METHODS),
                            key="debugger_repair_methods",
                            help=" · ".join(repair_view.METHOD_WORDS.values()))
    recipe = b.selectbox("recipe", repair_view.RECIPES, key="debugger_repair_recipe")
    if methods:
        st.caption(f"Runs as a job with the {engine_name(engine)}: about "
                   f"{estimate_conversions(methods):.1f} conversions' time (both variants, the repairs, and the "
                   "per-layer error before and after each repair).")
    if st.button("Repair", type="primary", key="debugger_repair_run", disabled=not methods):
        with ui.guard("could not start"):
            ui.submit(lab, RepairParams(model_id=int(model_id), dataset_id=int(dataset_id),
                                         methods=tuple(methods), recipe=recipe, engine=engine))
            st.rerun()
    ui.job_panel(ui.latest_job(lab, ("repair",)), key="debugger_repair_job")

    variants = reads.variants(lab.db_key, model_ids=(model_id,))
    choices = repair_view.options(variants)
    if not choices:
        st.caption("No repaired variant of this model yet.")
        return
    variant_id = st.selectbox("repaired variant", list(choices), format_func=choices.__getitem__,
                              key="debugger_repair_variant")
    row = variants[variants["variant_id"] == variant_id].iloc[0]
    st.dataframe(repair_view.side_by_side(variants, row), hide_index=True, width="stretch")
    ui.npu_verdict(row, str(row["variant"]))
    frame, stages, metric = repair_view.stage_frame(row)
    top_n = st.number_input("show N layers", 0, 10_000, 20, key="debugger_repair_top_n", help="0 = every layer")
    st.plotly_chart(stage_bars(frame, stages, metric, int(top_n), title=f"per-layer error · {row['variant']}"),
                    key="debugger_repair_bars")
    if not frame.empty:
        st.dataframe(frame, hide_index=True, width="stretch", key="debugger_repair_table")
    st.dataframe(repair_view.steps_table(row), hide_index=True, width="stretch")
    skipped = repair_view.skipped_table(row)
    if not skipped.empty:
        st.markdown(f"**Left alone by name** ({len(skipped)})")
        st.dataframe(skipped, hide_index=True, width="stretch")
    ui.use_variant_button(int(variant_id), int(model_id), key="debugger_use_repair")
