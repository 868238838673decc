"""Whether sign-in is configured (an [auth] section in the secrets), and the bind-address rule that rests on it."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path

from qcore.qtyping import QlabError
from qcore.store.accounts import MIN_ADMIN_TOKEN_CHARS

REPO_ROOT = Path(__file__).resolve().parents[2]
# the address `make dashboard` binds unless told otherwise: this machine only
DEFAULT_HOST = "127.0.0.1"
# a secrets.toml other than the repo's .streamlit/secrets.toml (serve.py passes it to Streamlit)
ENV_SECRETS = "QLAB_SECRETS_FILE"
# an admin API token registered at start (CI, bootstrapping)
ENV_ADMIN_TOKEN = "QLAB_ADMIN_TOKEN"


def secrets_files() -> list[Path]:
    """Where Streamlit reads secrets (and so the [auth] section) for this server."""
    if os.environ.get(ENV_SECRETS):
        return [Path(os.environ[ENV_SECRETS])]
    return [Path.home() / ".streamlit" / "secrets.toml", REPO_ROOT / ".streamlit" / "secrets.toml"]


def sign_in_configured(files: list[Path] | None = None) -> bool:
    """True when a secrets file has an [auth] section st.login can use (a client id, or a provider's)."""
    for path in files if files is not None else secrets_files():
        try:
            auth = tomllib.loads(path.read_text(encoding="utf-8")).get("auth")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        if isinstance(auth, dict) and (auth.get("client_id") or any(
                isinstance(v, dict) and v.get("client_id") for v in auth.values())):
            return True
    return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str) -> None:
    """Refuses to serve beyond this machine without sign-in.

    Raises:
        QlabError: one line, for a non-loopback address while no sign-in is configured.
    """
    if is_loopback(host) or sign_in_configured():
        return
    raise QlabError(f"QLAB_HOST={host} would let anyone who reaches this port upload models and run jobs; "
                    "configure sign-in ([auth] in .streamlit/secrets.toml, see the README) or bind 127.0.0.1")


def check_admin_token(token: str) -> None:
    """Refuses a QLAB_ADMIN_TOKEN too short to be a secret (serve.py checks it before it starts anything).

    Raises:
        QlabError: one line naming the variable and the length it needs.
    """
    if token and len(token.strip()) < MIN_ADMIN_TOKEN_CHARS:
        raise QlabError(f"{ENV_ADMIN_TOKEN} has {len(token.strip())} characters; it needs at least "
                        f"{MIN_ADMIN_TOKEN_CHARS} (make one with: python -c 'import secrets; print(secrets.token_hex(24))')")
