"""Who uses the dashboard: Streamlit's `st.login` (OIDC) when configured, else the local admin; role gates."""

from __future__ import annotations

import os

import streamlit as st

from dashboard.services.sign_in import sign_in_configured
from dashboard.ui import current as current_lab
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
    store = current_lab().store
    email = str(st.user.get("email") or "").lower()
    try:
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


def can(role: Role) -> bool:
    """True when the current user has this role or a higher one."""
    return who().role.allows(role)


def require(role: Role) -> None:
    """Stops the page, in words, for a user below this role."""
    if not can(role):
        st.warning(f"This needs the {role} role; you are {who().role}. Ask an admin on the Settings page.",
                   icon=":material/lock:")
        st.stop()
