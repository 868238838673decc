"""qlab's dashboard: signs the user in, wires the pages their role may see, and routes `?report=<id>` links."""

from __future__ import annotations

import streamlit as st

from dashboard import auth
from dashboard.services import access
from dashboard.services.access import Action
from qcore.store import ACTOR

st.set_page_config(page_title="qlab", page_icon=":material/tune:", layout="wide")

who = auth.current()
st.session_state["auth_principal"] = who
ACTOR.set(who.email)  # rows this run writes (and the jobs it queues) record who made them

# (section, file, title, icon, url_path, the action it is for: access.NEEDS says which role that takes)
PAGES = [
    ("Lab", "app_pages/overview.py", "Overview", ":material/dashboard:", "overview", Action.READ),
    ("Lab", "app_pages/models.py", "Models & data", ":material/upload_file:", "models", Action.UPLOAD),
    ("Lab", "app_pages/quantize.py", "Quantize", ":material/compress:", "quantize", Action.RUN),
    ("Lab", "app_pages/compare.py", "Compare", ":material/scatter_plot:", "compare", Action.READ),
    ("Explain", "app_pages/debugger.py", "Debugger", ":material/bug_report:", "debugger", Action.RUN),
    ("Explain", "app_pages/layers.py", "Cost vs error", ":material/stacked_line_chart:", "layers", Action.READ),
    ("Explain", "app_pages/qat.py", "QAT", ":material/model_training:", "qat", Action.RUN),
    ("Explain", "app_pages/inspect.py", "Inspect", ":material/search:", "inspect", Action.READ),
    ("Explain", "app_pages/math.py", "Quantization math", ":material/calculate:", "math", Action.READ),
    ("Share", "app_pages/boards.py", "Boards", ":material/memory:", "boards", Action.RUN),
    ("Share", "app_pages/reports.py", "Reports", ":material/share:", "reports", Action.READ),
    ("Share", "app_pages/settings.py", "Settings", ":material/settings:", "settings", Action.TOKENS),
]

if auth.enabled():
    with st.sidebar:
        st.caption(f"{who.email} · {who.role}")
        st.button("Sign out", on_click=st.logout, key="auth_sign_out", icon=":material/logout:")

# a viewer who opened a report link (this request's, or the one this browser session was pinned to)
# sees that report and nothing else, whatever path or query they type next
scoped = auth.report_scope()
if scoped is not None:
    st.query_params["report"] = scoped
    st.navigation([st.Page("app_pages/reports.py", title="Report", icon=":material/share:", url_path="reports",
                           default=True)], position="hidden").run()
    st.stop()

report_link = st.query_params.get("report")
nav: dict[str, list[st.Page]] = {}
reports_page = None
for section, path, title, icon, url_path, action in PAGES:
    if not access.allowed(who, action):
        continue
    page_obj = st.Page(path, title=title, icon=icon, url_path=url_path, default=url_path == "overview")
    if url_path == "reports":
        reports_page = page_obj
    nav.setdefault(section, []).append(page_obj)

page = st.navigation(nav)
# a shared link `/?report=<id>` (on any page) opens that report read-only
if report_link and page.url_path != "reports" and reports_page is not None:
    st.switch_page(reports_page, query_params={"report": report_link})
page.run()
