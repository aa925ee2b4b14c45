"""`hinotori demo`: the whole immutable lifecycle under load, in a throwaway project.

v1 is baked and deployed (3 hosts) while 50 keep-alive clients hammer the router; v2 (a real
code change, so a new image digest) is deployed blue-green; the service is rolled back to v1
from its warm hosts; v3, whose health check fails, is refused with traffic untouched. The demo
exits 0 only if not a single request failed.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from hinotori.cli import controlcmds, render
from hinotori.cli.render import console
from hinotori.errors import HinotoriError

if TYPE_CHECKING:
    from hinotori.controller.client import ControllerClient
    from hinotori.loadgen import BackgroundLoad
    from hinotori.project import Project

SERVICE = "web"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_project(directory: Path, router_port: int) -> Project:
    from hinotori.examples import example_dir
    from hinotori.project import Project

    shutil.copytree(example_dir("hello"), directory, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hinotori"))
    spec = directory / "hinotori.toml"
    text = spec.read_text()
    text = text.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{router_port}"', 1)
    # The refused release (step 5) should not keep the audience waiting for 30s.
    spec.write_text(text.replace('boot_timeout = "30s"', 'boot_timeout = "5s"', 1))
    (directory / "VERSION").write_text("1\n")
    return Project.load(directory)


class _Demo:
    def __init__(self, project: Project, json_out: bool) -> None:
        self.project = project
        self.json_out = json_out
        self.client: ControllerClient | None = None
        self.phases: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        if not self.json_out:
            console.print(text, highlight=False)

    def bake(self, label: str) -> int:
        from hinotori.releases import bake_service

        started = time.monotonic()
        with console.status(f"baking {label}…"):
            result, outcome = bake_service(self.project, SERVICE)
        self.say(f"  baked image {render.short_digest(result.image.digest)} → release "
                 f"[bold]{outcome.release.name}[/] in {render.seconds(time.monotonic() - started)}")
        return outcome.release.number

    def deployment(self, kind: str, release: int | None, load: BackgroundLoad | None,
                   expect_ok: bool = True) -> dict[str, Any]:
        assert self.client
        before = load.stats() if load else None
        started = time.monotonic()
        number = self.client.start_deployment(SERVICE, kind, release=release, actor="demo")
        assert number is not None
        with console.status(f"{kind} in progress…") as status:
            def on_step(step: dict[str, Any]) -> None:
                if load:
                    s = load.stats()
                    status.update(f"{kind}: {step['step']} — {s.total} requests, "
                                  f"{s.failed} failed")
            dep = self.client.follow(number, on_step)
        took = time.monotonic() - started
        after = load.stats() if load else None
        failed = (after.failed - before.failed) if after and before else 0
        phase = {"phase": kind, "release": f"v{dep['to_release']}", "state": dep["state"],
                 "seconds": round(took, 2), "switch_ms": dep["summary"].get("switch_ms"),
                 "instant": dep["summary"].get("instant", False), "failed_requests": failed}
        self.phases.append(phase)
        ok = dep["state"] == "succeeded"
        mark = "[green]✓[/]" if ok == expect_ok else "[red]✗[/]"
        if ok:
            how = "from warm hosts" if phase["instant"] else "blue-green"
            self.say(f"  {mark} {kind} → v{dep['to_release']} ({how}) in "
                     f"{render.seconds(took)}, switch "
                     f"{phase['switch_ms']} ms, {failed} failed requests")
        else:
            first = (dep["error"] or "").splitlines()[0]
            self.say(f"  {mark} {kind} → v{dep['to_release']} refused: {first}")
        return phase


def run_demo(*, keep: bool, clients: int, rate: float, json_out: bool) -> int:
    from hinotori.controller.client import ControllerClient
    from hinotori.loadgen import BackgroundLoad
    from hinotori.releases import config_with_env, ensure_release

    directory = Path(tempfile.mkdtemp(prefix="hinotori-demo-"))
    project = _make_project(directory, _free_port())
    demo = _Demo(project, json_out)
    load: BackgroundLoad | None = None
    refused_ok = False
    try:
        demo.say(f"[bold]hinotori demo[/] in {directory}")
        demo.say("1. start the controller (router + API) and bake v1")
        controlcmds._start_detached(project)
        demo.client = ControllerClient(project)
        v1 = demo.bake("v1")
        demo.say("2. deploy v1 (3 hosts), then start the load")
        demo.deployment("deploy", v1, None)
        load = BackgroundLoad(project.spec.router.listen, clients=clients, rate=rate,
                              record_header="x-hello-version")
        load.start()
        time.sleep(1.0)
        demo.say(f"   {clients} keep-alive clients at ~{rate:.0f} req/s through "
                 f"{project.spec.router.listen}")
        demo.say("3. change the code (VERSION 1 → 2), bake v2 and deploy it blue-green")
        (directory / "VERSION").write_text("2\n")
        v2 = demo.bake("v2")
        demo.deployment("deploy", v2, load)
        time.sleep(1.0)
        demo.say("4. roll back to v1 while its hosts are still warm")
        demo.deployment("rollback", None, load)
        time.sleep(1.0)
        demo.say("5. v3 = v1 with HELLO_HEALTHY=0: its health check fails, so it must be refused")
        v3 = ensure_release(project, SERVICE,
                            config=config_with_env(project, SERVICE, {"HELLO_HEALTHY": "0"}),
                            reason="demo: a release that fails its health check").release
        before_versions = load.stats().by_header
        phase = demo.deployment("deploy", v3.number, load, expect_ok=False)
        time.sleep(1.0)
        after_versions = load.stats().by_header
        served_since = {v for v in after_versions if after_versions[v] > before_versions[v]}
        refused_ok = phase["state"] == "failed" and served_since == {"1"}
        demo.say(f"  {'[green]✓[/]' if refused_ok else '[red]✗[/]'} traffic stayed on v1 "
                 f"(versions answering since: {', '.join(sorted(served_since))})")
    except HinotoriError as e:
        render.print_error(e)
        return 1
    finally:
        stats = load.stop() if load else None
        if demo.client:
            demo.client.close()
        try:
            controlcmds.down(spec=directory)
        except HinotoriError as e:
            render.print_error(e)
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    assert stats is not None
    ok = stats.failed == 0 and refused_ok and all(
        p["state"] == "succeeded" for p in demo.phases[:-1])
    summary = {
        "ok": ok, "requests": stats.total, "failed_requests": stats.failed,
        "failures": stats.failures[:10], "p50_ms": round(stats.p50_ms, 2),
        "p99_ms": round(stats.p99_ms, 2), "rps": round(stats.rps, 1),
        "responses_by_version": dict(stats.by_header), "phases": demo.phases,
        "project": str(directory) if keep else None}
    if json_out:
        render.print_json(summary)
    else:
        _print_summary(summary)
    return 0 if ok else 1


def _print_summary(s: dict[str, Any]) -> None:
    t = Table(title="summary", title_justify="left", show_header=False)
    t.add_row("requests", f"{s['requests']} ({s['rps']} req/s)")
    t.add_row("failed requests", f"[{'green' if not s['failed_requests'] else 'red'}]"
              f"{s['failed_requests']}[/]")
    t.add_row("latency p50 / p99", f"{s['p50_ms']} ms / {s['p99_ms']} ms")
    t.add_row("responses by version", ", ".join(f"v{k}: {v}" for k, v in
                                                 sorted(s["responses_by_version"].items())))
    for p in s["phases"]:
        t.add_row(f"{p['phase']} → {p['release']}",
                  f"{p['state']} in {render.seconds(p['seconds'])}" +
                  (f", switch {p['switch_ms']} ms" if p["switch_ms"] is not None else ""))
    console.print(t)
    console.print("[bold green]PASS[/]: no request failed" if s["ok"] else
                  f"[bold red]FAIL[/]: {s['failed_requests']} failed request(s) {s['failures']}")
