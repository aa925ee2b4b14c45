"""`hinotori chaos`: a chaos monkey for one service, in the spirit of Netflix's.

It runs against the controller: every --interval, with --probability, it checks the steady
state (no deployment running, all replicas serving, at least --min-healthy left after a kill),
kills one serving host at random with SIGKILL, then times how long the self-healing loop takes
to bring the service back to full strength. At the end it reports the kills, the recovery
times, and the requests that failed meanwhile (from the router's metrics).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, SpecOpt, duration_option
from hinotori.cli.render import console
from hinotori.errors import HinotoriError

if TYPE_CHECKING:
    from hinotori.controller.client import ControllerClient


def _serving(client: ControllerClient, service: str) -> list[dict[str, Any]]:
    return [h for h in client.hosts(service) if h["state"] == "serving"]


def _failed(client: ControllerClient, service: str) -> tuple[int, int]:
    """(5xx answers, requests) so far, over every release of the service. Router "errors"
    are not failures: a connection to a killed host that was retried elsewhere counts there
    but the client never saw it."""
    metrics = client.metrics(service)
    return (sum(m["statuses"].get("5xx", 0) for m in metrics),
            sum(m["requests"] for m in metrics))


def summary_line(report: dict[str, Any]) -> str:
    """The run in one line, recovery times for people (--json keeps the seconds)."""
    return (f"chaos on {report['service']}: {report['kills']} kill(s), recovery p50 "
            f"{render.seconds(report['recover_p50_s'])} max "
            f"{render.seconds(report['recover_max_s'])}, {report['not_recovered']} not "
            f"recovered, {report['failed_requests']} failed of {report['requests']} requests, "
            f"{len(report['skipped'])} skipped")


def chaos(service: str, spec: SpecOpt = Path("."), environment: EnvOpt = None,
          interval: Annotated[float, duration_option(
              "--interval", help="time between chances to kill")] = "10s",
          duration: Annotated[float, duration_option("--duration", help="how long to run")]
          = "5m",
          probability: Annotated[float, typer.Option(
              min=0, max=1, help="the chance to kill at each interval, 0 to 1")] = 1.0,
          min_healthy: Annotated[int, typer.Option(min=0, help="never leave fewer serving")]
          = 1,
          recover_timeout: Annotated[float, duration_option(
              "--recover-timeout", help="give up waiting after")] = "60s",
          dry_run: Annotated[bool, typer.Option(help="choose victims, kill nothing")] = False,
          seed: Annotated[int | None, typer.Option(help="for repeatable runs")] = None,
          json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Kill random hosts of a service and measure that nobody notices."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

    project = Project.load(spec, environment)
    if project.service(service).stateful:
        raise HinotoriError(f"{service} is stateful: chaos never kills it",
                            hint="stateful services are left alone by chaos and phoenix")
    replicas = project.service(service).replicas
    every, until, give_up = interval, time.monotonic() + duration, recover_timeout
    rng = random.Random(seed)
    client = ControllerClient(project)
    kills: list[dict[str, Any]] = []
    skipped: list[str] = []
    failed0, requests0 = _failed(client, service)
    try:
        while time.monotonic() + every <= until:
            time.sleep(every)
            if rng.random() >= probability:
                continue
            status = next(s for s in client.status()["services"] if s["name"] == service)
            serving = _serving(client, service)
            if status["locked_by"] or len(serving) < replicas or len(serving) - 1 < min_healthy:
                skipped.append(f"steady state not met ({len(serving)}/{replicas} serving, "
                               f"lock: {status['locked_by']})")
                continue
            victim = rng.choice(serving)
            if dry_run:
                kills.append({"host": victim["id"], "dry_run": True})
                continue
            before_failed, _ = _failed(client, service)
            killed_at = time.monotonic()
            try:
                client.kill(victim["id"], actor=f"chaos:{service}")
            except HinotoriError:
                # A deployment or a heal that began after the steady-state check may have moved
                # the victim out of serving: a missed chance, not a failed run.
                if victim["id"] in {h["id"] for h in _serving(client, service)}:
                    raise
                skipped.append(f"{victim['id']} left serving before the kill")
                continue
            recovered = None
            while time.monotonic() - killed_at < give_up:
                now = _serving(client, service)
                if len(now) >= replicas and victim["id"] not in {h["id"] for h in now}:
                    recovered = time.monotonic() - killed_at
                    break
                time.sleep(0.05)
            after_failed, _ = _failed(client, service)
            kills.append({"host": victim["id"], "recover_s": recovered,
                          "failed_requests": after_failed - before_failed})
            if not json_out:
                took = "[red]not recovered[/]" if recovered is None else \
                    f"recovered in {render.seconds(recovered)}"
                console.print(f"killed {victim['id']}: {took}, "
                              f"{after_failed - before_failed} failed requests")
    except HinotoriError:
        client.close()
        raise
    failed, requests = _failed(client, service)
    client.close()
    times = sorted(k["recover_s"] for k in kills if k.get("recover_s") is not None)
    report = {"service": service, "kills": len([k for k in kills if not k.get("dry_run")]),
              "dry_run": dry_run, "victims": kills, "skipped": skipped,
              "recover_p50_s": times[len(times) // 2] if times else None,
              "recover_max_s": times[-1] if times else None,
              "not_recovered": sum(1 for k in kills if not k.get("dry_run")
                                   and k.get("recover_s") is None),
              "failed_requests": failed - failed0, "requests": requests - requests0}
    if json_out:
        render.print_json(report)
    else:
        console.print(summary_line(report), highlight=False)
    if report["not_recovered"] or report["failed_requests"]:
        raise typer.Exit(1)
