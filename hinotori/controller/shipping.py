"""Continuous delivery: the signed push webhook, and the bake -> deploy it starts per service.

A push is refused (and recorded, see webhook.py) unless its HMAC-SHA256 signature matches the
secret named by ``[webhook] secret_env``, and refused (409) when it replays a delivery seen in
the last ten minutes. Each service whose ``ship_on`` names the push's repository and branch
is baked, then deployed with its spec's strategy; a ship that fails for any reason is recorded
as ``ship.failed``, never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from hinotori.controller.webhook import Refused, Webhook
from hinotori.deploy.fleet import Fleet
from hinotori.errors import DeployError, HinotoriError, Unauthorised
from hinotori.project import Project
from hinotori.promotion import refuse_unpromoted

log = logging.getLogger("hinotori.controller")

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]
StartDeployment = Callable[..., Awaitable[int | None]]


class Shipping:
    def __init__(self, project: Project, fleet: Fleet, *, spawn: Spawn,
                 reload_spec: Callable[[], None], start_deployment: StartDeployment) -> None:
        self.project = project
        self.fleet = fleet
        self.store = project.store
        self.spawn = spawn
        self.reload_spec = reload_spec
        self.start_deployment = start_deployment
        self.webhook = Webhook(self.store)

    async def push(self, body: bytes, signature: str | None, *, delivery: str | None = None,
                   source: str = "") -> list[str]:
        """Continuous delivery: verify a push's HMAC-SHA256 signature, refuse a replay, then
        bake and deploy every service whose `ship_on` names its repository and branch."""
        secret = os.environ.get(self.fleet.spec.webhook.secret_env, "")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not secret or not signature or not hmac.compare_digest(signature, expected):
            self.webhook.reject("no secret configured" if not secret else
                                "unsigned" if not signature else "bad signature", source)
            raise Unauthorised("push refused: missing or bad X-Hub-Signature-256",
                               hint=f"sign the body with the secret in "
                                    f"${self.fleet.spec.webhook.secret_env}")
        try:
            event = json.loads(body)
            repository = event["repository"]["full_name"]
            branch = event["ref"].removeprefix("refs/heads/")
            if not isinstance(repository, str) or not isinstance(branch, str):
                raise TypeError("repository.full_name and ref must be strings")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise DeployError("push payload is not a GitHub-style push event",
                              hint="it needs ref and repository.full_name, as strings"
                              ) from None
        try:  # before the delivery is remembered: one refused for a broken spec can be resent
            self.reload_spec()
        except HinotoriError as e:
            self.store.record("webhook", "webhook.failed", repository, {"error": str(e)[:500]})
            raise
        try:
            self.webhook.deliveries.check(delivery, body)
        except Refused:
            self.webhook.reject("replayed delivery", source)
            raise
        shipped = [name for name, svc in self.fleet.spec.services.items()
                   if svc.ship_on and svc.ship_on.repository == repository
                   and svc.ship_on.branch == branch]
        if shipped:
            try:
                refuse_unpromoted(self.project, "a push's bake")
            except HinotoriError as e:
                self.store.record("webhook", "webhook.refused", repository,
                                  {"ships": shipped, "error": str(e)[:500]})
                raise
        self.store.record("webhook", "webhook.push", repository,
                          {"branch": branch, "commit": event.get("after"), "ships": shipped,
                           "delivery": delivery[:64] if delivery else None})
        for name in shipped:
            self.spawn(self.ship(name, f"push {repository}@{branch} "
                                       f"{str(event.get('after', ''))[:12]}"), f"ship {name}")
        return shipped

    async def ship(self, service: str, why: str) -> None:
        """bake -> deploy with the spec's strategy (the bake runs in a thread: it is slow)."""
        from hinotori.releases import bake_service

        try:
            refuse_unpromoted(self.project, "a bake shipped here")
            _, outcome = await asyncio.to_thread(bake_service, self.project, service, via="push")
            await self.start_deployment(service, kind="deploy", release=outcome.release.number,
                                        lock_wait=600, actor="webhook", reason=why)
        except HinotoriError as e:
            self.store.record("webhook", "ship.failed", service, {"error": str(e)[:500]})
        except Exception as e:  # a bug: keep the controller alive and say what happened
            log.exception("shipping %s failed", service)
            self.store.record("webhook", "ship.failed", service,
                              {"error": f"internal error: {e!r}"[:500]})
