"""What a promotion reads from the source environment's store, read-only: the current release,
its serving hosts, since when its image has served without a break, and the deployments that
speak against it; and release origins recorded with the release."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hinotori.errors import StoreError
from hinotori.model import Host, HostState, ReleaseConfig
from hinotori.store import Store
from hinotori.store.origins import SourceState

CONFIG = ReleaseConfig(command=("app",), env={}, port_env="PORT")
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def host(host_id: str, release: int, state: HostState) -> Host:
    return Host(id=host_id, service="web", release=release, provider="process", state=state,
                born_at=0.0)


def test_the_source_is_read_without_writing(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    v1 = store.create_release("web", A, CONFIG, actor="t", reason="bake")
    v2 = store.create_release("web", B, CONFIG, actor="t", reason="bake")
    v3 = store.create_release("web", A, ReleaseConfig(command=("app", "-v"), env={},
                                                      port_env="PORT"), actor="t", reason="cfg")
    store.set_service_releases("web", 1, None, actor="t", why="deploy")
    store.set_service_releases("web", 2, 1, actor="t", why="deploy")
    store.set_service_releases("web", 3, 2, actor="t", why="deploy")  # A again, from here
    d = store.create_deployment("web", strategy="blue-green", kind="deploy", from_release=3,
                                to_release=v3.number, actor="t")
    store.finish_deployment(d, "failed", actor="t", error="unhealthy")
    back = store.create_deployment("web", strategy="blue-green", kind="rollback",
                                   from_release=v2.number, to_release=v1.number, actor="t")
    store.finish_deployment(back, "succeeded", actor="t")
    store.save_host(host("web-1", 3, HostState.SERVING), actor="t")
    store.save_host(host("web-2", 2, HostState.WARM), actor="t")
    store.save_host(host("web-3", 1, HostState.DESTROYED), actor="t")
    since_a = store.events(subject="web", action="service.releases")[-1].ts
    store.close()
    before = (tmp_path / "state.db").read_bytes()

    with SourceState(tmp_path / "state.db") as src:
        current = src.current("web")
        assert current is not None and current.number == 3 and current.image == A
        assert src.serving_hosts("web", A) == ["web-1"]
        assert src.serving_hosts("web", B) == []
        assert src.served_since("web", A) == pytest.approx(since_a)  # the latest streak
        assert src.served_since("web", B) is None  # not current now
        assert [t.what for t in src.troubles("web", A)] == ["failed"]
        assert [t.what for t in src.troubles("web", B)] == ["rolled back"]
        with pytest.raises(sqlite3.OperationalError):
            src._db.execute("DELETE FROM releases")
        assert src.current("nothing") is None
    assert (tmp_path / "state.db").read_bytes() == before


def test_a_source_that_never_ran_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="never run"):
        SourceState(tmp_path / "state.db")


def test_a_release_records_its_origin_with_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    origin = {"environment": "staging", "release": 4, "image": A}
    r = store.create_release("web", A, CONFIG, actor="t", reason="promoted", origin=origin)
    baked = store.create_release("web", B, CONFIG, actor="t", reason="bake")
    got = store.origin("web", r.number)
    assert got is not None and got["environment"] == "staging" and got["release_name"] == "v4"
    assert store.origin("web", baked.number) is None
    assert set(store.origins()) == {("web", r.number)}
    created = store.events(action="release.created")
    assert created[0].detail["origin"] == origin and "origin" not in created[1].detail
