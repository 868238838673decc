"""/boards: register boards, see their health, benchmark variants on npu/cpu/cpu-plain, on-board accuracy."""

from __future__ import annotations

import streamlit as st

from dashboard import auth, ui
from dashboard.components.latency import latency_bars
from dashboard.services import access, boards_view, follow, reads, tables
from dashboard.services.access import Action
from qcore.jobs.contract import BoardAccuracyParams, BoardBenchParams, BoardMatrixParams
from qcore.qtyping import Job

st.title("Boards")
st.caption("Each board runs `python3 -m board_agent`. The NPU (VX delegate) compiles the graph on the first "
           "inference, so the first run is shown apart from the steady state.")
lab = ui.current()

FLASH_KEY = "boards_flash"
st.subheader("Registered boards")
if done := follow.take_flash(st.session_state, FLASH_KEY):
    st.success(done, icon=":material/check_circle:")
boards = reads.boards(lab.db_key)
if boards:
    if st.button("Refresh health", key="boards_refresh"):
        reads.board_health.clear()
        reads.board_labels.clear()
        reads.health_history.clear()
    health_rows = reads.board_health(lab.db_key)
    st.dataframe(boards_view.health_table(health_rows, boards_view.labels_by_board(reads.board_labels(lab.db_key))),
                 hide_index=True, width="stretch")
    for note in boards_view.health_notes(health_rows):  # in full: the table's cells cut long reasons short
        st.caption(ui.md(note))
else:
    st.info("No board registered yet.", icon=":material/info:")

if auth.can(Action.BOARDS):  # a board's URL decides where teammates' models are sent: admins only
    with st.expander("Register a board", expanded=not boards), st.form("boards_add", clear_on_submit=True):
        a, b = st.columns(2)
        name = a.text_input("name", key="boards_add_name", placeholder="imx8mp-lab-1")
        url = b.text_input("agent URL", key="boards_add_url", placeholder="http://imx8mp.local:8765")
        token = st.text_input("token (stored once, never shown again)", type="password", key="boards_add_token")
        if st.form_submit_button("Register"):
            with ui.guard("cannot register the board"):
                access.register_board(lab, auth.who(), name.strip(), url.strip(), token.strip() or None)
                reads.clear()
                reads.board_health.clear()
                # rerun so the table above shows the new board; the message waits for that run
                follow.flash(st.session_state, FLASH_KEY, f"board {ui.md(repr(name.strip()))} registered")
                st.rerun()

if not boards:
    st.stop()
names = [b.name for b in boards]

st.subheader("Benchmark on a board")
variants = reads.variants(lab.db_key)
options = ui.variant_options(variants)
health_by_board = {h.board.name: h for h in reads.board_health(lab.db_key)}
a, b = st.columns([1, 2])
# outside the form, so the targets below follow the chosen board's health
board = a.selectbox("board", names, key="boards_bench_board")
chosen = b.multiselect("variants", list(options), format_func=options.__getitem__, key="boards_bench_variants")
choices = boards_view.target_choices(health_by_board.get(board))
cols = st.columns(len(choices))
targets = [t for (t, ok, why), col in zip(choices, cols, strict=True)
           if col.checkbox(t, value=ok and t == "cpu", disabled=not ok,
                           help=boards_view.TARGET_HELP.get(t, "") + ("" if ok else f" (unavailable: {why})"),
                           key=f"boards_bench_target_{t}_{board}")]
for t, ok, why in choices:
    if not ok:
        st.caption(f"{t} is unavailable on {board}: {why}")
a, b, c, d = st.columns(4)
threads = a.number_input("threads", 1, 64, 1, key="boards_bench_threads")
runs = b.number_input("runs", 1, 10_000, 50, key="boards_bench_runs")
warmup = c.number_input("warmup", 0, 1000, 5, key="boards_bench_warmup")
can_profile, no_profile = boards_view.profile_choice(health_by_board.get(board))
profile = d.checkbox("per-op profile", key=f"boards_bench_profile_{board}", disabled=not can_profile,
                     help="benchmark_model --enable_op_profiling; on the NPU also the driver's per-operation cycles"
                          + ("" if can_profile else f" (unavailable: {no_profile})"))
if not can_profile:
    st.caption(f"per-op profile is unavailable on {board}: {no_profile}. Timings still run; the Cost vs error "
               "page then shows an estimate.")
left, right = st.columns(2)
bench_clicked = left.button("Benchmark", type="primary", key="boards_bench_go")
acc_clicked = right.button("On-board accuracy", key="boards_acc_go")
if bench_clicked or acc_clicked:
    with ui.guard("could not start"):
        if not chosen:
            raise ValueError("choose at least one variant")
        if not targets:
            raise ValueError(f"choose at least one target that {board} can run")
        if bench_clicked:
            ui.submit(lab, BoardBenchParams(board=board, variant_ids=tuple(chosen), targets=tuple(targets),
                                               threads=int(threads), runs=int(runs), warmup=int(warmup),
                                               profile=bool(profile)))
        else:
            ui.submit(lab, BoardAccuracyParams(board=board, variant_ids=tuple(chosen), targets=tuple(targets),
                                                  threads=int(threads)))
        st.rerun()

st.subheader("Matrix across a pool of boards")
st.caption("A pool is a label query: `imx8mp`, `soc=imx8mp tag=lab`, or `*`. Labels marked * come from the "
           "boards' health (SoC, BSP, runtime); add tags with `qlab board label NAME tag=lab`.")
a, b = st.columns([2, 1])
pool = a.text_input("pool", value="*", key="boards_matrix_pool")
placement = b.radio("run each cell", ["each", "any"], horizontal=True, key="boards_matrix_placement",
                    format_func={"each": "on every board", "any": "on any free board"}.__getitem__)
members: list[str] = []
with ui.guard("bad pool query"):
    members = reads.pool_members(lab.db_key, pool)
    st.caption(f"matches {', '.join(members) or 'no board'}")
a, b = st.columns([2, 1])
m_variants = a.multiselect("matrix rows: one per variant", list(options), format_func=options.__getitem__,
                           key="boards_matrix_variants")
m_targets = b.multiselect("targets", list(boards_view.TARGETS), default=["cpu"], key="boards_matrix_targets")
if st.button("Run the matrix", key="boards_matrix_go", disabled=not members):
    with ui.guard("could not start"):
        if not m_variants or not m_targets:
            raise ValueError("choose at least one variant and one target")
        ui.submit(lab, BoardMatrixParams(pool=pool, placement=placement, variant_ids=tuple(m_variants),
                                            targets=tuple(m_targets), threads=int(threads), runs=int(runs),
                                            warmup=int(warmup)))
        st.rerun()


def show_bench(job: Job) -> None:
    """What a board job did not do, and why: one line per reason with the cells it hit (not one per cell)."""
    result = job.result or {}
    for line in boards_view.reason_lines(result.get("reasons", [])):
        st.warning(ui.md(line), icon=":material/warning:")
    reads.clear()


st.markdown("**Board jobs**")
ui.job_panel(ui.latest_job(lab, ("board_bench", "board_accuracy", "board_matrix")), key="boards_job",
             on_done=show_bench)
recent = [j for j in lab.store.jobs(limit=50)
          if j.kind in ("board_bench", "board_accuracy", "board_matrix", "host_bench")][:8]
if recent:
    st.dataframe(tables.jobs_table(recent), hide_index=True, width="stretch")

st.subheader("Latency per variant and target")
shown = st.selectbox("board", ["all boards", *names, "host"], key="boards_results_board")
bench = reads.benchmarks(lab.db_key, board=None if shown == "all boards" else shown)
plot = tables.bench_for_plot(bench, variants)
st.caption("Only benchmarked variants; p50 in ms per board and target (this host: LiteRT on this machine's CPU).")
st.dataframe(boards_view.latency_matrix(plot), hide_index=True, width="stretch", key="boards_latency_matrix")
st.plotly_chart(latency_bars(plot), key="boards_latency")
with st.expander("every timing"):
    st.dataframe(boards_view.bench_rows(plot), hide_index=True, width="stretch")

st.subheader("Runs: every cell, and the spread across a pool's boards")
runs_df = reads.board_runs(lab.db_key)
if runs_df.empty:
    st.caption("No board run yet.")
else:
    labels = {int(r.run_id): f"run {r.run_id}: {r.kind} on {r.pool} ({r.placement}), {r.cells} cells, {r.failed} failed"
              for r in runs_df.itertuples(index=False)}
    # a run that just ended (a 24-cell matrix) is the one shown, not run 1
    follow.follow_newest(st.session_state, int(runs_df["run_id"].max()), "boards_run", "boards_seen_newest_run")
    run_id = st.selectbox("run", list(labels), format_func=labels.__getitem__, key="boards_run")
    spread = boards_view.spread_table(reads.matrix_spread(lab.db_key, int(run_id)), variants)
    if not spread.empty and int(spread["boards"].max()) > 1:
        st.markdown("**p50 per board, and min / median / max across the pool**")
        st.dataframe(spread, hide_index=True, width="stretch")
    st.dataframe(boards_view.cells_table(reads.board_cells(lab.db_key, int(run_id)), variants), hide_index=True,
                 width="stretch")

with st.expander("Health history (last checks per board)"):
    n = st.number_input("checks per board", 1, 200, 10, key="boards_history_n")
    st.dataframe(reads.health_history(lab.db_key, int(n)), hide_index=True, width="stretch")

st.subheader("On-board accuracy and its drift from the host")
ids = tuple(int(v) for v in variants["variant_id"]) if not variants.empty else ()
drift = tables.drift_table(reads.board_evaluations(lab.db_key, ids), variants) if ids else None
if drift is None or drift.empty:
    st.caption("No on-board accuracy yet: choose variants above and press *On-board accuracy*.")
else:
    st.dataframe(drift, hide_index=True, width="stretch")
