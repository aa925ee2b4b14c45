"""The store: releases numbered and never edited, host states evented, append-only log."""

from __future__ import annotations

import sqlite3

import pytest

from hinotori.errors import NotFound, StoreError
from hinotori.model import Host, HostState, ReleaseConfig
from hinotori.store import Store
from hinotori.store.migrations import MIGRATIONS

CONFIG = ReleaseConfig(command=("python3", "app.py"), env={"A": "1"})


def test_releases_are_numbered_per_service_and_evented(tmp_path) -> None:
    store = Store(tmp_path / "s.db")
    a = store.create_release("web", "sha256:aa", CONFIG, actor="t", reason="bake")
    b = store.create_release("web", "sha256:bb", CONFIG, actor="t", reason="bake")
    c = store.create_release("api", "sha256:aa", CONFIG, actor="t", reason="bake")
    assert (a.name, b.name, c.name) == ("v1", "v2", "v1")
    assert store.latest_release("web") == b
    assert store.release("web", 1).config == CONFIG
    assert [e.subject for e in store.events(action="release.")] == ["web/v1", "web/v2", "api/v1"]
    with pytest.raises(NotFound):
        store.release("web", 9)


def test_releases_and_events_cannot_be_edited(tmp_path) -> None:
    store = Store(tmp_path / "s.db")
    store.create_release("web", "sha256:aa", CONFIG, actor="t", reason="bake")
    for sql in ("UPDATE releases SET image = 'x'", "UPDATE events SET actor = 'x'",
                "DELETE FROM events"):
        with pytest.raises(sqlite3.IntegrityError):
            store._db.execute(sql)


def test_host_state_changes_are_events_with_why(tmp_path) -> None:
    store = Store(tmp_path / "s.db")
    host = Host(id="web-1", service="web", release=1, provider="process",
                state=HostState.BOOTING, born_at=1.0, address="127.0.0.1:1")
    store.save_host(host, actor="t")
    host.pid = 42
    store.save_host(host, actor="t")  # no state change: no event
    host.state = HostState.SERVING
    store.save_host(host, actor="t", why="switch")
    events = store.events(subject="web")
    assert [e.action for e in events] == ["host.booting", "host.serving"]
    assert events[-1].detail["why"] == "switch"
    assert store.host("web-1").pid == 42
    assert [h.id for h in store.hosts("web", [HostState.SERVING])] == ["web-1"]


def test_deployments_record_steps_and_outcome(tmp_path) -> None:
    store = Store(tmp_path / "s.db")
    n = store.create_deployment("web", strategy="blue-green", kind="deploy", from_release=None,
                                to_release=1, actor="t")
    store.add_deployment_step(n, {"step": "boot"})
    store.finish_deployment(n, "failed", actor="t", error="boom")
    dep = store.deployment(n)
    assert dep["state"] == "failed" and dep["error"] == "boom"
    assert [s["step"] for s in dep["steps"]] == ["boot"]
    assert [e.action for e in store.events()] == ["deploy.started", "deploy.failed"]


def test_schema_is_migrated_once_and_survives_reopen(tmp_path) -> None:
    Store(tmp_path / "s.db").create_release("web", "sha256:aa", CONFIG, actor="t", reason="r")
    again = Store(tmp_path / "s.db")
    assert again.schema_version == len(MIGRATIONS)
    assert again.latest_release("web").number == 1


def test_store_from_a_newer_hinotori_is_refused(tmp_path) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer hinotori"):
        Store(tmp_path / "s.db")
