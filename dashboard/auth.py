"""Who uses the dashboard: Streamlit's `st.login` (OIDC) when configured, else the local admin; role gates."""

from __future__ import annotations

import os

import streamlit as st

from dashboard.services import access, report_links
from dashboard.services.access import Action
from dashboard.services.lab import lab as current_lab
from dashboard.services.sign_in import sign_in_configured
from qcore.qtyping import QlabError, Role
from qcore.store import accounts
from qcore.store.accounts import Principal

# QLAB_ADMINS=a@x,b@y names the admins; otherwise the first user to sign in on a fresh store is
ENV_ADMINS = "QLAB_ADMINS"
_SESSION_KEY = "auth_signed_in"


def enabled() -> bool:
    """True when sign-in is configured ([auth] in the secrets); else everyone is the local admin."""
    return sign_in_configured()


def _sign_in_page() -> None:
    st.title("qlab")
    st.write("This lab is shared by a team. Sign in to see its models, results and reports.")
    if st.button("Sign in", type="primary", icon=":material/login:", key="auth_sign_in"):
        st.login()
    st.stop()


def current() -> Principal:
    """The signed-in user (or the local admin); shows only the sign-in page to a signed-out visitor.

    The first sight of a user in this session records the sign-in (and makes the first user of a
    fresh store admin); the role is read from the store on every run, so an admin's change applies at once.
    """
    if not enabled():
        return Principal(email=accounts.LOCAL_USER, role=Role.ADMIN)
    if not st.user.is_logged_in:
        _sign_in_page()
    email = str(st.user.get("email") or "").lower()
    try:
        store = current_lab().store
        if st.session_state.get(_SESSION_KEY) != email:
            accounts.sign_in(store, email, str(st.user.get("name") or ""),
                             admins=accounts.parse_admins(os.environ.get(ENV_ADMINS, "")))
            st.session_state[_SESSION_KEY] = email
        role = accounts.role_of(store, email)
    except QlabError as exc:
        st.error(str(exc), icon=":material/error:")
        st.button("Sign out", on_click=st.logout, key="auth_sign_out_bad")
        st.stop()
        raise
    if role is None:  # removed since this session began
        st.session_state.pop(_SESSION_KEY, None)
        st.rerun()
    return Principal(email=email, role=role or Role.VIEWER)


def who() -> Principal:
    """The current user without side effects (for pages, after streamlit_app.py signed them in)."""
    got = st.session_state.get("auth_principal")
    return got if isinstance(got, Principal) else Principal(email=accounts.LOCAL_USER, role=Role.ADMIN)


def can(action: Action, *, owner: str | None = None) -> bool:
    """True when the current user may take this action (the rule book is `dashboard.services.access`)."""
    return access.allowed(who(), action, owner=owner)


def report_scope() -> str | None:
    """The one report a viewer's session is limited to: the `?report=` link of this request, else the one
    this browser session opened before (an HttpOnly cookie the server set); None for everyone else."""
    if who().role is not Role.VIEWER:
        return None
    link = report_links.valid_id(st.query_params.get("report"))
    return link or report_links.valid_id(st.context.cookies.get(report_links.COOKIE))
