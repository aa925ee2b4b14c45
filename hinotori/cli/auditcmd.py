"""`hinotori audit`: the append-only event log — who did what to which subject, when and why.

Every change the controller, a deployment or a person makes is an event written in the same
transaction as the change itself (the store's triggers refuse edits and deletes), so this is the
record to read after an incident. It reads the store directly: it works whether or not the
controller runs, and the same events are served at ``GET /v1/events``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hinotori.cli import render
from hinotori.cli.options import MAX_NUMBER, EnvOpt, JsonOpt, SpecOpt, moment_option

if TYPE_CHECKING:
    from hinotori.model import Event


def details(event: Event) -> str:
    """The detail without the why and the claimed actor (their own columns)."""
    return ", ".join(f"{k}={v}" for k, v in event.detail.items()
                     if k not in (*event.WHY_KEYS, "claimed_actor")
                     and v not in (None, "", [], {}))


def who(event: Event) -> str:
    """The actor the API's credentials proved (``token``), and who the caller said it was:
    a claim, shown as one."""
    claim = event.detail.get("claimed_actor")
    return f"{event.actor} (says {claim})" if claim else event.actor


def audit(subject: Annotated[str | None, typer.Argument(
              help="a subject or its prefix: a service (web), a host (web/web-1a2b)")] = None,
          actor: Annotated[str | None, typer.Option(
              "--actor", help="who: an actor or its prefix, e.g. alice or ci:")] = None,
          action: Annotated[str | None, typer.Option(
              "--action", help="what: an action or its prefix, e.g. deployment. or host.")] = None,
          since: Annotated[float | None, moment_option(
              "--since", help="events since …, e.g. 30m, 2h, 7d (ago)")] = None,
          until: Annotated[float | None, moment_option(
              "--until", help="events before …, e.g. 1h (ago)")] = None,
          grep: Annotated[str | None, typer.Option(
              "--grep", help="text in the event's details (a reason, a host id…)")] = None,
          limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_NUMBER,
                                             help="the newest N events")] = 100,
          spec: SpecOpt = Path("."), environment: EnvOpt = None,
          json_out: JsonOpt = False) -> None:
    """The event log (who, what, when, why), with filters; oldest first."""
    from hinotori.project import Project

    project = Project.load(spec, environment)
    events = project.store.events(subject=subject, actor=actor, action=action,
                                  since=since, until=until,
                                  text=grep, limit=limit)
    if json_out:
        render.print_json([e.to_dict() for e in events])
        return
    render.table(None, ["when", "who", "what", "subject", "why", "details"],
                 [(render.when(e.ts), who(e), e.action, e.subject, e.why, details(e))
                  for e in events])
