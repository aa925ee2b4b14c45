"""Garbage the cyclic collector never has to find (hinotori/gcheap.py, issue 17).

A switch at 1,000 backends retires a table and closes the idle connections of every address
that left it. Those objects must be freed by reference counting at once, not wait for a
generation-2 collection that stops the worker for 5-22 ms: so with the collector disabled,
after a switch through a real worker on real sockets, the retired table and the closed
connections are gone."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori import gcheap
from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.base import prepare
from hinotori.router.builtin.downstream import ClientProtocol
from hinotori.router.builtin.table import CompiledTable
from hinotori.router.builtin.upstream import Pool, UpstreamProtocol
from hinotori.router.builtin.worker import Worker
from hinotori.router.fake import FakeRouter
from hinotori.router.haproxy import plans

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture
def no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()  # what the tests before left
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Backend200(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(OK * data.count(b"\r\n\r\n"))  # type: ignore[attr-defined]


def table(version: int, port: int) -> RoutingTable:
    return RoutingTable(version=version, routes=(ServiceRoute(
        service="web", backends=(Backend(f"h{port}", f"127.0.0.1:{port}", 1),)),))


def alive(kind: type, pool: Pool | None = None) -> int:
    """Instances of ``kind`` that exist (the collector disabled: garbage in a cycle counts)."""
    return sum(1 for o in gc.get_objects() if type(o) is kind
               and (pool is None or getattr(o, "pool", None) is pool))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_switch_frees_the_retired_table_and_its_connections_at_once(
        tmp_path: Path, no_gc: None, loop: str) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        a = await loop.create_server(Backend200, "127.0.0.1", 0)
        b = await loop.create_server(Backend200, "127.0.0.1", 0)
        port_a, port_b = (s.sockets[0].getsockname()[1] for s in (a, b))
        worker = Worker("127.0.0.1:1", tmp_path / "w.sock", tmp_path / "t.json", loop)
        worker.apply(table(1, port_a), persist=False)
        front = await loop.create_server(lambda: ClientProtocol(worker), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", front.sockets[0].getsockname()[1])

        async def ask() -> None:
            writer.write(REQUEST)
            assert await reader.readexactly(len(OK)) == OK

        for _ in range(3):  # through the exchange, then the fast lane
            await ask()
        pool_a = worker.pools[f"127.0.0.1:{port_a}"]
        assert alive(UpstreamProtocol, pool_a) == 1 and alive(CompiledTable) == 1
        worker.apply(table(2, port_b), persist=False)  # the switch: pool A retired
        await ask()  # the client leaves the old table for the new one
        for _ in range(200):  # the loop runs connection_lost of A's closed connection
            if not pool_a.conns:
                break
            await asyncio.sleep(0.01)
        assert not pool_a.conns
        # Freed by reference counting: the collector never ran.
        assert alive(UpstreamProtocol, pool_a) == 0
        assert alive(CompiledTable) == 1  # the live one only
        writer.close()
        for server in (front, a, b):
            server.close()
        for pool in worker.pools.values():
            pool.retire()

    factory = None if loop == "asyncio" else pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:  # the worker runs on uvloop
        runner.run(run())


class Node:
    """Weakly referable; made into a cycle of one."""

    ref: object = None


def test_settle_freezes_what_is_left_and_collects_frozen_garbage() -> None:
    try:
        gcheap.settle(full=True)
        assert gc.get_freeze_count() > 0
        node = Node()
        node.ref = node
        gcheap.settle()  # the cycle is frozen while alive (not a full settle: just after one)
        gone = weakref.ref(node)
        del node  # garbage now, in a frozen cycle: a collection does not look at it
        gc.collect()
        gcheap.settle()
        assert gone() is not None
        gcheap.settle(full=True)  # unfreezes first: found and freed
        assert gone() is None
        node = Node()
        node.ref = node
        gcheap.settle()
        gone = weakref.ref(node)
        del node
        gcheap.settle()
        assert gone() is not None
        gcheap._full_at = time.monotonic() - gcheap.FULL_EVERY  # the last full one that long ago
        gcheap.settle()
        assert gone() is None
        # Frozen objects another thread lets go (xdist's) leave the count meanwhile: it only falls.
        before = gc.get_freeze_count()
        frozen = gcheap.describe()["frozen"]
        assert before >= frozen >= gc.get_freeze_count()  # type: ignore[operator]
    finally:
        gc.unfreeze()


def test_a_prepare_settles_the_calling_process() -> None:
    try:
        gc.unfreeze()
        assert asyncio.run(prepare(FakeRouter(), table(1, 9)))
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_haproxy_keeps_the_applied_table_itself_and_writes_the_same_json() -> None:
    t = table(3, 9)
    assert plans.table_of({"table": t}) is t
    assert plans.table_of({"table": t.to_dict()}) == t
    assert json.loads(plans.json_of(t) or "") == t.to_dict()
    assert plans.json_of(t.to_dict()) == json.dumps(t.to_dict())
    assert plans.json_of(None) is None
