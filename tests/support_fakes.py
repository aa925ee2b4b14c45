"""A fleet on the fakes beside the protocols (in-memory provider and router, a real SQLite
store), for the table-driven orchestration and controller tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hinotori.deploy.fleet import LIVE_STATES, Fleet
from hinotori.model import Release, ReleaseConfig
from hinotori.providers.fake import FakeProvider
from hinotori.router.fake import FakeRouter
from hinotori.spec import parse_spec
from hinotori.store import Store

SPEC = """
[services.web]
command = ["app"]
replicas = {replicas}
health = {{ interval = "1ms", timeout = "1s", healthy = 2 }}
boot_timeout = "100ms"
drain = "0s"
keep_previous = "10m"
"""


@dataclass
class World:
    fleet: Fleet
    provider: FakeProvider
    router: FakeRouter
    store: Store
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def release(self) -> Release:
        return self.store.create_release("web", "sha256:" + "0" * 64, ReleaseConfig(("app",)),
                                         actor="test", reason="")

    def progress(self, step: str, detail: dict[str, Any]) -> None:
        self.steps.append((step, detail))

    def serving_releases(self) -> list[int]:
        """The releases of the hosts the live table routes to, one entry per host."""
        hosts = {h.id: h for h in self.store.hosts("web")}
        return sorted(hosts[i].release for i in self.router.serving("web"))

    def live_releases(self) -> list[int]:
        return sorted(h.release for h in self.provider.live())

    def stored_live(self) -> list[str]:
        return sorted(h.id for h in self.store.hosts("web", LIVE_STATES))


def world(tmp_path: Path, replicas: int = 3) -> World:
    provider = FakeProvider(name="process")  # stands in for the spec's provider
    router = FakeRouter()
    store = Store(tmp_path / "state.db")
    fleet = Fleet(spec=parse_spec(SPEC.format(replicas=replicas)), store=store,
                  providers={"process": provider}, router=router,
                  image_root=lambda _: tmp_path / "image", hosts_dir=tmp_path / "hosts",
                  prober=provider.probe)
    router.error_rate = lambda host_id: provider.error_rate.get(
        store.host(host_id).release, 0.0)
    return World(fleet, provider, router, store)
