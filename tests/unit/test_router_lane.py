"""The fast lane (router/builtin/lane.py): a repeated plain request proxied with no Exchange.

Whatever happens while a request is in the lane (more bytes, EOF, the client gone, flow control
either way, a response the parser must read, the backend gone or slow, the worker stopping, a
switch), what goes over the wire, what closes and what is counted must be exactly what an
exchange from the start would have done. Each scenario runs twice through one in-process
worker (in-memory transports, a frozen clock, no timing): with the lane, and with every request
served by an exchange, and every step's observations are compared."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from hinotori.model import Backend, Maintenance, RoutingTable, ServiceRoute
from hinotori.router.builtin import downstream, exchange, lane, upstream
from hinotori.router.builtin.downstream import ClientProtocol
from hinotori.router.builtin.table import Counters
from hinotori.router.builtin.upstream import UpstreamProtocol
from hinotori.router.builtin.worker import BACKEND_TIMEOUT, CLIENT_IDLE_TIMEOUT, Worker
from tests.support_transport import Transport

REQ = b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
ROUTE = ServiceRoute(service="web", backends=(Backend("a", "127.0.0.1:9", 1),
                                              Backend("b", "127.0.0.1:10", 1)))


class Proxy:
    """One worker, one client connection, two pooled connections per backend address."""

    def __init__(self, tmp: Path, route: ServiceRoute = ROUTE) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker("127.0.0.1:8080", tmp / "w.sock", tmp / "table.json", self.loop)
        state = random.getstate()
        random.seed(7)  # the schedule's starting point: the same in both runs
        self.worker.apply(RoutingTable(version=1, routes=(route,)), persist=False)
        random.setstate(state)
        self.backends: dict[str, Transport] = {}
        self.conns: dict[str, UpstreamProtocol] = {}
        for address, pool in self.worker.pools.items():
            for i in range(2):
                name = f"{address}/{i}"
                self.backends[name] = Transport()
                self.conns[name] = conn = UpstreamProtocol(pool)
                conn.connection_made(self.backends[name])  # type: ignore[arg-type]
                pool.checkin(conn)
        self.client = Transport()
        self.protocol = ClientProtocol(self.worker)
        self.protocol.connection_made(self.client)  # type: ignore[arg-type]
        self.last = ""  # the backend connection that got bytes last
        self.in_lane: list[bool] = []  # for each request sent()

    def send(self) -> None:
        self.protocol.data_received(REQ)
        self.in_lane.append(self.protocol.up is not None)

    def observe(self) -> object:
        sent = {a: t.take() for a, t in self.backends.items()}
        for address, data in sent.items():
            if data:
                self.last = address
        return (sent, self.client.take(), self.client.closed,
                {a: t.closed for a, t in self.backends.items()},
                {a: (len(p.idle), p.retired) for a, p in self.worker.pools.items()},
                self.worker.stats(), self.protocol.blocked)

    def answer(self, data: bytes) -> None:
        self.conns[self.last].data_received(data)


def lane_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request served by an exchange, as before the lane."""
    def resolve(client: ClientProtocol) -> None:
        client.plain_table = client.worker.table
        client.plain_route = None
    monkeypatch.setattr(lane, "resolve", resolve)


def both_ways(tmp: Path, monkeypatch: pytest.MonkeyPatch,
              scenario: Callable[[Proxy], list[object]]) -> tuple[list[object], list[object]]:
    for module in (downstream, exchange, upstream):
        monkeypatch.setattr(module, "perf_counter", lambda: 100.0)
    runs = []
    for way in ("lane", "exchange"):
        if way == "exchange":
            lane_off(monkeypatch)
        (tmp / way).mkdir()
        proxy = Proxy(tmp / way)
        try:
            runs.append(scenario(proxy))
            # The lane run sent its requests through the lane, the other never did.
            assert proxy.in_lane == [way == "lane"] * len(proxy.in_lane) and proxy.in_lane
        finally:
            for task in asyncio.all_tasks(proxy.loop):
                task.cancel()  # a connect the loop never ran
            proxy.loop.run_until_complete(asyncio.sleep(0))
            proxy.loop.close()
    return runs[0], runs[1]


def step(p: Proxy, action: Callable[[], object]) -> object:
    action()
    return p.observe()


def warm(p: Proxy) -> list[object]:
    """Two requests answered: the client's plain request is remembered and in the lane."""
    out = []
    for _ in range(2):
        out.append(step(p, p.send))
        out.append(step(p, lambda: p.answer(OK)))
    return out


def pipelined(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.protocol.data_received(REQ.replace(b"/x", b"/y"))),
            step(p, lambda: p.answer(OK)), step(p, lambda: p.answer(OK))]


def client_eof(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, p.protocol.eof_received), step(p, lambda: p.answer(OK))]


def client_lost(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.protocol.connection_lost(None))]


def response_in_two_reads(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.answer(OK[:20])), step(p, lambda: p.answer(OK[20:])),
            step(p, p.send), step(p, lambda: p.answer(OK))]


def chunked_response(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.answer(CHUNKED)),
            step(p, p.send), step(p, lambda: p.answer(OK))]


def error_response(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 1\r\n\r\nx"))]


def backend_closed_unanswered(p: Proxy) -> list[object]:
    """A pooled connection the backend had just closed: the request goes again, elsewhere."""
    def lost() -> None:
        p.conns[p.last].connection_lost(None)
    return [*warm(p), step(p, p.send), step(p, lost),
            step(p, lambda: p.answer(OK))]


def backend_broken(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.answer(b"HTTP/1.1 abc\r\n\r\n"))]


def worker_stops(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, p.protocol.shutdown), step(p, lambda: p.answer(OK))]


def client_slow_to_read(p: Proxy) -> list[object]:
    def paused() -> object:
        return p.conns[p.last].read_paused
    clock = p.worker.clock
    return [*warm(p), step(p, p.send), step(p, p.protocol.pause_writing), paused(),
            step(p, lambda: p.worker.sweep(clock + BACKEND_TIMEOUT / 2)),  # not timed out
            step(p, p.protocol.resume_writing), paused(), step(p, lambda: p.answer(OK))]


def backend_slow_to_read(p: Proxy) -> list[object]:
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.conns[p.last].pause_writing()),
            step(p, lambda: p.conns[p.last].resume_writing()), step(p, lambda: p.answer(OK))]


def backend_times_out(p: Proxy) -> list[object]:
    clock = p.worker.clock
    return [*warm(p), step(p, p.send),
            step(p, lambda: p.worker.sweep(clock + BACKEND_TIMEOUT - 1)),  # not yet
            step(p, lambda: p.worker.sweep(clock + BACKEND_TIMEOUT + 1))]


def backend_slow_to_answer(p: Proxy) -> list[object]:
    """Answered just in time; the keep-alive wait that follows counts from the answer."""
    answered = p.worker.clock + BACKEND_TIMEOUT - 1
    return [*warm(p), step(p, p.send), step(p, lambda: p.worker.sweep(answered)),
            step(p, lambda: p.answer(OK)),
            step(p, lambda: p.worker.sweep(answered + CLIENT_IDLE_TIMEOUT - 1)),
            step(p, p.send), step(p, lambda: p.answer(OK))]


def switch_in_flight(p: Proxy) -> list[object]:
    """The table changes while a request is out: its connection is not pooled again (its pool
    retired), and the next request sees the new table: maintenance, then a new backend."""
    def apply(**kw: object) -> None:
        p.worker.apply(RoutingTable(version=2, routes=(ServiceRoute(service="web", **kw),)),
                       persist=False)
    new = Backend("c", "127.0.0.1:11", 1)
    return [*warm(p), step(p, p.send),
            step(p, lambda: apply(backends=(new,))), step(p, lambda: p.answer(OK)),
            step(p, lambda: apply(backends=(new,), maintenance=Maintenance(retry_after=30))),
            step(p, lambda: p.protocol.data_received(REQ))]  # answered by the router


def responses_alike_and_not(p: Proxy) -> list[object]:
    """A connection remembers its last plain response (bytes, head): the same bytes again, the
    same head with another body, another head, Node's keep-alive lines, a big body, one the
    parser must read, all relayed as they came."""
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    node = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            b"Content-Length: 2\r\n\r\nhi")
    lost = OK.replace(b"200 OK", b"404 NO")  # another head, the same size
    out = warm(p)
    for response in (OK, OK[:-2] + b"ho", OK, lost, OK, node, node.replace(b"=5", b"=6"),
                     node, OK.replace(b"text/plain", b"text/htmlx"), big, big[:-1] + b"y",
                     CHUNKED, OK, OK):
        out += [step(p, p.send), step(p, lambda r=response: p.answer(r))]
    return out


SCENARIOS = [pipelined, client_eof, client_lost, response_in_two_reads, chunked_response,
             error_response, backend_closed_unanswered, backend_broken, worker_stops,
             client_slow_to_read, backend_slow_to_read, backend_times_out,
             backend_slow_to_answer, switch_in_flight, responses_alike_and_not]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_whatever_happens_in_flight_the_lane_does_what_an_exchange_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        scenario: Callable[[Proxy], list[object]]) -> None:
    fast, slow = both_ways(tmp_path, monkeypatch, scenario)
    assert fast == slow
    assert any(obs[1] for obs in fast if isinstance(obs, tuple))  # the client got answers


def test_a_repeated_plain_request_takes_no_exchange_and_counts_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []

    class Counted(exchange.Exchange):
        __slots__ = ()

        def __init__(self, client: ClientProtocol) -> None:
            made.append(self)
            super().__init__(client)

    monkeypatch.setattr(lane, "Exchange", Counted)
    p = Proxy(tmp_path)
    try:
        for _ in range(6):
            p.protocol.data_received(REQ)
            sent, *_ = p.observe()  # type: ignore[misc]
            assert [bool(data) for data in sent.values()].count(True) == 1  # one connection got it
            assert p.protocol.current is None and p.protocol.up is not None
            p.answer(OK)
            assert p.client.take() == OK and not p.client.closed and p.protocol.up is None
            assert p.conns[p.last].client is None
        assert made == []
        stats = p.worker.stats()
        assert {h: s["requests"] for h, s in stats.items()} == {"a": 3, "b": 3}
        assert all(s["active"] == 0 for s in stats.values())
        assert sum(len(pool.idle) for pool in p.worker.pools.values()) == 4
        # A response the parser must read hands the request to an exchange; the next request
        # is in the lane again.
        p.protocol.data_received(REQ)
        p.observe()
        p.answer(CHUNKED)
        assert len(made) == 1 and p.protocol.current is None
        p.protocol.data_received(REQ)
        assert p.protocol.up is not None and len(made) == 1
    finally:
        p.loop.close()


def test_only_a_route_with_nothing_to_decide_per_request_is_the_lane_s(tmp_path: Path) -> None:
    routes = {
        "plain": (ROUTE, True),
        "canary": (ServiceRoute(service="web", canary=2, backends=(
            Backend("a", "127.0.0.1:9", 1, 90), Backend("c", "127.0.0.1:11", 2, 10))), False),
        "sticky": (ServiceRoute(service="web", sticky=True, backends=(
            Backend("a", "127.0.0.1:9", 1), Backend("c", "127.0.0.1:11", 2))), False),
        "held": (ServiceRoute(service="web", preview=2, backends=(
            Backend("a", "127.0.0.1:9", 1), Backend("c", "127.0.0.1:11", 2, 0))), False),
        "maintenance": (ServiceRoute(service="web", backends=ROUTE.backends,
                                     maintenance=Maintenance()), False),
    }
    for name, (route, expected) in routes.items():
        (tmp_path / name).mkdir()
        p = Proxy(tmp_path / name, route)
        try:
            p.protocol.data_received(REQ)
            assert (p.protocol.plain_route is not None) == expected, name
            assert (p.protocol.up is not None) == expected, name
        finally:
            p.loop.close()


@pytest.mark.parametrize("seed", range(5))
def test_a_batch_folded_histogram_is_the_one_counted_per_request(seed: int) -> None:
    rng = random.Random(seed)
    one, batched = Counters(), Counters()
    for _ in range(2000):
        status = rng.choice([200, 200, 200, 201, 204, 302, 404, 500, 503])
        ms = rng.choice([0.0, 1.0, 2.0, 1000.0, 2000.0, rng.uniform(0, 3),
                         rng.uniform(0, 1500), rng.expovariate(0.01)])
        one.observe(status, ms)
        if status < 300:
            batched.ok_ms.append(ms)
        else:
            batched.observe(status, ms)
        if rng.random() < 0.01:
            batched.fold()  # the sweep, or a stats read, at any moment
    assert batched.to_dict() == one.to_dict()
    assert batched.latency_sum_ms == one.latency_sum_ms  # not just rounded alike
    assert sum(one.latency) == one.requests == 2000
