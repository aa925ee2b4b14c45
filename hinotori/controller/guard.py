"""The API's front door: who may ask, and how much they may send, decided before any body is read.

A pure ASGI middleware in front of every route (FastAPI reads a JSON body whole before it runs
a route's dependencies, so a token check written as a dependency came after the body: 200 MB
from anyone grew the controller by 685 MB). Here, per request, from the headers alone:

1. **Who.** Every path but the open ones (the dashboard's page, assets and sign-in; the push
   webhook, which checks its own HMAC signature) needs ``Authorization: Bearer <credentials>``
   (the scheme in any case, RFC 7235): the API token, or a dashboard session (reads; and
   changes for an operating one that proves it comes from its own page: same ``Origin``, or
   ``Referer``, as the ``Host`` asked, and the session's CSRF token). The route sees what the
   credentials proved as ``scope["hinotori.principal"]``: ``token`` or ``dashboard:<id>`` (a
   hash prefix, never the secret). Unknown credentials: 401; a session asking for what it
   may not do: 403; both with the body unread.
2. **How much.** A ``Content-Length`` over the path's cap: 413 at once, body unread. A body
   without one (chunked) is counted as the route reads it, and answered 413 as soon as the
   count passes the cap; nothing past the cap is ever buffered.

After an early answer the server discards whatever the client still sends, chunk by chunk.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from hinotori.controller.dashboard.sessions import CSRF_HEADER, PRINCIPAL, DashboardSessions
from hinotori.errors import ControllerError, Forbidden, HinotoriError, Unauthorised

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 1024 * 1024
# Every API body is a small JSON object (a deploy's options, a sign-in ticket): 1 MiB is
# thousands of times the largest, and small enough that many at once cost little.
API_BODY_CAP = 1 * MiB
# GitHub caps webhook payloads at 25 MB and does not deliver larger ones, so a bigger push
# body comes from nothing we ship on; it is read whole only to check its signature.
WEBHOOK_BODY_CAP = 25 * MiB
WEBHOOK_PATH = "/v1/webhooks/push"
TOKEN_HINT = "send `Authorization: Bearer <token>`; the token is in .hinotori/token of the project"


def is_open(path: str) -> bool:
    """Paths with their own sign-in (or none needed): the dashboard's page, its assets and
    its ticket exchange, and the signed push webhook."""
    return path == "/" or path.startswith("/ui/") or path == WEBHOOK_PATH


def body_cap(path: str) -> int:
    return WEBHOOK_BODY_CAP if path == WEBHOOK_PATH else API_BODY_CAP


class Credentials:
    """Checks an Authorization header against the API token and the dashboard's sessions."""

    def __init__(self, token: str, sessions: DashboardSessions) -> None:
        self._token = token.encode()
        self.sessions = sessions

    def principal(self, header: str | None, method: str, *, csrf: str | None = None,
                  same_origin: bool = False) -> str:
        """``token`` or ``dashboard:<id>`` for good credentials; Unauthorised otherwise, and
        Forbidden for a dashboard session asking for a change it may not make (see
        ``DashboardSessions.authorise``: ``csrf`` and ``same_origin`` are its proofs)."""
        if not header:
            raise Unauthorised("missing API token", hint=TOKEN_HINT)
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise Unauthorised("the Authorization header must be `Bearer <token>`",
                               hint=TOKEN_HINT)
        if self.sessions.authorise(given, method, csrf=csrf, same_origin=same_origin):
            return f"dashboard:{session_id(given)}"
        # Headers arrive as latin-1: compare bytes, so a non-ASCII guess is just wrong.
        if not secrets.compare_digest(given.encode("latin-1", "replace"), self._token):
            raise Unauthorised("missing or wrong API token", hint=TOKEN_HINT)
        return "token"


def same_origin(headers: list[tuple[bytes, bytes]], scheme: str) -> bool:
    """The request names the origin it was asked for as its own: ``Origin`` (every browser
    sends it on a POST), else ``Referer``, is ``scheme://Host``. Neither: not provable."""
    host = _header(headers, b"host")
    origin = _header(headers, b"origin")
    if origin is None or origin == "null":
        referer = _header(headers, b"referer")
        if not referer:
            return False
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return bool(host) and origin.strip().lower() == f"{scheme}://{host}".lower()


def session_id(session: str) -> str:
    """A short name for a dashboard session in the audit log; says nothing of the secret."""
    return hashlib.sha256(session.encode()).hexdigest()[:12]


class RequestGuard:
    """The middleware (see the module's docstring). ``credentials`` None: no token check."""

    def __init__(self, app: ASGIApp, credentials: Credentials | None = None) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, headers = scope["path"], scope.get("headers") or []
        if self.credentials is not None and not is_open(path):
            try:
                scope[PRINCIPAL] = self.credentials.principal(
                    _header(headers, b"authorization"), scope["method"],
                    csrf=_header(headers, CSRF_HEADER.encode()),
                    same_origin=same_origin(headers, scope.get("scheme", "http")))
            except Unauthorised as e:
                await answer(send, 401, e, {"www-authenticate": "Bearer"})
                return
            except Forbidden as e:
                await answer(send, 403, e)
                return
        cap = body_cap(path)
        length = _header(headers, b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > cap):
            await answer(send, 413, _too_large(path, cap))
            return
        await self._capped(scope, receive, send, path, cap)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, path: str,
                      cap: int) -> None:
        received, started, answered = 0, False, False

        async def counted() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    if not started:
                        await answer(send, 413, _too_large(path, cap))
                        answered = True
                    raise BodyTooLarge(path)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the route's own answer to the error it met: ours went first
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except BodyTooLarge:
            if not answered:
                raise


class BodyTooLarge(Exception):
    """Raised into the route that reads past the cap (after the 413 has gone out)."""


def _too_large(path: str, cap: int) -> ControllerError:
    if path == WEBHOOK_PATH:
        return ControllerError(f"push payload over {cap // MiB} MiB",
                               hint="GitHub sends at most 25 MB; this is not a push event")
    return ControllerError(f"request body over {cap // MiB} MiB",
                           hint="API bodies are small JSON objects")


def error_body(exc: HinotoriError) -> dict[str, Any]:
    """The JSON every refusal carries; the client raises the same error type from it."""
    return {"error": exc.message, "hint": exc.hint, "type": type(exc).__name__}


async def answer(send: Send, status: int, exc: HinotoriError,
                 headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(exc)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
