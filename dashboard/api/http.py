"""The API's plumbing: the route record its OpenAPI entry comes from, bearer auth, JSON errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dashboard.services import access
from dashboard.services.access import Action
from dashboard.services.sign_in import sign_in_configured
from qcore.qtyping import DiskError, QlabError, Role
from qcore.serialize import to_json
from qcore.store import ACTOR
from qcore.store.accounts import Principal, authenticate, token_sha256
from qcore.store.files import disk_words, is_disk_error

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
# reachable without a token: the load balancer's probe and the schema itself
PUBLIC_PATHS = (f"{PREFIX}/health", f"{PREFIX}/openapi.json")
ERROR_REF = {"$ref": "#/components/schemas/Error"}

Endpoint = Callable[[Request], Awaitable[Response]]
# a valid token's principal is asked of the store at most this often (revoking or changing a role applies
# within it); a burst of API calls with one token then costs no database round trip each
TOKEN_CACHE_S = 2.0
# tokens remembered at once; past it the memory starts over
MAX_KNOWN_TOKENS = 1024


class ApiError(Exception):
    """An error answer: its status and the words the client sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Error:
    """Every error answer: one message that names the field, file or value."""

    error: str


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def json_response(payload: Any, status: int = 200) -> Response:
    """JSON whose NaN and infinities are null (JSON has neither), by the CLI's and the jobs' serializer."""
    return Response(to_json(payload), status_code=status, media_type="application/json")


def principal(request: Request) -> Principal:
    """Who makes this request (set by BearerAuth)."""
    who = request.scope.get("state", {}).get("principal")
    if not isinstance(who, Principal):
        raise ApiError(401, "missing bearer token")
    return who


@dataclass(frozen=True)
class ApiRoute:
    """One operation: its handler, the action it is (whose role the rule book decides), and its OpenAPI entry."""

    method: str
    path: str
    handler: Endpoint
    summary: str
    action: Action | None = Action.READ  # None: public, no token needed
    body: dict[str, Any] | None = None  # an OpenAPI requestBody
    parameters: tuple[dict[str, Any], ...] = ()
    responses: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def role(self) -> Role | None:
        """The least role this operation needs (from `access.NEEDS`), or None when it is public."""
        return None if self.action is None else access.NEEDS[self.action]

    def operation(self) -> dict[str, Any]:
        responses: dict[str, Any] = {}
        for status, content in sorted(self.responses.items()):
            responses[str(status)] = {"description": _REASONS.get(status, "answer"), "content": content}
        codes = [422, 404] + ([401, 403] if self.role is not None else [])
        if self.body and "multipart/form-data" in self.body.get("content", {}):
            codes.append(413)
        if self.action in (Action.RUN, Action.UPLOAD):
            codes.append(429)
        for status in codes:
            responses.setdefault(str(status), {"description": _REASONS[status],
                                               "content": {"application/json": {"schema": ERROR_REF}}})
        op: dict[str, Any] = {"summary": self.summary, "operationId": f"{self.method.lower()}_{_slug(self.path)}",
                              "responses": responses}
        if self.role is None:
            op["security"] = []
        else:
            op["description"] = f"Needs the {self.role} role or higher."
        if self.parameters:
            op["parameters"] = list(self.parameters)
        if self.body:
            op["requestBody"] = self.body
        return op

    async def endpoint(self, request: Request) -> Response:
        """The handler behind the role check, with every failure as a JSON error."""
        try:
            if self.action is not None:
                who = principal(request)
                access.check(who, self.action, what=f"{self.method} {request.url.path}")
                ACTOR.set(who.email)  # rows this request writes record who made them
            return await self.handler(request)
        except ApiError as exc:
            return error(exc.status, str(exc))
        except access.Refused as exc:
            headers = {"Retry-After": str(access.RETRY_AFTER_S)} if exc.status == 429 else None
            return error(exc.status, str(exc), headers)
        except DiskError as exc:  # the server's disk, not the request: 507 Insufficient Storage, in words
            return error(507, str(exc))
        except (QlabError, ValueError) as exc:
            return error(422, str(exc) or type(exc).__name__)
        except Exception as exc:  # never a traceback to the client; the server log has it
            if is_disk_error(exc):  # a write outside the store (an upload's file) the disk refused
                log.warning("%s %s: %s", self.method, request.url.path, exc)
                return error(507, disk_words(exc))
            log.exception("%s %s failed", self.method, request.url.path)
            return error(500, "internal error; the server log has the details")


_REASONS = {200: "OK", 201: "created", 202: "accepted", 204: "no content", 401: "no valid bearer token",
            403: "the token's role forbids this", 404: "not found", 409: "conflict",
            413: "upload over the size limit", 422: "bad input, named in the message",
            429: "too many of your jobs are queued or running (QLAB_MAX_ACTIVE_JOBS); retry after a while",
            507: "the server's disk refused the write (full, read-only), in words"}


def _slug(path: str) -> str:
    return path.removeprefix(PREFIX + "/").replace("/", "_").replace("{", "").replace("}", "") or "root"


class BearerAuth:
    """ASGI middleware: every /api/ request but the public ones needs a valid bearer token.

    Args:
        app: the wrapped application.
        store: returns the owner process's store (called per request, after the lifespan opened it).
    """

    def __init__(self, app: ASGIApp, store: Callable[[], Any]) -> None:
        self.app = app
        self.store = store
        # tokens the local admin made work only while there is no sign-in (a lab on one machine)
        self.local_tokens = not sign_in_configured()
        # token sha256 -> (who, until when): a burst of calls with one token asks the store once
        self._known: dict[str, tuple[Principal, float]] = {}

    async def _principal(self, token: str) -> Principal | None:
        """The token's principal, from the store at most once per TOKEN_CACHE_S (revocations and role changes
        apply within that); unknown tokens are never remembered."""
        key = token_sha256(token)
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        who = await run_in_threadpool(lambda: authenticate(self.store(), token, local_tokens=self.local_tokens))
        if who is None:
            self._known.pop(key, None)
        else:
            if len(self._known) > MAX_KNOWN_TOKENS:
                self._known.clear()
            self._known[key] = (who, now + TOKEN_CACHE_S)
        return who

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/api" or path.startswith("/api/")) or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        who = None
        if scheme.lower() == "bearer" and token.strip():
            who = await self._principal(token.strip())
        if who is None:
            reason = "missing bearer token" if not token.strip() else "invalid or revoked token"
            await error(401, f"{reason}: send 'Authorization: Bearer <token>' (make one on the settings page)",
                        {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = who
        await self.app(scope, receive, send)
