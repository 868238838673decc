"""qlab's dashboard: wires the pages, each at a stable url_path, and routes `?report=<id>` links."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="qlab", page_icon=":material/tune:", layout="wide")

PAGES = {
    "Lab": [
        st.Page("app_pages/overview.py", title="Overview", icon=":material/dashboard:", url_path="overview",
                default=True),
        st.Page("app_pages/models.py", title="Models & data", icon=":material/upload_file:", url_path="models"),
        st.Page("app_pages/quantize.py", title="Quantize", icon=":material/compress:", url_path="quantize"),
        st.Page("app_pages/compare.py", title="Compare", icon=":material/scatter_plot:", url_path="compare"),
    ],
    "Explain": [
        st.Page("app_pages/debugger.py", title="Debugger", icon=":material/bug_report:", url_path="debugger"),
        st.Page("app_pages/layers.py", title="Cost vs error", icon=":material/stacked_line_chart:", url_path="layers"),
        st.Page("app_pages/qat.py", title="QAT", icon=":material/model_training:", url_path="qat"),
        st.Page("app_pages/inspect.py", title="Inspect", icon=":material/search:", url_path="inspect"),
        st.Page("app_pages/math.py", title="Quantization math", icon=":material/calculate:", url_path="math"),
    ],
    "Share": [
        st.Page("app_pages/boards.py", title="Boards", icon=":material/memory:", url_path="boards"),
        st.Page("app_pages/reports.py", title="Reports", icon=":material/share:", url_path="reports"),
    ],
}

page = st.navigation(PAGES)
# a shared link `/?report=<id>` (on any page) opens that report read-only
if "report" in st.query_params and page.url_path != "reports":
    st.switch_page(PAGES["Share"][1], query_params={"report": st.query_params["report"]})
page.run()
