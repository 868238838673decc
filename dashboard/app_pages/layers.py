"""/layers: per-layer error meets per-op time: which layers cost accuracy, which cost time, what keeping float costs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import ui
from dashboard.components.op_cost import cost_error_scatter
from dashboard.services import debug_view, op_cost_view, reads
from qcore.engines import get_engine

st.title("Cost vs error")
st.caption("Each op of the .tflite with the debugger's error (rmse/scale) beside its time on a board, "
           "and what keeping it float would cost on the CPU. Every time says where it comes from: "
           "a board profile (benchmark_model), the NPU driver's profile, or an estimate.")
lab = ui.current()
options = ui.variant_options(reads.variants(lab.db_key))
if not options:
    st.info("No converted variant yet.", icon=":material/info:")
    st.stop()

a, b, c = st.columns([2, 2, 1])
variant_id = a.selectbox("variant", list(options), format_func=options.__getitem__, key="layers_variant")
with ui.guard("cannot read this variant's timings"):
    sources = op_cost_view.choices(lab.db_key, int(variant_id))
    label = b.selectbox("time from", list(sources), key="layers_source",
                        help="boards with a stored per-op profile (Boards page: bench with 'per-op profile'), "
                             "or the host estimate from each op's MACs and bytes")
    board, target = sources[label]
    view = op_cost_view.load(lab.db_key, int(variant_id), board, target, str(lab.data_dir))
    run_id = view.cost.debug_run_id
    engine = view.error_engine or "tf"
    # the Debugger page's rule on the same run: one suspect threshold across pages
    suggested, _ = debug_view.threshold(reads.layer_stats(lab.db_key, int(run_id)) if run_id is not None
                                        else pd.DataFrame(), engine)
    threshold = c.number_input(f"suspect threshold ({get_engine(engine).metric.name})", 0.0, None,
                               float(suggested), 0.05, key=f"layers_threshold_{run_id}",
                               help="the Debugger page's threshold for the same run: from this model's own "
                                    "spread on its engine's scale")

    st.markdown(op_cost_view.caption(view))
    st.plotly_chart(cost_error_scatter(view.cost.table, threshold, view.cost.time_source, view.error_source,
                                       scale=get_engine(engine).metric),
                    key="layers_scatter")
    st.dataframe(view.table, hide_index=True, width="stretch", key="layers_table")
    if not view.cost.unmapped.empty:
        st.markdown("**Time no single op owns**")
        st.dataframe(op_cost_view.unmapped(view.cost), hide_index=True, width="stretch")
    for note in view.cost.notes:
        st.caption(note)

    st.subheader("Model Explorer")
    st.download_button("Download node data (zip)", view.zip_bytes, file_name=view.zip_name,
                       mime="application/zip", key="layers_node_data")
    if view.explorer_link:
        st.link_button("Open in Model Explorer", view.explorer_link, key="layers_explorer_link",
                       help=f"needs Model Explorer running on the dashboard's machine: {view.explorer_server}")
        st.caption(f"The link needs Model Explorer running on this machine: `{view.explorer_server}`. "
                   "Elsewhere, unzip the download and run:")
    else:
        st.caption("Install `ai-edge-model-explorer`, unzip the download, then open the graph with every metric "
                   "loaded:")
    st.code(view.explorer_command, language="bash")
