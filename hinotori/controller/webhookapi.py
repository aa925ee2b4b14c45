"""The push webhook's route: ``POST /v1/webhooks/push`` (no token: it is signed).

In order, each step before the costlier next one: a source past its bad requests gets 429
(nothing read), a fifth push read at once 503, a signature that is not ASCII 401; then the body
is read (within READ_TIMEOUT) and handed to ``push`` (Shipping.push: the HMAC, the replay
window, the ship). Every refusal answers JSON {"error", "hint", "type"}; anything else escaping
``push`` is ours, not the sender's: 500, logged, and recorded as ``webhook.failed``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from hinotori.controller.guard import WEBHOOK_PATH, error_body
from hinotori.controller.webhook import READ_TIMEOUT, Refused, Webhook
from hinotori.errors import ControllerError, HinotoriError, Unauthorised

log = logging.getLogger("hinotori.controller.api")

Record = Callable[[str, str, str, dict[str, Any]], None]  # Store.record


class Push(Protocol):
    def __call__(self, body: bytes, signature: str | None, *, delivery: str | None,
                 source: str) -> Awaitable[list[str]]: ...


def webhook_routes(gate: Webhook, push: Push, record: Record) -> APIRouter:
    router = APIRouter()

    @router.post(WEBHOOK_PATH)
    async def webhook_push(request: Request) -> Any:
        """A GitHub-style push, signed with HMAC-SHA256 (X-Hub-Signature-256): ships every
        service whose `ship_on` matches the repository and branch. Refused: unsigned or wrongly
        signed pushes (401), a replayed delivery (409), a source past its bad requests (429),
        more than a few pushes read at once (503). At most 25 MiB (GitHub's own cap)."""
        try:
            return {"shipped": await _push(request)}
        except Refused as e:
            return JSONResponse(error_body(e.error), status_code=e.status, headers=e.headers)
        except HinotoriError as e:
            return JSONResponse(error_body(e), status_code=401 if isinstance(e, Unauthorised)
                                else 400)

    async def _push(request: Request) -> list[str]:
        source = request.client.host if request.client else "?"
        gate.admit(source)
        signature = request.headers.get("x-hub-signature-256")
        with gate.reading.slot():
            if signature is not None and not signature.isascii():
                # A signature is "sha256=" and hex; the HMAC check could not even compare this.
                gate.reject("signature not ASCII", source)
                raise Unauthorised("push refused: X-Hub-Signature-256 is not a signature",
                                   hint="it is sha256= and the hex HMAC-SHA256 of the body")
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    body = await request.body()
            except TimeoutError:
                gate.reject("body too slow", source)
                raise Refused(408, ControllerError(
                    f"push body not received within {READ_TIMEOUT:.0f}s",
                    hint="GitHub sends its payload at once")) from None
            except ClientDisconnect:  # gone before its body arrived: nobody to answer
                raise Refused(400, ControllerError("push sender went away")) from None
            try:
                return await push(body, signature, source=source,
                                  delivery=request.headers.get("x-github-delivery"))
            except (HinotoriError, Refused):
                raise
            except Exception as e:  # ours, not the sender's: say so, and keep the record
                log.exception("push failed")
                record("webhook", "webhook.failed", "push",
                       {"error": f"internal error: {e!r}"[:500]})
                raise Refused(500, ControllerError(
                    "the controller failed while handling this push",
                    hint="`hinotori audit --action webhook.failed` and the controller's log "
                         "say why")) from None

    return router
