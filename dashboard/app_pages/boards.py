"""/boards: register boards, see their health, benchmark variants on npu/cpu/cpu-plain, on-board accuracy."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.components.latency import latency_bars
from dashboard.services import boards_view, reads, tables
from qcore.qtyping import Job

st.title("Boards")
st.caption("Each board runs `python3 -m board_agent`. The NPU (VX delegate) compiles the graph on the first "
           "inference, so the first run is shown apart from the steady state.")
lab = ui.current()

st.subheader("Registered boards")
boards = reads.boards(lab.db_key)
if boards:
    if st.button("Refresh health", key="boards_refresh"):
        reads.board_health.clear()
    st.dataframe(boards_view.health_table(reads.board_health(lab.db_key)), hide_index=True, width="stretch")
else:
    st.info("No board registered yet.", icon=":material/info:")

with st.expander("Register a board", expanded=not boards), st.form("boards_add", clear_on_submit=True):
    a, b = st.columns(2)
    name = a.text_input("name", key="boards_add_name", placeholder="imx8mp-lab-1")
    url = b.text_input("agent URL", key="boards_add_url", placeholder="http://imx8mp.local:8765")
    token = st.text_input("token (stored once, never shown again)", type="password", key="boards_add_token")
    if st.form_submit_button("Register"):
        with ui.guard("cannot register the board"):
            lab.store.add_board(name.strip(), url.strip(), token.strip() or None)
            reads.clear()
            st.success(f"board {name.strip()!r} registered")

if not boards:
    st.stop()
names = [b.name for b in boards]

st.subheader("Benchmark on a board")
variants = reads.variants(lab.db_key)
options = ui.variant_options(variants)
with st.form("boards_bench"):
    a, b = st.columns([1, 2])
    board = a.selectbox("board", names, key="boards_bench_board")
    chosen = b.multiselect("variants", list(options), format_func=options.__getitem__, key="boards_bench_variants")
    a, b, c, d = st.columns(4)
    targets = a.multiselect("targets", list(boards_view.TARGETS), default=["cpu"], key="boards_bench_targets")
    threads = b.number_input("threads", 1, 64, 1, key="boards_bench_threads")
    runs = c.number_input("runs", 1, 10_000, 50, key="boards_bench_runs")
    warmup = d.number_input("warmup", 0, 1000, 5, key="boards_bench_warmup")
    left, right = st.columns(2)
    bench_clicked = left.form_submit_button("Benchmark", type="primary")
    acc_clicked = right.form_submit_button("On-board accuracy (first target)")
if bench_clicked or acc_clicked:
    with ui.guard("could not start"):
        if not chosen:
            raise ValueError("choose at least one variant")
        if not targets:
            raise ValueError("choose at least one target")
        if bench_clicked:
            lab.runner.submit("board_bench", {"board": board, "variant_ids": chosen, "targets": targets,
                                              "threads": int(threads), "runs": int(runs), "warmup": int(warmup)})
        else:
            lab.runner.submit("board_accuracy", {"board": board, "variant_ids": chosen, "target": targets[0],
                                                 "threads": int(threads)})
        st.rerun()


def show_bench(job: Job) -> None:
    for r in (job.result or {}).get("results", []):
        for target, reason in {**r.get("failed", {}), **r.get("skipped", {})}.items():
            st.warning(f"{r['variant']} on {target}: {reason}", icon=":material/warning:")


st.markdown("**Board jobs**")
ui.job_panel(ui.latest_job(lab, ("board_bench", "board_accuracy")), key="boards_job", on_done=show_bench)
recent = [j for j in lab.store.jobs(limit=50) if j.kind in ("board_bench", "board_accuracy", "host_bench")][:8]
if recent:
    st.dataframe(tables.jobs_table(recent), hide_index=True, width="stretch")

st.subheader("Latency per variant and target")
shown = st.selectbox("board", ["all boards", *names, "host"], key="boards_results_board")
bench = reads.benchmarks(lab.db_key, board=None if shown == "all boards" else shown)
plot = tables.bench_for_plot(bench, variants)
st.plotly_chart(latency_bars(plot), key="boards_latency")
st.dataframe(boards_view.bench_rows(plot), hide_index=True, width="stretch")

st.subheader("On-board accuracy and its drift from the host")
ids = tuple(int(v) for v in variants["variant_id"]) if not variants.empty else ()
drift = tables.drift_table(reads.board_evaluations(lab.db_key, ids), variants) if ids else None
if drift is None or drift.empty:
    st.caption("No on-board accuracy yet: choose variants above and press *On-board accuracy*.")
else:
    st.dataframe(drift, hide_index=True, width="stretch")
