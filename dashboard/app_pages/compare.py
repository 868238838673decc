"""/compare: variants of one or more models side by side: table, trade-off plots, sizes, confusions."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.components.confusion import (
    confusion_diff_heatmap,
    confusion_heatmap,
    recall_change_heatmap,
)
from dashboard.components.tradeoff import size_bars, tradeoff_scatter
from dashboard.services import reads, tables

# heatmaps are the slow part of this page; more than this many are unreadable anyway
MAX_CONFUSIONS = 12
# rows of the per-class change view (one per variant)
MAX_DIFF_ROWS = 40

st.title("Compare")
lab = ui.current()

models = reads.models(lab.db_key)
if models.empty:
    st.info("No model stored yet.", icon=":material/info:")
    st.stop()
names = {int(r["id"]): tables.model_label(r) for r in models.to_dict("records")}
used = ui.take_used_variant()
if used is not None and used[1] in names:
    # "Use this variant" on another page: its model, with it beside the float32 variant
    st.session_state["compare_models"] = [used[1]]
    pool = reads.variants(lab.db_key, model_ids=(used[1],))
    floats = pool[(pool["variant"] == "float32") & (pool["status"] == "ok")]["variant_id"].astype(int).tolist()
    st.session_state[f"compare_variants_{used[1]}"] = list(dict.fromkeys([*floats[:1], used[0]]))
# opens on the model last worked on (its newest variant), not on whichever sorts first
last = tables.last_worked_model(reads.variants(lab.db_key))
model_ids = st.multiselect("models", list(names), default=[last if last in names else list(names)[0]],
                           format_func=names.__getitem__, key="compare_models")
all_variants = reads.variants(lab.db_key, model_ids=tuple(model_ids))
options = ui.variant_options(all_variants, ok_only=False)
# keyed by the model set: adding a model selects its variants too
variant_ids = st.multiselect("variants", list(options), default=list(options), format_func=options.__getitem__,
                             key=f"compare_variants_{'-'.join(map(str, sorted(model_ids)))}")
df = all_variants[all_variants["variant_id"].isin(variant_ids)]
if df.empty:
    st.info("Choose at least one variant (run recipes on the Quantize page first).", icon=":material/info:")
    st.stop()

st.subheader("Which one do I ship on the NPU?")
a, b = st.columns([1, 2])
budget = a.number_input("accuracy budget (points below float)", 0.0, 100.0, tables.NPU_BUDGET_POINTS, 0.1,
                        key="compare_budget", help="the accuracy you accept to lose for the NPU")
timings = reads.benchmarks(lab.db_key, variant_ids=tuple(int(v) for v in df["variant_id"]))
board_timings = timings[timings["board"] != "host"] if not timings.empty else timings
boards_timed = sorted(board_timings["board"].unique()) if not board_timings.empty else []
SMALLEST = "no board: the smallest"
board_choice = b.selectbox("fastest on", [*boards_timed, SMALLEST], key="compare_pick_board",
                           help="boards these variants were timed on (Boards page); the NPU target when timed, "
                                "else the board's fastest target")
latency, where = tables.board_latency(board_timings, board_choice) if board_choice != SMALLEST else ({}, "")
pick = tables.npu_pick(df, float(budget), latency, where)
if pick.variant_id is not None:
    st.success(pick.words, icon=":material/memory:")
else:
    st.warning(pick.words, icon=":material/memory:")

st.dataframe(tables.compare_table(df), hide_index=True, width="stretch")
st.caption("Δ vs float: the variant's accuracy minus the float Keras model's, in percentage points "
           "(negative = accuracy lost). NPU: NPU-ready = every op is 8-bit integer and runs on the i.MX8M Plus "
           "NPU; not NPU-ready = some ops fall back to the CPU (the Inspect page lists them). Size vs float: 0.25 = four times smaller.")
ok = df[df["status"] == "ok"]

left, right = st.columns(2)
left.plotly_chart(tradeoff_scatter(ok, "size_bytes", "accuracy"), key="compare_size_scatter")
has_board = bool(ok["board_p50_ms"].notna().any())
use_board = has_board and bool(st.session_state.get("compare_board_latency"))
latency_axis = "board_p50_ms" if use_board else "host_p50_ms"
right.plotly_chart(tradeoff_scatter(ok, latency_axis, "accuracy",
                                    target="fastest board target" if use_board else "this host, 1 thread"),
                   key="compare_latency_scatter")
right.toggle("board latency instead of host", key="compare_board_latency", disabled=not has_board,
             help=None if has_board else "no chosen variant has been benchmarked on a board yet: "
             "run one on the Boards page")
if not has_board:
    right.caption("Board latency: none of these variants has been timed on a board yet (Boards page).")
st.plotly_chart(size_bars(ok), key="compare_size_bars")

st.subheader("Where the variants' predictions differ from float")
# one model: each variant against its float32; several models have no common baseline
one_model = ok["model_id"].nunique() == 1
matrices = reads.confusions(lab.db_key, tuple(int(v) for v in ok["variant_id"].head(MAX_DIFF_ROWS)))
labels = {int(r.variant_id): f"{r.model} / {r.variant}" for r in ok.itertuples()}
floats = ok[ok["variant"] == "float32"]
base_id = int(floats["variant_id"].iloc[0]) if one_model and len(floats) else None
base_id = base_id if base_id in matrices else None
if base_id is not None and len(matrices) > 1:
    others = {labels[v]: m for v, m in matrices.items() if v != base_id}
    st.plotly_chart(recall_change_heatmap(others, matrices[base_id]), key="compare_recall_change")
    pick = {v: labels[v] for v in matrices if v != base_id}
    chosen = st.selectbox("confusion difference of", list(pick), format_func=pick.__getitem__, key="compare_diff_of")
    left, right = st.columns(2)
    left.plotly_chart(confusion_diff_heatmap(matrices[chosen], matrices[base_id], pick[chosen]),
                      key="compare_confusion_diff")
    right.plotly_chart(confusion_heatmap(matrices[chosen], pick[chosen]), key=f"compare_confusion_{chosen}")
else:
    # no float32 variant to compare with: the matrices themselves, a few to a row
    if base_id is None and one_model and len(ok):
        st.caption("Convert the float32 recipe too to see the differences from float.")
    shown = ok.head(MAX_CONFUSIONS)
    if len(ok) > len(shown):
        st.caption(f"the first {len(shown)} of {len(ok)} variants; choose fewer variants to see the others")
    cols = st.columns(3)
    for i, row in enumerate(shown.itertuples()):
        with cols[i % 3]:
            st.plotly_chart(confusion_heatmap(matrices.get(int(row.variant_id)), f"{row.model} / {row.variant}"),
                            key=f"compare_confusion_{row.variant_id}")
