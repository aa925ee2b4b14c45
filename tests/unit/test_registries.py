"""Providers, routers, strategies, log sinks and check resources are found by name in their
registries: a new entry defined here is found and used, an unknown name is an error that lists
the known ones, and a third-party provider comes in through a real entry point."""

from __future__ import annotations

import asyncio
import textwrap
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hinotori.controller.daemon import Controller
from hinotori.controller.wiring import make_providers, make_router
from hinotori.deploy import bluegreen, rolling
from hinotori.deploy.base import PHOENIX, ROLLBACK, StrategyRun
from hinotori.deploy.bluegreen import BlueGreen
from hinotori.deploy.canary import Canary
from hinotori.deploy.rolling import Rolling
from hinotori.deploy.strategies import STRATEGIES
from hinotori.errors import DeployError, HinotoriError, SpecError
from hinotori.model import Host, HostState, ReleaseConfig, RoutingTable
from hinotori.observe.logs import SOURCES, LogStore
from hinotori.observe.logs.forward import forward_loop
from hinotori.observe.logs.forward.sinks import SINKS
from hinotori.observe.logs.records import STDOUT
from hinotori.project import Project
from hinotori.providers import base
from hinotori.providers.base import ProviderContext, SourceFile
from hinotori.providers.process import ProcessProvider
from hinotori.providers.registry import GROUP, PROVIDERS
from hinotori.registry import Registry, UnknownName
from hinotori.router.base import RouterContext
from hinotori.router.registry import ROUTERS
from hinotori.spec import parse_spec
from hinotori.spec.schema import CanarySpec, LogForwardSpec, RollingSpec
from hinotori.verify import checks, evaluator
from hinotori.verify.runner import build_plan
from tests.support import free_port, put

SPEC = """\
[project]
name = "reg"

[router]
listen = "127.0.0.1:{port}"
{router}
[services.web]
provider = "{provider}"
command = ["app"]
"""


def write_project(tmp_path: Path, provider: str = "process", router: str = "") -> Project:
    tmp_path.mkdir(parents=True, exist_ok=True)
    text = SPEC.format(provider=provider, router=router, port=free_port())
    (tmp_path / "hinotori.toml").write_text(text)
    return Project.load(tmp_path)


# -- the registry itself ---------------------------------------------------------------------
def test_a_registry_finds_registered_and_lazily_named_entries() -> None:
    reg: Registry[Any] = Registry("widget", {"path": "pathlib:Path"})
    reg.register("seven", 7)
    assert reg.names() == ["path", "seven"] and "seven" in reg and "nine" not in reg
    assert reg["path"] is Path and reg["seven"] == 7 and reg.get("nine") is None
    with pytest.raises(UnknownName) as e:
        reg["nine"]
    assert "unknown widget 'nine'" in str(e.value) and "known: path, seven" in str(e.value)
    with pytest.raises(HinotoriError, match="registered already"):
        reg.register("seven", 8)


# -- providers -------------------------------------------------------------------------------
TOY_PROVIDER = '''
from pathlib import Path
from hinotori.providers.base import SourceFile

class ToyLogSource:
    def files(self, host, declared):
        return [SourceFile("stdout", Path(host.data["log"]))]

class ToyProvider:
    name = "toy"
    evaluator_python = "toy-python"
    shares_process_table = False
    runs_os_image = False
    log_source = ToyLogSource()

    def __init__(self, ctx):
        self.ctx = ctx

    @classmethod
    def create(cls, ctx):
        return cls(ctx)
'''


@pytest.fixture
def toy_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution (a .dist-info on sys.path) declaring two providers in the
    ``hinotori.providers`` entry-point group: ``toy``, and ``broken``, whose module is missing.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_provider.py").write_text(TOY_PROVIDER)
    info = site / "toy_hinotori-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-hinotori\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{GROUP}]
        toy = toy_provider:ToyProvider
        broken = no_such_module_here:Provider
        """))
    monkeypatch.syspath_prepend(str(site))
    yield site
    PROVIDERS.unregister("toy")  # the registry caches what it loaded


def test_a_provider_from_an_entry_point_is_validated_built_and_used(
        tmp_path: Path, toy_distribution: Path) -> None:
    assert {"toy", "broken", "process", "container"} <= set(PROVIDERS.names())
    project = write_project(tmp_path / "p", provider="toy")  # the spec accepts it
    providers = make_providers(project)
    assert set(providers) == {"toy"}  # only what the spec (and live hosts) use
    toy: Any = providers["toy"]
    assert type(toy).__module__ == "toy_provider"
    assert toy.ctx == ProviderContext(project="reg", hosts_dir=project.hosts_dir,
                                      state_dir=project.state_dir, engine_url=None)
    # Its facts reach the callers that used to compare names: verify's plan and the shipper.
    host = Host(id="web-1", service="web", release=1, provider="toy", state=HostState.SERVING,
                born_at=0.0, address="127.0.0.1:1", pid=4242, data={"log": "/x/out.log"})
    assert build_plan(toy, host, [])["session"] is None
    assert SOURCES["toy"].files(host, []) == [SourceFile("stdout", Path("/x/out.log"))]


def test_a_broken_entry_point_is_a_clear_error(toy_distribution: Path) -> None:
    with pytest.raises(HinotoriError) as e:
        PROVIDERS["broken"]
    text = str(e.value)
    assert not isinstance(e.value, UnknownName)
    assert "'broken'" in text and "no_such_module_here:Provider" in text
    assert "toy-hinotori 1.0" in text and "ModuleNotFoundError" in text
    assert SOURCES.get("broken") is None  # the log shipper warns, never crashes


def test_the_spec_lists_the_known_providers_and_router_kinds(tmp_path: Path) -> None:
    path = tmp_path / "hinotori.toml"
    with pytest.raises(SpecError) as e:
        parse_spec(SPEC.format(provider="vm", router="", port=1), file=str(path))
    assert e.value.key == "services.web.provider" and e.value.line == 8
    assert "unknown provider 'vm': known are 'container', 'process'" in str(e.value)
    with pytest.raises(SpecError) as e:
        parse_spec(SPEC.format(provider="process", router='kind = "envoy"\n', port=1),
                   file=str(path))
    assert e.value.key == "router.kind" and e.value.line == 6
    assert "unknown router kind 'envoy': known are 'builtin', 'haproxy'" in str(e.value)


def test_provider_facts_replace_name_comparisons(tmp_path: Path) -> None:
    process, container = PROVIDERS["process"], PROVIDERS["container"]
    assert process.shares_process_table and not container.shares_process_table
    assert not process.runs_os_image and container.runs_os_image
    assert container.evaluator_python == "python3"
    provider = ProcessProvider(tmp_path)
    host = Host(id="web-1", service="web", release=1, provider="process",
                state=HostState.SERVING, born_at=0.0, address="127.0.0.1:1", pid=4242)
    assert build_plan(provider, host, [])["session"] == 4242  # its session is its pid
    assert isinstance(provider, base.Provider)


def test_volumes_are_built_in_one_place_and_named_for_apps(tmp_path: Path) -> None:
    volumes = base.volume_dirs(tmp_path / "volumes", ["data", "wal-log"])
    assert volumes == {"data": tmp_path / "volumes" / "data",
                       "wal-log": tmp_path / "volumes" / "wal-log"}
    assert all(p.is_dir() for p in volumes.values())
    assert base.volume_env(volumes) == {
        "HINOTORI_VOLUME_DATA": str(tmp_path / "volumes" / "data"),
        "HINOTORI_VOLUME_WAL_LOG": str(tmp_path / "volumes" / "wal-log")}


def test_the_log_sources_stdout_name_is_the_stores() -> None:
    assert base.STDOUT == STDOUT


# -- routers ---------------------------------------------------------------------------------
class ToyRouter:
    kind = "toy"

    def __init__(self, ctx: RouterContext) -> None:
        self.ctx = ctx

    @classmethod
    def create(cls, ctx: RouterContext) -> ToyRouter:
        return cls(ctx)

    async def start(self) -> None: ...
    async def apply(self, table: RoutingTable) -> None: ...
    async def current(self) -> RoutingTable | None: ...
    async def stats(self) -> dict[str, Any]: ...
    async def stop(self) -> None: ...


def test_a_registered_router_kind_is_accepted_and_built(tmp_path: Path) -> None:
    ROUTERS.register("toy", ToyRouter)  # type: ignore[arg-type]
    try:
        project = write_project(tmp_path, router='kind = "toy"\n')
        router = make_router(project)
        assert isinstance(router, ToyRouter) and router.ctx.router_dir == project.router_dir
        assert router.ctx.settings.kind == "toy"
    finally:
        ROUTERS.unregister("toy")
    assert type(make_router(write_project(tmp_path / "b"))).__name__ == "BuiltinRouter"


# -- strategies ------------------------------------------------------------------------------
class ToyStrategy:
    name = "toy"
    controllable = True
    runs: typing.ClassVar[list[StrategyRun]] = []

    async def run(self, run: StrategyRun) -> dict[str, Any]:
        self.runs.append(run)
        run.progress("toy.step", {"release": run.release.name})
        await run.control.changed.wait()  # until an operator asks for something
        return {"release": run.release.name, "promoted": run.control.promote}


def test_a_registered_strategy_runs_through_the_controllers_dispatch(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    project.store.create_release("web", "sha256:" + "0" * 64,
                                 ReleaseConfig(command=("app",), env={}, port_env="PORT"),
                                 actor="test", reason="test")
    STRATEGIES.register("toy", ToyStrategy)  # type: ignore[arg-type]

    async def main() -> dict[str, Any]:
        controller = Controller(project)
        number = await controller.start_deployment("web", kind="deploy", release=1,
                                                   lock_wait=0, actor="test", strategy="toy")
        assert number is not None
        while not ToyStrategy.runs:
            await asyncio.sleep(0.01)
        await controller.control("web", "promote")  # what the API does: reaches the strategy
        while project.store.deployment(number)["state"] == "running":
            await asyncio.sleep(0.01)
        with pytest.raises(DeployError, match="unknown strategy 'nope'"):
            await controller.start_deployment("web", kind="deploy", release=1, lock_wait=0,
                                              actor="test", strategy="nope", replace=True)
        return project.store.deployment(number)

    try:
        deployment = asyncio.run(main())
    finally:
        STRATEGIES.unregister("toy")
    assert deployment["state"] == "succeeded", deployment
    assert deployment["summary"] == {"release": "v1", "promoted": True}
    assert deployment["steps"][0]["step"] == "toy.step"
    assert ToyStrategy.runs[-1].kind == "deploy"


def test_phoenix_rollback_and_defaults_keep_their_behaviour(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple, dict]] = []

    def recorder(name: str) -> Any:
        async def record(*args: Any, **kwargs: Any) -> dict[str, Any]:
            calls.append((name, args, kwargs))
            return {}
        return record

    monkeypatch.setattr(rolling, "deploy", recorder("rolling"))
    monkeypatch.setattr(bluegreen, "rollback", recorder("rollback"))
    monkeypatch.setattr(bluegreen, "deploy", recorder("bluegreen"))
    import hinotori.deploy.canary as canary
    monkeypatch.setattr(canary, "deploy", recorder("canary"))
    fleet, release = object(), type("R", (), {"service": "web", "name": "v2"})()

    def run(strategy: Any, **kw: Any) -> tuple[str, tuple, dict]:
        asyncio.run(strategy().run(StrategyRun(fleet=fleet, release=release,  # type: ignore[arg-type]
                                               progress=print, **kw)))
        return calls[-1]

    name, args, kwargs = run(Rolling, spec=None, kind=PHOENIX, only=frozenset({"web-1"}))
    assert args[3] == RollingSpec(kind="rolling", max_surge=1, max_unavailable=0)
    assert kwargs == {"kind": "phoenix", "only": {"web-1"}}
    name, args, kwargs = run(Rolling, spec=CanarySpec(kind="canary"))
    assert args[3] == RollingSpec(kind="rolling") and kwargs == {}
    assert run(BlueGreen, spec=None, kind=ROLLBACK)[:2] == ("rollback", (fleet, "web", print))
    assert run(BlueGreen, spec=None)[:2] == ("bluegreen", (fleet, release, print))
    name, args, _ = run(Canary, spec=RollingSpec(kind="rolling"))
    assert name == "canary" and args[4] == CanarySpec(kind="canary")
    assert sorted(STRATEGIES.names()) == ["blue-green", "canary", "rolling"]


# -- log sinks -------------------------------------------------------------------------------
class ToySink:
    kind = "toy"

    def __init__(self, f: LogForwardSpec) -> None:
        self.address = f.address
        self.got: list[str] = []

    async def send(self, lines: Sequence[Any]) -> None:
        self.got += [line.line for line in lines]

    async def close(self) -> None: ...


def test_a_registered_log_sink_receives_the_stores_lines(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    put(store, "web-1", ["one", "two"])
    SINKS.register("toy", ToySink)
    try:
        f = LogForwardSpec(kind="syslog", address="127.0.0.1:1").model_copy(
            update={"kind": "toy"})  # the spec lists sink kinds itself
        loop = forward_loop(store, f)
        assert asyncio.run(loop.step()) == 2
    finally:
        SINKS.unregister("toy")
    assert isinstance(loop.sink, ToySink) and loop.sink.got == ["one", "two"]
    with pytest.raises(UnknownName, match="known: fluentd, loki, syslog"):
        forward_loop(store, f)


# -- check resources -------------------------------------------------------------------------
def test_the_check_union_and_the_evaluator_follow_the_resource_registry() -> None:
    members = typing.get_args(typing.get_args(checks.Check)[0])
    assert [typing.get_args(m)[0] for m in members] == list(checks.RESOURCES.values())
    assert set(evaluator.RESOURCES) == set(checks.RESOURCES)
