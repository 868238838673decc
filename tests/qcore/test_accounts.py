"""Users, roles and API tokens against a real DuckDB file."""

from __future__ import annotations

import pytest

from qcore.qtyping import QlabError, Role
from qcore.store import ACTOR, Store, accounts


def test_sign_in_first_user_is_admin_then_viewers(tmp_store: Store) -> None:
    assert accounts.sign_in(tmp_store, "Ada@Lab.example", "Ada").role is Role.ADMIN
    assert accounts.sign_in(tmp_store, "bob@lab.example").role is Role.VIEWER
    assert accounts.sign_in(tmp_store, "ada@lab.example").role is Role.ADMIN  # case-insensitive, kept


def test_sign_in_admins_list_overrides_first_user(tmp_store: Store) -> None:
    admins = accounts.parse_admins(" boss@lab.example , second@lab.example")
    assert accounts.sign_in(tmp_store, "first@lab.example", admins=admins).role is Role.VIEWER
    assert accounts.sign_in(tmp_store, "boss@lab.example", admins=admins).role is Role.ADMIN


def test_sign_in_without_email_is_refused(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="e-mail"):
        accounts.sign_in(tmp_store, "not-an-address")


def test_set_role_keeps_one_admin_and_names_unknowns(tmp_store: Store) -> None:
    accounts.sign_in(tmp_store, "ada@lab.example")
    accounts.sign_in(tmp_store, "bob@lab.example")
    with pytest.raises(QlabError, match="last admin"):
        accounts.set_role(tmp_store, "ada@lab.example", Role.VIEWER)
    with pytest.raises(QlabError, match="unknown role 'boss'"):
        accounts.set_role(tmp_store, "bob@lab.example", "boss")
    with pytest.raises(QlabError, match="no user"):
        accounts.set_role(tmp_store, "eve@lab.example", Role.MEMBER)
    accounts.set_role(tmp_store, "bob@lab.example", "member")
    assert accounts.role_of(tmp_store, "bob@lab.example") is Role.MEMBER


def test_token_is_stored_only_as_its_hash_and_carries_the_role(tmp_store: Store) -> None:
    accounts.sign_in(tmp_store, "ada@lab.example")
    accounts.sign_in(tmp_store, "bob@lab.example")
    token = accounts.create_token(tmp_store, "bob@lab.example", "ci")
    stored = tmp_store.query("SELECT * FROM api_tokens")
    assert token not in stored.to_string() and stored["sha256"][0] == accounts.token_sha256(token)
    assert accounts.authenticate(tmp_store, token) == accounts.Principal("bob@lab.example", Role.VIEWER)
    accounts.set_role(tmp_store, "bob@lab.example", Role.MEMBER)  # the token follows the owner's role
    assert accounts.authenticate(tmp_store, token).role is Role.MEMBER  # type: ignore[union-attr]
    (listed,) = accounts.tokens(tmp_store, "bob@lab.example")
    assert listed.name == "ci" and listed.last_used is not None
    with pytest.raises(QlabError, match="no token"):
        accounts.revoke_token(tmp_store, listed.id, owner="ada@lab.example")
    accounts.revoke_token(tmp_store, listed.id, owner="bob@lab.example")
    assert accounts.authenticate(tmp_store, token) is None
    assert accounts.authenticate(tmp_store, "qlab_made-up") is None


def test_admin_token_needs_32_characters_and_is_idempotent(tmp_store: Store) -> None:
    with pytest.raises(QlabError, match="at least 32"):
        accounts.register_admin_token(tmp_store, "short")
    value = "x" * 40
    accounts.register_admin_token(tmp_store, value)
    accounts.register_admin_token(tmp_store, value)
    assert accounts.authenticate(tmp_store, value) == accounts.Principal(accounts.ADMIN_TOKEN_OWNER, Role.ADMIN)


def test_local_tokens_stop_working_once_sign_in_is_configured(tmp_store: Store) -> None:
    token = accounts.create_token(tmp_store, accounts.LOCAL_USER)
    assert accounts.authenticate(tmp_store, token).role is Role.ADMIN  # type: ignore[union-attr]
    assert accounts.authenticate(tmp_store, token, local_tokens=False) is None


def test_rows_record_the_actor(tmp_store: Store) -> None:
    reset = ACTOR.set("bob@lab.example")
    try:
        job_id = tmp_store.create_job("convert", {})
    finally:
        ACTOR.reset(reset)
    assert tmp_store.job(job_id).created_by == "bob@lab.example"
    assert tmp_store.job(tmp_store.create_job("convert", {})).created_by is None
