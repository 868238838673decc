"""/settings: your personal API tokens (shown once, stored as a hash) and, for admins, users' roles."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import auth, ui
from dashboard.services import access
from dashboard.services.access import Action
from qcore.qtyping import Role
from qcore.store import accounts

lab = ui.current()
me = auth.who()

st.title("Settings")
st.caption(f"signed in as {me.email} · role {me.role}")

st.subheader("API tokens")
st.write("A token lets CI and `qlab --server URL` act as you, with your role. It is shown once; "
         "qlab keeps only its hash.")
with st.form("settings_token", clear_on_submit=True):
    name = st.text_input("what it is for", key="settings_token_name", placeholder="nightly CI")
    if st.form_submit_button("Create token", type="primary"):
        with ui.guard("cannot make a token"):
            access.check(me, Action.TOKENS, what="making an API token")
            st.session_state["settings_new_token"] = accounts.create_token(lab.store, me.email, name)
new = st.session_state.pop("settings_new_token", None)
if new:
    st.success("Copy it now: it will not be shown again.", icon=":material/key:")
    st.code(new, language=None)

mine = [t for t in accounts.tokens(lab.store, me.email) if not t.revoked]
if not mine:
    st.caption("no tokens yet")
for t in mine:
    a, b = st.columns([4, 1])
    a.write(f"#{t.id} **{t.name or 'unnamed'}** · made {t.created_at[:16]} · last used {(t.last_used or 'never')[:16]}")
    if b.button("Revoke", key=f"settings_revoke_{t.id}"):
        with ui.guard("cannot revoke"):
            access.check(me, Action.TOKENS, what="revoking an API token")
            accounts.revoke_token(lab.store, t.id, owner=me.email)
            st.rerun()

if auth.enabled() and auth.can(Action.ROLES):
    st.subheader("Users and roles")
    st.caption("viewer: report links and read-only pages · member: upload, run jobs, make reports, benchmark · "
               "admin: boards, roles, trusted uploads")
    people = accounts.users(lab.store)
    table = pd.DataFrame([{"email": e, "name": n, "role": str(r), "last seen": s[:16]} for e, n, r, s in people])
    edited = st.data_editor(
        table, hide_index=True, width="stretch", key="settings_roles", disabled=["email", "name", "last seen"],
        column_config={"role": st.column_config.SelectboxColumn("role", options=[r.value for r in Role],
                                                                required=True)})
    if st.button("Save roles", key="settings_roles_save"):
        with ui.guard("cannot change the roles"):
            access.check(me, Action.ROLES, what="changing roles")
            for (email, _, old, _), role in zip(people, edited["role"], strict=True):
                if role != old:
                    accounts.set_role(lab.store, email, role)
            st.success("roles saved", icon=":material/check_circle:")
