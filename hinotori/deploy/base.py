"""The Strategy protocol: one way to move a service's traffic from one release to another.

Every strategy is called the same way, ``await Strategy().run(StrategyRun(...))``, and returns
the deployment's summary (what ``hinotori deployment show`` prints). The run says what kind of
deployment it is: ``deploy`` (a release in), ``rollback`` (back to the previous release; the
controller runs it with blue-green: one switch, never a slow ramp) or ``phoenix`` (the same
release on fresh hosts; run with rolling, one host at a time). A strategy that takes operator
requests while it runs (pause, resume, promote, abort) says so with ``controllable``; the
controller then hands ``run.control`` to the API. New strategies are one module and one line in
``deploy/strategies.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from hinotori.deploy.fleet import Fleet, Progress
from hinotori.model import Release

DEPLOY, ROLLBACK, PHOENIX = "deploy", "rollback", "phoenix"  # the kinds of deployment


@dataclass
class Control:
    """Operator requests to a running deployment (set by the API, read by the strategy)."""

    paused: bool = False
    promote: bool = False
    abort: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def request(self, what: str) -> None:
        if what == "pause":
            self.paused = True
        elif what == "resume":
            self.paused = False
        elif what == "promote":
            self.promote, self.paused = True, False
        elif what == "abort":
            self.abort = True
        self.changed.set()


@dataclass(frozen=True)
class StrategyRun:
    """One deployment, as a strategy sees it."""

    fleet: Fleet
    release: Release  # the release going in (for a rollback: the previous one)
    progress: Progress  # step reporting (the deployment's steps, notifications, hooks)
    spec: Any  # the service's [strategy] table (spec.schema.StrategySpec), maybe another kind's
    control: Control = field(default_factory=Control)
    kind: str = DEPLOY  # DEPLOY, ROLLBACK or PHOENIX
    only: frozenset[str] | None = None  # phoenix: replace just these hosts
    hold: Any = None  # deploy --hold (deploy.hold.Hold): blue-green holds before its switch


class Strategy(Protocol):
    name: ClassVar[str]  # as the spec's strategy.kind and `--strategy` say it
    controllable: ClassVar[bool]  # reads run.control (pause, resume, promote, abort)

    async def run(self, run: StrategyRun) -> dict[str, Any]:
        """Move the service to ``run.release``; raise DeployError (traffic where it was, or
        rolled back) when it cannot."""
        ...
