"""Membership: who serves each service, told to everyone who wants to know.

The fleet calls ``Membership`` after every switch with the hosts that joined and left a
service's traffic. It re-renders the discovery files (.hinotori/discovery/), records
``member.join``/``member.leave``, tells the Serf cluster when ``[membership] serf`` is set, and
runs the service's on_join/on_leave hooks: all in the background, so membership never blocks a
switch, and a failure is an event (``member.serf-failed``, ``hook.failed``), never a failed
switch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from hinotori.controller.discovery import render_discovery
from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import Fleet
from hinotori.deploy.hooks import run_hook
from hinotori.model import Host
from hinotori.project import Project

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


class Membership:
    def __init__(self, project: Project, fleet: Fleet, *, spawn: Spawn) -> None:
        self.project = project
        self.fleet = fleet
        self.store = project.store
        self.spawn = spawn

    def render(self) -> None:
        render_discovery(self.project.state_dir / "discovery", self.fleet)

    def __call__(self, service: str, joined: list[Host], left: list[Host]) -> None:
        """Hosts joined or left a service's traffic: re-render the discovery files and run the
        spec's on_join/on_leave hooks (in the background: membership never blocks a switch)."""
        self.render()
        svc = self.fleet.service(service)
        self.store.record_many(ACTOR, [  # one transaction for a fleet's worth of events
            (f"member.{event}", f"{service}/{host.id}",
             {"address": host.address, "release": f"v{host.release}"})
            for event, hosts in (("join", joined), ("leave", left)) for host in hosts])
        for event, hosts, argv in (("join", joined, svc.hooks.on_join),
                                   ("leave", left, svc.hooks.on_leave)):
            for host in hosts:
                if self.fleet.spec.membership.serf:
                    self.spawn(self._serf_event(event, service, host), f"serf {event}")
                if argv:
                    env = {"HINOTORI_SERVICE": service, "HINOTORI_EVENT": event,
                           "HINOTORI_HOST_ID": host.id, "HINOTORI_HOST_ADDRESS":
                           host.address or "", "HINOTORI_RELEASE": f"v{host.release}"}
                    self.spawn(self._hook(f"on_{event}", argv, env, svc.hooks.timeout,
                                          f"{service}/{host.id}"), f"on_{event} {host.id}")

    async def _hook(self, name: str, argv: list[str], env: dict[str, str], timeout: float,
                    subject: str) -> None:
        result = await run_hook(name, argv, env=env, cwd=self.project.root, timeout=timeout)
        if not result.ok:
            self.store.record(ACTOR, "hook.failed", subject,
                              {"hook": name, "rc": result.rc, "output": result.output[-300:]})

    async def _serf_event(self, event: str, service: str, host: Host) -> None:
        """Tell the Serf cluster (through the local agent's RPC) that a member joined or left;
        a failure is an event here, never a failed switch."""
        payload = json.dumps({"event": event, "service": service, "host": host.id,
                              "address": host.address, "release": f"v{host.release}"},
                             separators=(",", ":"))
        argv = ["serf", "event", f"-rpc-addr={self.fleet.spec.membership.serf}",
                "-coalesce=false", "hinotori-member", payload]
        result = await run_hook("serf", argv, env={}, cwd=self.project.root, timeout=10)
        if not result.ok:
            self.store.record(ACTOR, "member.serf-failed", f"{service}/{host.id}",
                              {"rc": result.rc, "output": result.output[-300:]})
