"""/reports: make a report, open one read-only with `?report=<id>`, export HTML or a bundle, import a bundle."""

from __future__ import annotations

import streamlit as st

from dashboard import auth, ui
from dashboard.services import access, follow, reads, report_links, report_view
from dashboard.services.access import Action
from qcore.lab import reports
from qcore.qtyping import QlabError, npu_mark

lab = ui.current()
FLASH_KEY = "reports_flash"


def link(report_id: str) -> str:
    """The report's link: QLAB_PUBLIC_URL's (or this server's own address), never what a request claims."""
    return report_links.url(report_id)


def show(report_id: str) -> None:
    """The read-only view of one report, from its snapshot."""
    try:
        report = reads.report(lab.db_key, report_id)
    except QlabError as exc:
        st.error(f"{ui.md(exc)}: the link may be mistyped, or the report was made on another qlab server",
                 icon=":material/error:")
        return
    content = report["content"]
    st.title(ui.md(report["title"]))
    st.caption(f"report {report['id']} · made {str(report['created_at'])[:19]} · read-only")
    if report["notes"]:
        st.markdown(report["notes"])
    st.dataframe(reports.summary_table(content), hide_index=True, width="stretch")
    st.subheader("Will it run on the NPU?")
    for name, ready, text in reports.npu_lines(content):
        colour = "green" if ready else ("orange" if ready is False else "gray")
        st.markdown(f":{colour}-badge[{npu_mark(ready)}] **{ui.md(name)}**: {ui.md(text)}")
    # the same sections, in the same order, as the HTML export (qcore.lab.reports.render_html)
    boards = reports.board_accuracy_table(content)
    if not boards.empty:
        st.subheader("On-board accuracy")
        st.dataframe(boards, hide_index=True, width="stretch")
    latency = reports.latency_table(content)
    if not latency.empty:
        st.subheader("Latency")
        st.dataframe(latency, hide_index=True, width="stretch")
    for caption, table in reports.op_cost_tables(content):
        st.subheader("Per-layer error and time")
        st.caption(caption)
        st.dataframe(table, hide_index=True, width="stretch")
    debugged = reports.debugger_tables(content)
    if debugged:
        st.subheader("Debugger: the worst layers")
    for caption, table in debugged:
        st.caption(caption)
        st.dataframe(table, hide_index=True, width="stretch")
    qat = reports.qat_table(content)
    if not qat.empty:
        st.subheader("Quantization-aware training")
        st.dataframe(qat, hide_index=True, width="stretch")
    figures = report_view.figures(content)
    for i, (caption, fig) in enumerate(figures):
        if not caption.startswith("Confusion"):
            st.markdown(f"**{ui.md(caption)}**")
            st.plotly_chart(fig, key=f"reports_fig_{i}")
    cols = st.columns(3)  # the confusions as small multiples, three to a row
    confusions = [(i, fig) for i, (caption, fig) in enumerate(figures) if caption.startswith("Confusion")]
    for n, (i, fig) in enumerate(confusions):
        with cols[n % 3]:
            st.plotly_chart(fig, key=f"reports_fig_{i}")
    c1, c2 = st.columns(2)
    c1.download_button("Download HTML", data=lambda: report_view.html(report), file_name=f"qlab-report-{report_id}.html",
                       mime="text/html", key="reports_dl_html", on_click="ignore", icon=":material/download:")
    c2.download_button("Download bundle (.zip)", data=lambda: reports.export_bundle(lab.store, report_id),
                       file_name=f"qlab-report-{report_id}.zip", mime="application/zip", key="reports_dl_zip",
                       on_click="ignore", icon=":material/folder_zip:")


report_id = auth.report_scope() or st.query_params.get("report")
if report_id:
    show(report_id)
    st.stop()

st.title("Reports")
if not auth.can(Action.LIST_REPORTS):
    # a viewer reads reports by their links only: the list would hand out every other report's link
    st.info("Open a report from the link someone shared with you.", icon=":material/link:")
    st.stop()
variants = reads.variants(lab.db_key)
options = ui.variant_options(variants, ok_only=False)
with st.form("reports_new", clear_on_submit=False):
    st.subheader("Make a report")
    title = st.text_input("title", key="reports_title")
    notes = st.text_area("notes (markdown)", key="reports_notes")
    chosen = st.multiselect("variants", list(options), format_func=options.__getitem__, key="reports_variants")
    if st.form_submit_button("Make report", type="primary"):
        with ui.guard("cannot make the report"):
            access.check(auth.who(), Action.REPORT, what="making a report")
            new_id = reports.make_report(lab.store, title, notes, chosen)
            reads.clear()
            st.success(f"report made: [{link(new_id)}]({link(new_id)})", icon=":material/check_circle:")

if done := follow.take_flash(st.session_state, FLASH_KEY):
    st.success(done, icon=":material/check_circle:")
st.subheader("All reports")
listing = reads.reports(lab.db_key)
if listing.empty:
    st.caption("none yet")
for r in listing.itertuples():
    st.markdown(f"- [{ui.md(r.title)}]({link(r.id)}) · {str(r.created_at)[:16]}")

st.subheader("Import a bundle")
with st.form("reports_import", clear_on_submit=True):
    bundle = st.file_uploader("a .zip exported by a qlab server", type=["zip"], key="reports_bundle")
    if st.form_submit_button("Import"):
        if bundle is None:
            st.error("choose a bundle file first")
        else:
            with ui.guard(f"cannot import {ui.md(bundle.name)}"):
                access.check(auth.who(), Action.IMPORT, what="importing a report bundle")
                new_id = reports.import_bundle(lab.store, bundle.getvalue())
                reads.clear()
                # rerun so "All reports" above lists it; the message waits for that run
                follow.flash(st.session_state, FLASH_KEY, f"imported as [{link(new_id)}]({link(new_id)})")
                st.rerun()
