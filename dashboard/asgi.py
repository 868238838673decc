"""The one server: the pages, the REST API under /api/v1, bearer auth, and the lifespan (agent, lab)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import streamlit as st
from starlette.middleware import Middleware

from dashboard.api.http import BearerAuth
from dashboard.api.routes import routes
from dashboard.services import lifecycle
from dashboard.services.report_links import ReportLinkCookie


def _store() -> Any:
    return lifecycle.current_lab().store


@asynccontextmanager
async def lifespan(app: st.App):  # type: ignore[no-untyped-def]
    """Starts the local board agent and opens the lab (store, job runner) before the first request."""
    running = await lifecycle.start()
    try:
        yield {"lab": running.lab}
    finally:
        lifecycle.stop(running)


app = st.App("streamlit_app.py", routes=routes(),
             middleware=[Middleware(ReportLinkCookie), Middleware(BearerAuth, store=_store)], lifespan=lifespan)
