"""The built-in worker drops the counters of a host no route has named for COUNTERS_KEPT
seconds (nothing in flight to it), and never those of a host in the live table or in a
prepared route."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin.retention import CHECK_EVERY, COUNTERS_KEPT
from hinotori.router.builtin.worker import Worker


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    loop = asyncio.new_event_loop()
    yield Worker("127.0.0.1:1", tmp_path / "w.sock", tmp_path / "table.json", loop)
    loop.close()


def table(version: int, *hosts: str) -> RoutingTable:
    return RoutingTable(version, (ServiceRoute("web", tuple(
        Backend(h, f"127.0.0.1:{9000 + i}", 1, 100) for i, h in enumerate(hosts))),))


def test_counters_of_hosts_no_route_names_are_dropped_after_a_while(worker: Worker) -> None:
    worker.apply(table(1, "a", "b", "c"), persist=False)
    for host in ("a", "b", "c"):
        worker.counters[host].observe(200, 3.0)
    worker.apply(table(2, "b"), persist=False)  # a and c leave the table
    worker.counters["c"].active = 1  # c still has a request in flight
    prepared = ServiceRoute("web", (Backend("a", "127.0.0.1:9000", 1, 100),))
    t0 = 1000.0
    worker.sweep(t0)
    assert set(worker.stats()) == {"a", "b", "c"}  # the sampler reads them meanwhile
    worker.sweep(t0 + COUNTERS_KEPT / 2)
    worker.prepared.define({"r.1": prepared.to_dict()}, worker._pool_for, worker._counters_for)
    worker.sweep(t0 + COUNTERS_KEPT + 1)
    assert set(worker.stats()) == {"a", "b", "c"}  # a: prepared; c: in flight
    worker.prepared.entries.clear()
    worker.counters["c"].active = 0
    worker.sweep(t0 + COUNTERS_KEPT + 2)  # looked at a minute ago: not yet
    assert set(worker.stats()) == {"a", "b", "c"}
    worker.sweep(t0 + COUNTERS_KEPT + 1 + CHECK_EVERY)
    assert set(worker.stats()) == {"a", "b"}  # c: out long enough; a: just left again
    worker.sweep(t0 + 2 * COUNTERS_KEPT + 2 * CHECK_EVERY)
    assert set(worker.stats()) == {"b"}
    assert worker.stats()["b"]["requests"] == 1
    worker.apply(table(3, "a", "b"), persist=False)  # a comes back: counts from zero
    worker.counters["a"].observe(200, 1.0)
    worker.sweep(t0 + 3 * COUNTERS_KEPT + 3 * CHECK_EVERY)
    assert worker.stats()["a"]["requests"] == 1 and worker.stats()["b"]["requests"] == 1
