"""Commands that talk to the controller: up, down, deploy, rollback, ship, phoenix and the
canary controls (status: statuscmd.py; deployments: deploymentcmds.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hinotori.cli import holdview, render
from hinotori.cli.options import (
    STRATEGIES,
    EnvOpt,
    JsonOpt,
    LockWait,
    SpecOpt,
    environment_name,
    release_option,
)
from hinotori.cli.options import strategy as strategy_name
from hinotori.cli.render import console
from hinotori.errors import ControllerError, DeployError, HinotoriError, SpecError
from hinotori.processes import pid_alive
from hinotori.statefiles import open_private

if TYPE_CHECKING:
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project


def up(spec: SpecOpt = Path("."),
       detach: Annotated[bool, typer.Option("-d", "--detach", help="run in the background")]
       = False, environment: EnvOpt = None) -> None:
    """Run the controller: router, hosts and API.

    Ctrl-C stops the controller only: hosts and router keep serving, and the next `up` adopts
    them."""
    from hinotori.project import Project

    project = Project.load(spec, environment)
    for warning in project.loaded.warnings:  # once here; a detached controller logs its own
        render.err_console.print(f"warning: {warning}", markup=False, highlight=False,
                                 soft_wrap=True)
    if detach:
        _start_detached(project)
        return
    import asyncio  # here, not at the top: start-up time of every command (asyncio ~8 ms)

    from hinotori.controller.serve import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    console.print(f"controller for [bold]{project.spec.project.name}[/]: router on "
                  f"{project.spec.router.listen}")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(project))


def _loop_factory() -> Any:
    """uvloop's event loop where it is installed: the controller's idle cost is mostly loop
    work per health probe (a connection each), which uvloop does in C at about half the CPU.
    None (asyncio's own loop) where it is not."""
    try:
        import uvloop
    except ImportError:  # not built for every platform: asyncio's loop does the same work
        return None
    return uvloop.new_event_loop


def _start_detached(project: Project) -> None:
    project.ensure_state_dir()
    if project.controller_file.exists() and _answers(project):
        console.print("controller already running")
        return
    project.controller_file.unlink(missing_ok=True)
    start = project.controller_log.stat().st_size if project.controller_log.exists() else 0
    with open_private(project.controller_log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hinotori", "up", "--spec", str(project.loaded.path),
             *(["--environment", project.environment] if project.environment else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            cwd=project.root)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(project.controller_log, "rb") as log:
                log.seek(start)  # only what this start wrote
                tail = log.read().decode(errors="replace").splitlines()[-15:]
            raise ControllerError("the controller exited while starting:\n  " + "\n  ".join(tail),
                                  hint=f"full log: {project.controller_log}")
        if project.controller_file.exists() and _answers(project):
            info = json.loads(project.controller_file.read_text())
            console.print(f"controller up (pid {info['pid']}), API http://{info['address']}, "
                          f"router {info['router']}")
            return
        time.sleep(0.1)
    raise ControllerError("the controller did not come up within 30s",
                          hint=f"see {project.controller_log}")


def _answers(project: Project) -> bool:
    from hinotori.controller.client import ControllerClient

    try:
        client = ControllerClient(project, timeout=2.0)
        try:
            client.status()
        finally:
            client.close()
        return True
    except HinotoriError:
        return False


def down(spec: SpecOpt = Path("."), environment: EnvOpt = None) -> None:
    """Stop the controller, its hosts and the router."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

    project = Project.load(spec, environment)
    try:
        client = ControllerClient(project, timeout=5.0)
        pid = client.info["pid"]
        client.shutdown(teardown=True)
        client.close()
    except ControllerError:
        _teardown_without_controller(project)
        return
    from hinotori.deploy.fleet import LIVE_STATES

    wait_stopped(pid, lambda: len(project.store.hosts(states=LIVE_STATES)))
    console.print("controller, hosts and router stopped")


def wait_stopped(pid: int, live_hosts: Callable[[], int], quiet: float = 120.0) -> None:
    """Wait for the controller to exit while it stops hosts: as long as a host stopped in the
    last ``quiet`` seconds (a thousand hosts take minutes). Killed half-way, it would leave the
    router and the rest of the hosts running."""
    left, deadline = live_hosts(), time.monotonic() + quiet
    while pid_alive(pid):
        if time.monotonic() > deadline:
            now = live_hosts()
            if now >= left:
                raise ControllerError(
                    f"the controller (pid {pid}) has not stopped: no host stopped in the last "
                    f"{quiet:g}s ({now} still live)",
                    hint=f"kill it: kill {pid}; then run `hinotori down` again")
            left, deadline = now, time.monotonic() + quiet
        time.sleep(0.1)


def _teardown_without_controller(project: Project) -> None:
    """No controller answers: stop whatever it left running, straight from the store."""
    import asyncio  # here, not at the top: start-up time of every command

    from hinotori.controller.daemon import Controller
    from hinotori.deploy.fleet import LIVE_STATES

    live = project.store.hosts(states=LIVE_STATES)

    async def run() -> None:
        controller = Controller(project)
        controller.claim()  # refuses if a controller is alive but not answering
        controller.teardown = True
        await controller.stop()

    asyncio.run(run())
    console.print(f"no controller was running; stopped {len(live)} host(s) and the router")



def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"--env {pair!r} is not KEY=VALUE", key="--env",
                            hint="e.g. --env HELLO_VERSION=2")
        env[key] = value
    return env


def deploy(service: str, spec: SpecOpt = Path("."), environment: EnvOpt = None,
           release: Annotated[int | None, release_option("--release", help="e.g. v3")] = None,
           env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE: a "
                          "config-only release from the current image")] = None,
           strategy: Annotated[str | None, typer.Option(
               "--strategy", parser=strategy_name, metavar="STRATEGY",
               help=f"{' | '.join(STRATEGIES)} (default: the spec's)")] = None,
           from_env: Annotated[str | None, typer.Option(
               "--from", parser=environment_name, metavar="ENVIRONMENT",
               help="promote: the image serving in that environment now, no bake")] = None,
           lock_wait: LockWait = "0s", json_out: JsonOpt = False,
           hold: Annotated[float | None, typer.Option(
               holdview.HOLD, parser=holdview.hold_value, metavar="[DURATION]",
               help="boot and gate the new colour, then hold it for preview (the router's "
                    "preview_listen, or the X-Hinotori-Release header) until `promote` or "
                    "`abort` (blue-green; with DURATION, aborted when it expires)")] = None,
           ) -> None:
    """Deploy a release (default: the newest) with zero dropped requests.

    With --from ENV: the image ENV serves now, with this environment's config (a promotion:
    never a rebuild)."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project
    from hinotori.promotion import refuse_unpromoted
    from hinotori.releases import config_with_env, ensure_release

    project = Project.load(spec, environment)
    svc = project.service(service)
    if hold is not None and (strategy or svc.strategy.kind) != "blue-green":
        raise SpecError(f"--hold previews the new colour of a blue-green deploy; {service} "
                        f"would deploy with {strategy or svc.strategy.kind}", key="--hold",
                        hint="add --strategy blue-green to hold this deploy")
    overrides = _parse_env(env or [])
    if env and release is not None:
        raise SpecError("--env and --release cannot be combined", key="--env",
                        hint="--env makes a new release from the current image")
    if from_env is not None:
        if env or release is not None:
            raise SpecError("--from cannot be combined with --env or --release", key="--from",
                            hint="a promotion deploys what the source serves, with this "
                                 "environment's config")
        from hinotori.cli.promotecmd import promote_and_deploy

        client = ControllerClient(project)  # refuses before a release is written if none answers
        try:
            client.status()
            number = promote_and_deploy(project, service, from_env, json_out)
            _run_deployment(project, service, "deploy", number, lock_wait, json_out, strategy,
                            client=client, hold=hold)  # a promotion may be held for preview too
        finally:
            client.close()
        return
    if release is None:
        refuse_unpromoted(project, "a release made here")
    if release is None and project.store.latest_release(service) is None:
        raise DeployError(f"{service} has no image yet",
                          hint=f"run `hinotori bake {service}` first")
    # Everything that can refuse does so before a config-only release is written: the options
    # (parsed with the command line), the spec, and a controller that answers.
    client = ControllerClient(project)
    try:
        client.status()
        number = release
        if number is None:
            # A changed spec config or --env makes a config-only release (never an edit).
            outcome = ensure_release(project, service, config=config_with_env(
                project, service, overrides), reason="config change" if not overrides else
                "deploy --env " + " ".join(env or []))
            if outcome.created and not json_out:
                why = outcome.release.reason  # "secret API_KEY changed" says more
                console.print(f"{why if why.startswith('secret ') else 'config changed'}: "
                              f"new release [bold]{outcome.release.name}[/]")
            number = outcome.release.number
        _run_deployment(project, service, "deploy", number, lock_wait, json_out, strategy,
                        client=client, hold=hold)
    finally:
        client.close()


def rollback(service: str, spec: SpecOpt = Path("."),
             environment: EnvOpt = None, lock_wait: LockWait = "0s",
             json_out: JsonOpt = False) -> None:
    """Switch back to the previous release: instantly while it is warm, else boot it."""
    from hinotori.project import Project

    project = Project.load(spec, environment)
    project.service(service)
    _run_deployment(project, service, "rollback", None, lock_wait, json_out)


def _run_deployment(project: Project, service: str, kind: str, release: int | None,
                    lock_wait: float, json_out: bool, strategy: str | None = None,
                    client: ControllerClient | None = None, hold: float | None = None
                    ) -> None:
    """Start the deployment and follow it to its end (or its hold); ``client``, if given,
    stays open."""
    from hinotori.controller.client import ControllerClient

    own = client is None
    client = client or ControllerClient(project)
    try:
        number = client.start_deployment(service, kind, release=release, lock_wait=lock_wait,
                                          actor=_actor(), strategy=strategy, hold=hold)
        if number is None:
            current, _ = project.store.service_releases(service)
            if json_out:
                render.print_json({"deployment": None, "serving": f"v{current}"})
            else:
                console.print(f"{service} v{current} is already serving; nothing to deploy")
            return
        on_step = (lambda _: None) if json_out else _print_step
        dep = client.follow(number, on_step)
    finally:
        if own:
            client.close()
    if json_out:
        render.print_json(dep)
    if dep["state"] == "held":
        if not json_out:
            for line in holdview.held_lines(service, dep):
                console.print(line, highlight=False, soft_wrap=True)
        return
    if dep["state"] != "succeeded":
        if not json_out:
            render.err_console.print(f"[bold red]{kind} {number} failed:[/] "
                                     f"{render.escape(dep['error'] or '')}",
                                     highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if not json_out:
        console.print(deployed_line(service, dep["summary"]))


def deployed_line(service: str, s: dict[str, Any]) -> str:
    """A finished deployment in one line, its durations for people (--json keeps seconds)."""
    how = "instantly from warm hosts" if s.get("instant") else \
        f"canary through {len(s['steps'])} step(s)" if s.get("strategy") == "canary" else \
        f"rolled in {s['batches']} batch(es)" if s.get("strategy") == "rolling" else \
        f"boot→healthy {render.seconds(s.get('boot_to_healthy_s'))}"
    timing = f", switch {s['switch_ms']} ms, drain {render.seconds(s['drain_s'])}" \
        if s.get("switch_ms") is not None else ""
    return (f"[bold green]{service} now serves {s['release']}[/] ({how}{timing}, "
            f"total {render.seconds(s['total_s'])})")


def _print_step(step: dict[str, Any]) -> None:
    name = step["step"]
    text = {
        "boot": lambda s: f"booting {s['replicas']} host(s) of {s['release']}",
        "host.booted": lambda s: f"  {s['host']} started on {s['address']}",
        "host.ready": lambda s: f"  {s['host']} healthy",
        "host.failed": lambda s: f"  [red]{s['host']} failed[/]: {render.escape(s['detail'])}",
        "switched": lambda s: f"switched traffic to {s['release']} in {s['switch_ms']} ms",
        "drained": lambda s: f"drained {len(s['hosts'])} old host(s) in "
        f"{render.seconds(s['drain_s'])}"
        if s["hosts"] else None,
        "cold": lambda s: f"{s['why']}",
        "note": lambda s: s["text"],
        "step": lambda s: f"canary weight {s['weight']}% (switch {s['switch_ms']} ms)",
        "analysis": lambda s: f"  {render.seconds(s['elapsed_s'])}: {s['outcome']}"
        f"{' (paused)' if s['paused'] else ''} — canary {s['metrics'].get('canary_requests')} "
        f"req, {_pct(s['metrics'].get('canary_error_rate'))} errors, p99 "
        f"{s['metrics'].get('canary_p99_ms')} ms; stable "
        f"{s['metrics'].get('stable_requests')} req, "
        f"{_pct(s['metrics'].get('stable_error_rate'))} errors"
        + (f" [{render.escape('; '.join(s['reasons']))}]" if s["reasons"] else ""),
        "hook": lambda s: f"{s['hook']} hook exited {s['rc']}"
        + (f": {render.escape(s['output'].splitlines()[-1])}" if s["output"] else ""),
        "rolled-back": lambda s: f"[red]rolled back to stable[/] in {s['back_ms']} ms",
        "promoted": lambda s: f"promoted {s['release']} (switch {s['switch_ms']} ms)",
        "batch": lambda s: f"rolling batch: booting {s['boot']} of {s['release']} "
        f"({s['serving_old']} old + {s['serving_new']} new serving)",
        "rolling-back": lambda s: f"[red]batch failed[/]: rolling back to {s['to']}",
        **holdview.STEPS,
    }.get(name)
    line = text(step) if text else f"{name}: {step}"
    if line:
        console.print(line, highlight=False)


def ship(service: str, spec: SpecOpt = Path("."),
         environment: EnvOpt = None, lock_wait: LockWait = "0s",
         json_out: JsonOpt = False) -> None:
    """Bake a service and deploy it in one step (continuous delivery).

    The deploy uses the spec's strategy; every new host passes its health (and verify) checks
    before it takes traffic."""
    from hinotori.project import Project
    from hinotori.promotion import refuse_unpromoted
    from hinotori.releases import bake_service

    project = Project.load(spec, environment)
    project.service(service)
    refuse_unpromoted(project, "a bake shipped here")
    with console.status(f"baking {service}…"):
        result, outcome = bake_service(project, service)
    if not json_out:
        console.print(f"baked {render.short_digest(result.image.digest)} → "
                      f"{outcome.release.name}{'' if outcome.created else ' (unchanged)'}")
    _run_deployment(project, service, "deploy", outcome.release.number, lock_wait, json_out)


def phoenix(service: str, spec: SpecOpt = Path("."),
            environment: EnvOpt = None, lock_wait: LockWait = "0s",
            json_out: JsonOpt = False) -> None:
    """Burn every host of a service and rebuild it from its image, one at a time.

    No request is dropped: the phoenix server, whose hosts never live long enough to drift."""
    from hinotori.project import Project

    project = Project.load(spec, environment)
    project.service(service)
    _run_deployment(project, service, "phoenix", None, lock_wait, json_out)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def _control(action: str) -> Any:
    def command(service: str, spec: SpecOpt = Path("."), environment: EnvOpt = None) -> None:
        from hinotori.controller.client import ControllerClient
        from hinotori.project import Project

        project = Project.load(spec, environment)
        project.service(service)
        client = ControllerClient(project)
        try:
            answer = client.control(service, action)
        finally:
            client.close()
        if "state" not in answer:
            console.print(f"{action}: sent to {service}'s running canary")
        elif not holdview.steered(answer, deployed_line(service, answer["summary"])
                                  if answer["state"] == "succeeded" else ""):
            raise typer.Exit(1)

    command.__doc__ = {"promote": "Skip the remaining canary steps: all traffic to the canary "
                                  "(a held deployment: switch to it, once done).",
                       "pause": "Hold the running canary at its step (failures still roll "
                                "back).",
                       "resume": "Let a paused canary go on.",
                       "abort": "Roll the running canary back to stable now (a held "
                                "deployment: burn it, once done)."}[action]
    return command


promote, pause, resume, abort = (_control(a) for a in ("promote", "pause", "resume", "abort"))


def _actor() -> str:
    from hinotori.store import default_actor

    return f"cli:{default_actor()}"
