"""/layers: per-layer error meets per-op time: which layers cost accuracy, which cost time, what keeping float costs."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.components.op_cost import cost_error_scatter
from dashboard.services import op_cost_view, reads
from qcore.explain.debugger import DEFAULT_THRESHOLD

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
    threshold = c.number_input("suspect threshold", 0.0, 100.0, float(DEFAULT_THRESHOLD), 0.05,
                               key="layers_threshold")
    board, target = sources[label]
    view = op_cost_view.load(lab.db_key, int(variant_id), board, target, str(lab.data_dir))

    st.markdown(op_cost_view.caption(view))
    st.plotly_chart(cost_error_scatter(view.cost.table, threshold, view.cost.time_source, view.error_source),
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
