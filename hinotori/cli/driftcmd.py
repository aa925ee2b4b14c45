"""`hinotori drift`: compare every live host's view with its image manifest; exit 1 on drift.

With --replace, a service whose serving hosts drifted gets a zero-downtime deploy of the same
release (fresh hosts from the untouched image); the reason is recorded in the event log.

A container host on a machine of the fleet has no view here: its engine's diff of the
container against its image is asked instead (``ContainerHosts.changes``, drift.from_changes).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, LockWait, SpecOpt
from hinotori.cli.render import console

if TYPE_CHECKING:
    from hinotori.model import Host
    from hinotori.observe.drift import Drift
    from hinotori.project import Project


def drift(service: Annotated[str | None, typer.Argument(help="default: every service")] = None,
          spec: SpecOpt = Path("."), environment: EnvOpt = None, json_out: JsonOpt = False,
          replace: Annotated[bool, typer.Option(help="replace drifted serving hosts by a "
                                                "zero-downtime deploy of the same release")]
          = False,
          lock_wait: LockWait = "0s") -> None:
    """Report files added, removed and changed on live hosts since their image was baked."""
    # Imported here, not at the top: start-up time of every command (Typer imports this module
    # for the signature; only `hinotori drift` compares trees).
    from hinotori.model import HostState
    from hinotori.observe.drift import compare
    from hinotori.project import Project

    project = Project.load(spec, environment)
    if service:
        project.service(service)
    watched = project.store.hosts(service, (HostState.READY, HostState.SERVING,
                                            HostState.DRAINING, HostState.WARM))
    hosts = [h for h in watched if h.root and Path(h.root).is_dir()]
    remote = [h for h in watched if not h.root and h.data.get("machine")]
    manifests: dict[str, Any] = {}
    for h in hosts:
        image = project.store.release(h.service, h.release).image
        if image not in manifests:
            manifests[image] = project.images.get(image).manifest()

    def one(h: Host) -> tuple[Host, Drift]:
        image = project.store.release(h.service, h.release).image
        return h, compare(manifests[image], Path(h.root or ""))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, hosts))
    if remote:
        results += _remote_drift(project, remote)
    drifted = [(h, d) for h, d in results if d.drifted]
    if json_out:
        render.print_json([{"host": h.id, "service": h.service, "release": f"v{h.release}",
                            "state": str(h.state), "drifted": d.drifted, **d.to_dict()}
                           for h, d in results])
    else:
        _print(results)
    if replace and drifted:
        _replace(project, drifted, lock_wait, json_out)
    if drifted:
        raise typer.Exit(1)


def _remote_drift(project: Project, hosts: list[Host]) -> list[tuple[Host, Drift]]:
    """Drift of hosts on machines, from their engines' diffs; a host whose engine cannot be
    asked is named on stderr and left out (it is not known to be clean)."""
    import asyncio

    from hinotori.controller.wiring import make_providers
    from hinotori.errors import HinotoriError
    from hinotori.observe.drift import from_changes

    providers = make_providers(project)

    async def one(h: Host) -> tuple[Host, Drift] | None:
        provider: Any = providers.get(h.provider)
        if not hasattr(provider, "changes"):
            render.err_console.print(f"[yellow]cannot check {h.id}:[/] it has no view here "
                                     f"and provider {h.provider!r} cannot list its changes")
            return None
        try:
            return h, from_changes(await provider.changes(h))
        except HinotoriError as e:
            render.err_console.print(f"[yellow]cannot check {h.id}:[/] {e}")
        except Exception as e:  # the engine's own errors (a container gone meanwhile)
            render.err_console.print(f"[yellow]cannot check {h.id}:[/] {type(e).__name__}")
        return None

    async def every() -> list[tuple[Host, Drift] | None]:
        return list(await asyncio.gather(*(one(h) for h in hosts)))

    try:
        return [r for r in asyncio.run(every()) if r is not None]
    finally:
        for provider in providers.values():
            provider.close()


def _print(results: list[tuple[Host, Drift]]) -> None:
    if not results:
        console.print("no live hosts to check")
        return
    for h, d in results:
        if not d.drifted:
            console.print(f"[green]✓[/] {h.id} ({h.service} v{h.release}, {h.state}): no drift")
            continue
        console.print(f"[red]✗[/] {h.id} ({h.service} v{h.release}, {h.state}): "
                      f"{len(d.added)} added, {len(d.removed)} removed, "
                      f"{len(d.changed)} changed")
        for path in d.added:
            console.print(f"    + {path}", highlight=False)
        for path in d.removed:
            console.print(f"    - {path}", highlight=False)
        for change in d.changed:
            console.print(f"    ~ {change.path}: {change.what}", highlight=False)


def _replace(project: Project, drifted: list[tuple[Host, Drift]], lock_wait: float,
             json_out: bool) -> None:
    from hinotori.cli.controlcmds import _actor, _print_step
    from hinotori.controller.client import ControllerClient
    from hinotori.model import HostState

    client = ControllerClient(project)
    try:
        for service in sorted({h.service for h, _ in drifted if h.state == HostState.SERVING}):
            ids = [h.id for h, _ in drifted if h.service == service]
            current, _ = project.store.service_releases(service)
            reason = f"drift on {', '.join(ids)}"
            number = client.start_deployment(service, "deploy", release=current,
                                             lock_wait=lock_wait, actor=_actor(), replace=True,
                                             reason=reason)
            assert number is not None
            dep = client.follow(number, (lambda _: None) if json_out else _print_step)
            if dep["state"] != "succeeded":
                render.err_console.print(f"[red]replacing {service} failed:[/] {dep['error']}")
            elif not json_out:
                console.print(f"[green]replaced[/] {service} v{current}'s hosts ({reason})")
    finally:
        client.close()
