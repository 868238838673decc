"""/inspect: the ops and tensors of any variant (dtype, scale, zero point) and the i.MX8M Plus NPU lint."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.components.inspection import op_count_bars
from dashboard.services import layers, reads
from dashboard.services.inspection import op_counts, ops_table, tensors_table

SEVERITY_ICON = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}

st.title("Inspect")
lab = ui.current()
options = ui.variant_options(reads.variants(lab.db_key))
if not options:
    st.info("No converted variant yet.", icon=":material/info:")
    st.stop()
variant_id = st.selectbox("variant", list(options), format_func=options.__getitem__, key="inspect_variant")

with ui.guard("cannot inspect this variant"):
    info = reads.inspection(lab.db_key, int(variant_id))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("size", ui.kib(info.size_bytes))
    c2.metric("ops", len(info.ops))
    c3.metric("tensors", len(info.tensors))
    c4.metric("verdict", "integer-only" if info.integer_only else "float ops left")
    if not info.integer_only:
        st.caption(info.verdict)

    st.subheader("i.MX8M Plus NPU lint")
    if not info.lint:
        st.success("nothing to report: this model should run whole on the NPU", icon=":material/check_circle:")
    for finding in info.lint:
        show = {"error": st.error, "warning": st.warning}.get(finding.severity, st.info)
        show(f"**{finding.code}**: {finding.message}", icon=SEVERITY_ICON.get(finding.severity))

    ops = ops_table(info)
    st.subheader("Ops")
    st.plotly_chart(op_count_bars(op_counts(ops)), key="inspect_op_counts")
    a, b, c = st.columns([2, 2, 1])
    text = a.text_input("filter by layer or tensor name", key="inspect_filter")
    kinds = b.multiselect("op types", sorted(set(ops["op"])), key="inspect_ops")
    float_only = c.checkbox("float ops only", key="inspect_float_only")
    shown = layers.filter_rows(ops, text, kinds, name_col="outputs", op_col="op")
    if float_only:
        shown = shown[shown["computes in"] == "float"]
    st.caption(f"{len(shown)} of {len(ops)} ops")
    st.dataframe(shown, hide_index=True, width="stretch", key="inspect_ops_table")
    st.subheader("Tensors")
    tensors = tensors_table(info)
    shown_t = layers.filter_rows(tensors, text, name_col="name")
    st.caption(f"{len(shown_t)} of {len(tensors)} tensors")
    st.dataframe(shown_t, hide_index=True, width="stretch", key="inspect_tensors_table")
