"""Report links: their public URL (never from a request's Host header) and the scope a `?report=` link gives.

A report id is an unguessable token, so the link is the capability. A viewer who opens one is
pinned to that report for the rest of the browser session: the server sets an HttpOnly cookie when
the page is fetched (`ReportLinkCookie`), and the dashboard shows such a viewer that report and
nothing else, whatever path or query they type next. Signing out clears the pin.
"""

from __future__ import annotations

import os
import re

import streamlit as st
from starlette.datastructures import MutableHeaders, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# QLAB_PUBLIC_URL=https://qlab.example.com: the address report links name (a reverse proxy's)
ENV_PUBLIC_URL = "QLAB_PUBLIC_URL"
# the cookie that pins a viewer's browser session to the report link it opened
COOKIE = "qlab_report"
# what a report id looks like (secrets.token_urlsafe); anything else never becomes a cookie
_REPORT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# paths that never carry a page's report link: the API, Streamlit's own endpoints, sign-in
_NOT_PAGES = ("/api", "/_stcore", "/static", "/media", "/component", "/oauth2callback", "/auth")


def base_url() -> str:
    """Where the server is reached: QLAB_PUBLIC_URL when set, else the address it binds (QLAB_HOST, QLAB_PORT)."""
    public = os.environ.get(ENV_PUBLIC_URL, "").strip().rstrip("/")
    if public:
        return public
    host = os.environ.get("QLAB_HOST") or "127.0.0.1"
    port = os.environ.get("QLAB_PORT") or _streamlit_port()
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def _streamlit_port() -> str:
    try:
        return str(st.get_option("server.port"))
    except Exception:  # outside a Streamlit server: its default
        return "8501"


def url(report_id: str) -> str:
    """The absolute link of a report (`<base>/reports?report=<id>`)."""
    return f"{base_url()}/reports?report={report_id}"


def valid_id(text: str | None) -> str | None:
    """`text` when it looks like a report id, else None."""
    return text if text and _REPORT_ID.match(text) else None


class ReportLinkCookie:
    """ASGI middleware: a page fetched with `?report=<id>` pins the browser session to that report (an
    HttpOnly, SameSite=Lax cookie without expiry); `/auth/logout` clears it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        cookie = ""
        if path.startswith("/auth/logout"):
            cookie = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        elif not path.startswith(_NOT_PAGES):
            report = valid_id(QueryParams(scope.get("query_string", b"")).get("report"))
            if report:
                cookie = f"{COOKIE}={report}; Path=/; HttpOnly; SameSite=Lax"
        if not cookie:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("Set-Cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)
