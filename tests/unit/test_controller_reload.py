"""What a reloaded spec changes in the running controller, without one: [logs] and [metrics]
keys applied or flagged (observing.py), and a service pinned by its running deployment
(Fleet.pin)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hinotori.controller import observing
from hinotori.controller.observing import Observing, changed_keys
from hinotori.deploy.fleet import Fleet
from hinotori.spec.load import parse_spec
from hinotori.spec.schema import Spec
from hinotori.store import Store

BASE = """
[project]
name = "t"

[services.web]
command = ["true"]
replicas = 2
"""


def spec(extra: str = "", replicas: int = 2) -> Spec:
    return parse_spec(BASE.replace("replicas = 2", f"replicas = {replicas}") + extra)


def fake_observing(store: Store, old: Spec) -> Any:
    """An Observing without its pipeline and recorder: just their specs and the event sink."""
    fake = SimpleNamespace(logs=SimpleNamespace(spec=old.logs),
                           metrics=SimpleNamespace(spec=old.metrics))
    fake._event = lambda a, s, d: store.record("controller", a, s, d)
    return fake


def test_changed_keys_split_what_applies_now_from_what_needs_a_restart() -> None:
    old, new = spec().logs, spec('[logs]\nretention = "1d"\nship_interval = "1s"\n').logs
    assert changed_keys(old, new, {"retention"}) == (["retention"], ["ship_interval"])
    assert changed_keys(old, old, {"retention"}) == ([], [])


def test_live_keys_are_applied_and_others_flagged(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "state.db")
    old = spec()
    fresh = spec('[logs]\nretention = "1d"\nmax_size = "2MiB"\n'
                 '[metrics]\ninterval = "5s"\nretention_10s = "2h"\n')
    # As if max_size and retention_10s could only change with a restart.
    monkeypatch.setattr(observing, "LIVE_KEYS", {"logs": {"retention"},
                                                 "metrics": {"interval"}})
    fake, restarts = fake_observing(store, old), []
    Observing.apply(fake, old, fresh, restart=lambda: restarts.append(1))
    assert fake.logs.spec == fresh.logs and fake.metrics.spec == fresh.metrics
    assert restarts == []  # the forwarders did not change
    applied = [e.detail for e in store.events(action="spec.applied")]
    assert applied == [{"table": "logs", "keys": ["retention"]},
                       {"table": "metrics", "keys": ["interval"]}]
    flagged = [e.detail for e in store.events(action="spec.restart-needed")]
    assert [(d["table"], d["keys"]) for d in flagged] == [("logs", ["max_size"]),
                                                          ("metrics", ["retention_10s"])]
    assert all(d["note"].startswith(f"[{d['table']}] restart the controller") for d in flagged)


def test_new_forwarders_restart_the_log_pipeline(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    old = spec()
    fresh = spec('[[logs.forward]]\nkind = "syslog"\naddress = "127.0.0.1:5140"\n')
    fake, restarts = fake_observing(store, old), []
    Observing.apply(fake, old, fresh, restart=lambda: restarts.append(1))
    assert restarts == [1] and fake.logs.spec.forward == fresh.logs.forward
    assert [e.detail["keys"] for e in store.events(action="spec.applied")] == [["forward"]]


def test_a_pinned_service_keeps_its_definition_until_unpinned(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    first = spec(replicas=2)
    fleet = Fleet(spec=first, store=store, providers={}, router=None,  # type: ignore[arg-type]
                  image_root=lambda d: tmp_path, hosts_dir=tmp_path)
    fleet.pin("web", first.services["web"])
    fleet.spec = spec('[metrics]\ninterval = "5s"\n', replicas=3)
    assert fleet.service("web").replicas == 2  # the running deployment's definition
    assert fleet.spec.metrics.interval == 5.0  # everything else is the new spec
    fleet.pin("web", None)
    assert fleet.service("web").replicas == 3
    assert fleet.spec is not first
