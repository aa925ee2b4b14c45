"""`hinotori verify` and `hinotori checks generate`: checks against a throwaway host.

Both boot a host of a release through the service's provider, away from traffic (never routed,
in the store as VERIFYING so the audit log shows it), wait for its health check, do their work
and destroy it whatever happens (failure, Ctrl-C). A stateful service's throwaway host gets
empty stand-in volumes in its scratch dir, never the real ones: one writer per volume, always.
Neither needs a controller.

    verify           run the service's checks and testinfra files; print the report; exit 1 if
                     any failed
    checks generate  survey a host (a throwaway one, or a running one with --host) and print
                     starter [[services.NAME.checks]] tables that it passes
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, SpecOpt, duration_option
from hinotori.cli.render import console, err_console
from hinotori.errors import HinotoriError, NotFound, ProviderError, SpecError
from hinotori.statefiles import private_dir

if TYPE_CHECKING:
    from hinotori.model import Host, Release
    from hinotori.project import Project
    from hinotori.providers.base import Provider
    from hinotori.verify import CheckResult, Report

ReleaseOpt = Annotated[str | None, typer.Option("--release", help="vN; default: the newest")]

# asyncio, hinotori.health and hinotori.verify.survey are imported inside the functions that
# use them: every command's start-up imports this module (Typer reads the signatures), and they
# are only for verify and checks generate. (hinotori.verify itself is loaded by the spec.)

checks_app = typer.Typer(no_args_is_help=True, help="Write and manage verify checks.")


def verify(service: Annotated[str, typer.Argument(help="the service whose checks to run")],
           release: ReleaseOpt = None,
           retry_timeout: Annotated[float, duration_option(
               "--retry-timeout", help="retry failing checks this long, e.g. 10s")] = "0s",
           sleep: Annotated[float, duration_option("--sleep", help="pause between retries")]
           = "1s",
           format_: Annotated[str, typer.Option("--format", parser=_format, metavar="FORMAT",
                                                help="table, json, junit or tap")] = "table",
           json_out: Annotated[bool, typer.Option("--json", help="same as --format json")]
           = False,
           spec: SpecOpt = Path("."), environment: EnvOpt = None) -> None:
    """Boot a throwaway host of a release, run the service's checks on it, destroy it; exit 1
    if any check failed."""
    import asyncio  # lazy: start-up time, see checks_app

    from hinotori.project import Project
    from hinotori.store import default_actor
    from hinotori.verify.report import RENDERERS, print_table

    fmt = "json" if json_out else format_
    retry, pause = retry_timeout, sleep
    project = Project.load(spec, environment)
    svc = project.service(service)
    if not svc.checks and not svc.testinfra:
        raise SpecError(f"service {service!r} has no checks", file=str(project.loaded.path),
                        key=f"services.{service}.checks",
                        hint=f"add [[services.{service}.checks]] tables, or write a start with "
                             f"`hinotori checks generate {service}`")
    rel = _release(project, service, release)
    report = asyncio.run(_verify(project, service, rel, retry, pause))
    project.store.record(default_actor(), "verify.passed" if report.ok else "verify.failed",
                         f"{service}/{rel.name}", {"host": report.host, "total": report.total,
                                                   "failed": report.failed})
    if fmt == "table":
        print_table(report, console)
    else:
        sys.stdout.write(RENDERERS[fmt](report))
    if not report.ok:
        raise typer.Exit(1)


@checks_app.command("generate")
def checks_generate(
        service: Annotated[str, typer.Argument(help="the service to write checks for")],
        release: ReleaseOpt = None,
        host: Annotated[str | None, typer.Option(
            "--host", help="survey this running host instead of a throwaway one")] = None,
        output: Annotated[Path | None, typer.Option(
            "--output", "-o", help="write here instead of stdout")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="the checks as a JSON list")]
        = False,
        spec: SpecOpt = Path("."), environment: EnvOpt = None) -> None:
    """Print starter [[services.NAME.checks]] tables from what a host of the service has: its
    ports, files (modes, sha256 of key files), processes and health endpoint."""
    import asyncio  # lazy: start-up time, see checks_app

    from hinotori.project import Project
    from hinotori.verify.survey import MAX_FILES, starter_checks, to_toml

    project = Project.load(spec, environment)
    svc = project.service(service)
    survey, used, port = asyncio.run(_survey(project, service, release, host))
    checks = starter_checks(survey, port=port, port_env=svc.port_env,
                            health=None if svc.health.tcp else svc.health.check(),
                            command=svc.command, declared=svc.declared_sysctls())
    header = (f"starter checks for {service}, from host {used.id} ({service} v{used.release}) "
              f"at {render.when(time.time())}\nby `hinotori checks generate`: keep what matters, "
              "add what is missing")
    text = (json.dumps(checks, indent=2) + "\n" if json_out else
            to_toml(service, checks, header=header,
                    more_files=max(0, len(survey.get("files", ())) - MAX_FILES)))
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {len(checks)} checks to {output}")


# -- helpers -------------------------------------------------------------------------------
def _format(text: str) -> str:
    from hinotori.verify.report import FORMATS

    if text not in FORMATS:
        raise ValueError(f"{text!r} is not a format: use one of {', '.join(FORMATS)}")
    return text


def _release(project: Project, service: str, wanted: str | None) -> Release:
    if wanted is None:
        latest = project.store.latest_release(service)
        if latest is None:
            raise NotFound(f"{service} has no release yet",
                           hint=f"run `hinotori bake {service}` first")
        return latest
    number = wanted.removeprefix("v")
    if not number.isdigit():
        raise HinotoriError(f"--release {wanted!r}: write a release as vN, e.g. v3")
    return project.store.release(service, int(number))


def _providers(project: Project) -> dict[str, Provider]:
    """The project's providers, closed when this command exits (a host on a machine of the
    fleet is reached through an SSH connection, which must not outlive the command)."""
    import atexit

    from hinotori.controller.wiring import make_providers

    providers = make_providers(project)
    for provider in providers.values():
        atexit.register(provider.close)
    return providers


@asynccontextmanager
async def throwaway_host(project: Project, service: str, release: Release,
                         provider: Provider, purpose: str) -> AsyncIterator[Host]:
    """A host of ``release`` that no traffic reaches, recorded in the store, destroyed on exit
    whatever happens."""
    from hinotori.model import HostState
    from hinotori.providers.base import BootRequest, volume_dirs
    from hinotori.store import default_actor

    svc, actor = project.service(service), default_actor()
    host_id = f"{service}-verify-{secrets.token_hex(3)}"
    state_dir = project.hosts_dir / host_id
    private_dir(state_dir / "scratch")  # hosts/<id> private; the volumes in it are host data
    # Stand-ins for the volumes: the real ones have one writer, the serving host.
    volumes = volume_dirs(state_dir / "scratch" / "volumes", svc.volumes)
    image_root = project.images.rootfs(release.image)
    # Secrets as a deploy's hosts get them (resolved here, now); SecretError refuses it.
    resolved = await project.secrets.boot(release)
    host = await provider.boot(BootRequest(host_id, release, image_root, state_dir,
                                           volumes=volumes, secrets=resolved))
    try:
        project.store.save_host(host, actor=actor, why=f"throwaway host for {purpose}")
        host.state = HostState.VERIFYING
        project.store.save_host(host, actor=actor, why=f"throwaway host for {purpose}")
        yield host
    finally:
        await provider.destroy(host, grace=svc.stop_grace)
        project.store.save_host(replace(host, state=HostState.DESTROYED), actor=actor,
                                why="throwaway host done")


async def _healthy(project: Project, service: str, provider: Provider,
                   host: Host) -> CheckResult:
    from hinotori.verify import CheckResult, MatcherResult

    svc = project.service(service)
    check = svc.health.check()

    async def alive() -> bool:
        return await provider.adopt(host)

    from hinotori.health import wait_healthy  # lazy: start-up time, see checks_app

    start = time.perf_counter()
    result = await wait_healthy(host.address or "", check, deadline=svc.boot_timeout,
                                alive=alive)
    got = result.detail
    if not result.ok:
        tail = provider.logs(host, tail=5)
        got += ("; last log lines: " + " | ".join(tail)) if tail else ""
        got = project.secrets.masker.mask(got)
    want = f"HTTP {check.status}" if check.path else "TCP connect"
    return CheckResult(f"health {check.path or 'tcp'}", result.ok,
                       (MatcherResult("health", want, got, result.ok),),
                       duration=time.perf_counter() - start, source="health")


async def _verify(project: Project, service: str, release: Release, retry: float,
                  pause: float) -> Report:
    from hinotori.verify import Report, verify_host

    svc = project.service(service)
    provider = _providers(project)[svc.provider]
    testinfra = [project.root / p for p in svc.testinfra]
    start = time.perf_counter()
    with err_console.status(f"booting a throwaway host of {service} {release.name}…") as status:
        async with throwaway_host(project, service, release, provider,
                                      "hinotori verify") as host:
            status.update(f"waiting for {host.id} to be healthy…")
            health = await _healthy(project, service, provider, host)
            status.update(f"running {len(svc.checks)} checks on {host.id}…")
            report = await verify_host(provider, host, svc.checks, retry_timeout=retry,
                                       sleep=pause, testinfra=testinfra)
            status.update(f"destroying {host.id}…")
    return Report(host=report.host, results=(health, *report.results),
                  duration=time.perf_counter() - start,
                  meta={"service": service, "release": release.name})


async def _survey(project: Project, service: str, release: str | None,
                  host_id: str | None) -> tuple[dict, Host, str | None]:
    svc = project.service(service)
    providers = _providers(project)
    if host_id is not None:
        host = project.store.host(host_id)
        provider = providers.get(host.provider)
        if host.service != service or provider is None or not await provider.adopt(host):
            raise ProviderError(f"host {host_id} is not a running host of {service}",
                                hint=f"`hinotori hosts {service}` lists them")
        return await _survey_one(provider, host, svc.port_env, svc.declared_sysctls())
    rel = _release(project, service, release)
    provider = providers[svc.provider]
    with err_console.status(f"booting a throwaway host of {service} {rel.name}…"):
        async with throwaway_host(project, service, rel, provider,
                                      "hinotori checks generate") as host:
            health = await _healthy(project, service, provider, host)
            if not health.ok:
                raise ProviderError(f"throwaway host {host.id} never became healthy: "
                                    f"{health.got}", hint="fix the release, then generate")
            return await _survey_one(provider, host, svc.port_env, svc.declared_sysctls())


async def _survey_one(provider: Provider, host: Host, port_env: str,
                      sysctls: dict[str, str]) -> tuple[dict, Host, str | None]:
    from hinotori.verify.survey import survey_host  # lazy: start-up time, see checks_app

    survey = await survey_host(provider, host, port_env=port_env, sysctls=list(sysctls))
    return survey, host, survey.get("port")
