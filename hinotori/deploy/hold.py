"""Held deployments (`hinotori deploy web --hold [DURATION]`): the new colour of a blue-green
deploy, booted and gated as usual, waits before the switch as a last staging.

    boot N new hosts (health- and verify-gated)  ->  preview: routed with weight 0, so live
    traffic never reaches them; the router's preview listener and `X-Hinotori-Release:
    preview | vN` on the main one do  ->  pre_switch hooks against the preview (``ready``)
    ->  HELD until an operator promotes (the held hosts are probed once more, then the
    usual zero-drop switch follows) or aborts, or the hold expires: then the held hosts
    leave the preview, drain and are burned, and traffic never moved.

A hold lives in the controller's memory (``Fleet.previews`` and the deployment's task): a
controller that stops or dies during a hold leaves the deployment aborted with traffic where
it was (adoption routes without the preview and burns the held hosts, which are READY).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hinotori import faults
from hinotori.deploy.base import Control
from hinotori.deploy.fleet import Fleet, Progress
from hinotori.durations import format_duration
from hinotori.errors import DeployError, HoldEnded
from hinotori.model import Host, Release

# The header that selects a release on the main listener (both routers).
RELEASE_HEADER = "X-Hinotori-Release"


@dataclass(frozen=True)
class Hold:
    """What the controller gives a strategy that must hold (StrategyRun.hold)."""

    timeout: float | None  # seconds the hold may last; None: until promoted or aborted
    # Called once the new hosts answer on the preview: runs the pre_switch hooks and records
    # the hold; raises (a DeployError) to burn the held colour instead.
    ready: Callable[[Release, list[Host]], Awaitable[None]]


async def hold(fleet: Fleet, release: Release, hosts: list[Host], spec: Hold, control: Control,
               progress: Progress) -> None:
    """Route ``hosts`` for preview, hold them, and return once promoted. Anything else (an
    abort, the expiry, a failing hook, cancellation) burns them and raises: traffic never
    moved."""
    service = release.service
    try:
        took = await fleet.preview(service, release.number, hosts)
        progress("preview", {"release": release.name, "switch_ms": round(took * 1000, 2),
                             "hosts": [h.id for h in hosts]})
        faults.point("hold.previewed")
        await spec.ready(release, hosts)
        faults.point("hold.held")
        await _wait(control, spec.timeout, release)
        # A hold may last hours and nothing heals held hosts: check them once more.
        if not await fleet.healthy_now(hosts):
            raise DeployError(f"{service} {release.name}: a held host no longer passes its "
                              f"health check; the held release was burned, traffic never "
                              f"moved", hint=f"`hinotori deploy {service} --hold` boots it again")
    except BaseException as e:
        why = (str(e).splitlines() or ["the controller stopped"])[0][:200]
        await _burn(fleet, service, hosts, why=why)
        raise


async def _wait(control: Control, timeout: float | None, release: Release) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (control.promote or control.abort):
        control.changed.clear()  # no await since the check: no request can be missed
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            expired = HoldEnded(
                f"the hold of {release.service} {release.name} expired after "
                f"{format_duration(timeout or 0)}: it was burned, traffic never moved",
                hint=f"`hinotori deploy {release.service} --hold` holds it again")
            expired.expired = True
            raise expired
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await control.changed.wait()
    if control.abort:
        raise HoldEnded(f"{release.service} {release.name} was aborted while held: it was "
                        f"burned, traffic never moved")


async def _burn(fleet: Fleet, service: str, hosts: list[Host], why: str) -> None:
    """Out of the preview, drained (a preview request in flight finishes), destroyed. Run to
    the end even when the deployment's task is being cancelled: a hold never leaks hosts."""
    async def burn() -> None:
        with contextlib.suppress(Exception):
            await fleet.preview(service, None, [])
        await fleet.drain(hosts, fleet.service(service).drain)
        await fleet.destroy(hosts, why=f"held release burned: {why}")
    await asyncio.shield(asyncio.ensure_future(burn()))
