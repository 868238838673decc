"""Users, roles and personal API tokens in the store; a token is kept only as its sha256."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from qcore.qtyping import QlabError, Role
from qcore.store import Store

# the owner of the token QLAB_ADMIN_TOKEN registers at start (not a sign-in address)
ADMIN_TOKEN_OWNER = "QLAB_ADMIN_TOKEN"
# shorter admin tokens are guessable; the API refuses to start with one
MIN_ADMIN_TOKEN_CHARS = 32
# who acts when no sign-in is configured (the local default on loopback): a local admin
LOCAL_USER = "local"
# a personal token's prefix, so a leaked one is easy to recognise in logs and secret scanners
TOKEN_PREFIX = "qlab_"
# "last used" is recorded at most this often per token: a burst of API calls is reads, not one write each
LAST_USED_EVERY_S = 60
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a signed-in user, a token's owner, or the local user."""

    email: str
    role: Role


@dataclass(frozen=True)
class ApiToken:
    """A personal token as listed on the settings page (never its value)."""

    id: int
    owner: str
    name: str
    created_at: str
    last_used: str | None
    revoked: bool


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_admins(text: str) -> set[str]:
    """`QLAB_ADMINS=a@x,b@y` as a set of lower-case addresses."""
    return {a.strip().lower() for a in text.split(",") if a.strip()}


def sign_in(store: Store, email: str, name: str = "", admins: set[str] | None = None) -> Principal:
    """Records a sign-in and returns the user's role.

    The first user on a fresh store becomes admin, unless `admins` names the admins; a user
    named in `admins` is always admin; everyone else starts as viewer.

    Raises:
        QlabError: for an identity without an e-mail address.
    """
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise QlabError(f"the identity provider gave no usable e-mail address ({email!r})")
    admins = admins or set()
    with store.transaction() as cur:
        row = cur.execute("SELECT role FROM users WHERE email = ?", [email]).fetchone()
        if row is None:
            first = cur.execute("SELECT count(*) FROM users").fetchone()
            if email in admins or (not admins and first is not None and first[0] == 0):
                role = Role.ADMIN
            else:
                role = Role.VIEWER
            cur.execute("INSERT INTO users (email, name, role, last_seen) VALUES (?, ?, ?, current_timestamp)",
                        [email, name, str(role)])
        else:
            role = Role.ADMIN if email in admins else Role(row[0])
            cur.execute("UPDATE users SET last_seen = current_timestamp, name = ?, role = ? WHERE email = ?",
                        [name or email, str(role), email])
    return Principal(email=email, role=role)


def role_of(store: Store, email: str) -> Role | None:
    """A known user's role, or None."""
    if email == LOCAL_USER or email == ADMIN_TOKEN_OWNER:
        return Role.ADMIN
    row = store._one("SELECT role FROM users WHERE email = ?", [email.lower()])
    return Role(row[0]) if row else None


def set_role(store: Store, email: str, role: Role | str) -> None:
    """Gives a known user a role.

    Raises:
        QlabError: for an unknown user or role, or when it would leave no admin.
    """
    try:
        new = Role(role)
    except ValueError:
        raise QlabError(f"unknown role {role!r}; known: {', '.join(r.value for r in Role)}") from None
    with store.transaction() as cur:
        row = cur.execute("SELECT role FROM users WHERE email = ?", [email.lower()]).fetchone()
        if row is None:
            raise QlabError(f"no user {email!r}")
        if row[0] == Role.ADMIN and new is not Role.ADMIN:
            admins = cur.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()
            if admins is not None and admins[0] <= 1:
                raise QlabError(f"{email} is the last admin; make someone else admin first")
        cur.execute("UPDATE users SET role = ? WHERE email = ?", [str(new), email.lower()])


def users(store: Store) -> list[tuple[str, str, Role, str]]:
    """(email, name, role, last_seen) of every known user, admins first."""
    df = store.query("SELECT email, name, role, CAST(last_seen AS VARCHAR) AS seen FROM users "
                     "ORDER BY role = 'admin' DESC, role = 'member' DESC, email")
    return [(str(r.email), str(r.name), Role(r.role), str(r.seen or "")) for r in df.itertuples()]


def create_token(store: Store, owner: str, name: str = "") -> str:
    """Makes a personal token for `owner`; returns its value, which is shown once and never stored."""
    value = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.transaction() as cur:
        cur.execute("INSERT INTO api_tokens (sha256, owner, name) VALUES (?, ?, ?)",
                    [token_sha256(value), owner.lower() if owner != ADMIN_TOKEN_OWNER else owner, name.strip()])
    return value


def register_admin_token(store: Store, value: str) -> None:
    """Registers QLAB_ADMIN_TOKEN's value as an admin token (idempotent).

    Raises:
        QlabError: for a value shorter than MIN_ADMIN_TOKEN_CHARS.
    """
    value = value.strip()
    if len(value) < MIN_ADMIN_TOKEN_CHARS:
        raise QlabError(f"QLAB_ADMIN_TOKEN has {len(value)} characters; it needs at least {MIN_ADMIN_TOKEN_CHARS}")
    with store.transaction() as cur:
        cur.execute("INSERT INTO api_tokens (sha256, owner, name) VALUES (?, ?, 'QLAB_ADMIN_TOKEN') "
                    "ON CONFLICT (sha256) DO UPDATE SET revoked_at = NULL",
                    [token_sha256(value), ADMIN_TOKEN_OWNER])


def tokens(store: Store, owner: str | None = None) -> list[ApiToken]:
    """Tokens of one owner (or all), newest first."""
    sql = ("SELECT id, owner, name, CAST(created_at AS VARCHAR) AS created, CAST(last_used AS VARCHAR) AS used, "
           "revoked_at IS NOT NULL AS revoked FROM api_tokens")
    params: list[str] = []
    if owner is not None:
        sql += " WHERE owner = ?"
        params.append(owner)
    df = store.query(sql + " ORDER BY id DESC", params)
    return [ApiToken(int(r.id), str(r.owner), str(r.name), str(r.created), None if r.used is None else str(r.used),
                     bool(r.revoked)) for r in df.itertuples()]


def revoke_token(store: Store, token_id: int, owner: str | None = None) -> None:
    """Revokes a token (only the owner's own, when `owner` is given).

    Raises:
        QlabError: for a token that does not exist or is someone else's.
    """
    with store.transaction() as cur:
        row = cur.execute("SELECT owner FROM api_tokens WHERE id = ?", [int(token_id)]).fetchone()
        if row is None or (owner is not None and row[0] != owner):
            raise QlabError(f"no token #{token_id} of yours")
        cur.execute("UPDATE api_tokens SET revoked_at = current_timestamp WHERE id = ?", [int(token_id)])


def authenticate(store: Store, token: str, *, local_tokens: bool = True) -> Principal | None:
    """The principal a bearer token stands for, or None (unknown, revoked, or its owner lost access).

    Args:
        local_tokens: accept tokens the local admin made before sign-in was configured; a server
            with sign-in passes False, so they stop working once the lab is shared.
    """
    if not token or len(token) > 512:
        return None
    row = store._one(
        "SELECT id, owner, last_used IS NULL OR last_used < current_timestamp - to_seconds(?) "
        "FROM api_tokens WHERE sha256 = ? AND revoked_at IS NULL", [LAST_USED_EVERY_S, token_sha256(token)])
    if row is None:
        return None
    if row[1] == LOCAL_USER and not local_tokens:
        return None
    role = role_of(store, str(row[1]))
    if role is None:
        return None
    if row[2]:
        with store.transaction() as cur:
            cur.execute("UPDATE api_tokens SET last_used = current_timestamp WHERE id = ?", [row[0]])
    return Principal(email=str(row[1]), role=role)


def stamp(store: Store, table: str, row_id: int | str, who: str) -> None:
    """Records who made a row (`created_by`) when nobody is recorded yet."""
    if table not in ("models", "datasets", "variants", "jobs", "reports"):
        raise ValueError(f"no created_by column on {table!r}")
    with store.transaction() as cur:
        cur.execute(f"UPDATE {table} SET created_by = ? WHERE id = ? AND created_by IS NULL", [who, row_id])
