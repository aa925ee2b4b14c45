"""Fuzz the built-in router's HTTP/1 parsing with hypothesis, over real sockets to a real worker.

Generated request heads (valid ones, then mutated: random bytes, CR/LF injections, huge values,
repeated and conflicting framing headers, bad chunked encodings, pipelined requests, requests
hidden in bodies), sent in pieces, half-closed. For every example:

* the router answers and closes (it never hangs, never drops a connection unanswered);
* every answer is a backend's (numbered ``X-Seq``) or a router refusal (4xx), refusals last;
* what reached the backend parses under h11, a strict parser sharing nothing with httptools;
* smuggling: the requests the backend received are exactly the ones whose answers the client
  got, in order: one client request never becomes two upstream requests;
* and afterwards the worker still serves, with its memory bounded.

The default run is bounded (``FUZZ_EXAMPLES``, 300; ``HINOTORI_FUZZ_EXAMPLES`` changes it);
``pytest -m soak`` runs ``SOAK_EXAMPLES`` more.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin import BuiltinRouter
from tests.support import free_port
from tests.support_router import StrictBackend, converse, get, memory_kb, parse_answers

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = int(os.environ.get("HINOTORI_FUZZ_EXAMPLES", "300"))
SOAK_EXAMPLES = 5000
REFUSALS = {400, 405, 408, 413, 414, 417, 431, 501, 505}

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT"]
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 0\r\n\r\n"
TRICKY_VALUES = [
    b"chunked", b" chunked", b"chunked ", b"Chunked", b"chunked, gzip", b"gzip, chunked",
    b"xchunked", b"chunked\x0b", b"identity", b"0", b"5", b"-1", b"5, 6", b"0x10", b"10 0",
    b"", b" ", b"close", b"keep-alive", b"Upgrade", b"upgrade", b"100-continue", b"svc.test",
    b"other.test", b"a\x00b", b"\xff\xfe", b"a\tb", b"=?utf-8?q?x?=", b"a" * 70_000,
]
HEADER_NAMES = [
    b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"Upgrade",
    b"Keep-Alive", b"TE", b"Trailer", b"Proxy-Connection", b"X-Forwarded-For", b"Cookie",
    b"X-Hinotori-Release", b"content-length", b"transfer-encoding", b"Content-Length ",
    b" Host", b"X-\x01", b"", *[b"X-A", b"Accept", b"User-Agent"] * 4,
]


def _chunked(body: bytes, pieces: list[int], ext: bytes, trailer: bytes, bad: int) -> bytes:
    out, at = [], 0
    for n in pieces:
        part = body[at:at + n]
        at += n
        if part:
            out.append(b"%x%b\r\n%b\r\n" % (len(part), ext, part))
    if at < len(body):
        out.append(b"%x\r\n%b\r\n" % (len(body) - at, body[at:]))
    last = [b"0\r\n", trailer, b"\r\n"]
    text = b"".join(out + last)
    bad_forms = [text, text.replace(b"\r\n", b"\n", 1), b"zz\r\n" + text,
                 b"%x\r\n%b0\r\n\r\n" % (len(body) + 3, body),        # size says more
                 b"%x\r\n%bxx\r\n0\r\n\r\n" % (max(len(body) - 2, 0), body),  # says less
                 b"-1\r\n\r\n", b"ffffffffffffffffff\r\n", b"0;" + b"e" * 70_000 + b"\r\n\r\n"]
    return bad_forms[bad if bad < len(bad_forms) else 0]


VALUE_TEXT = st.binary(max_size=40).map(lambda b: bytes(0x21 + c % 94 for c in b))


@st.composite
def one_request(draw: st.DrawFn, i: int) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from([f"/r{i}"] * 4 + [
        f"/r{i}?q=1", f"http://svc.test/r{i}", "*", f"/r{i}#frag", f"/r{i}%00",
        f"/r{i}/" + "p" * 70_000 if draw(st.integers(0, 3)) == 0 else f"/r{i}"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b""]))
    line = method + b" " + target.encode() + (b" " + version if version else b"")
    headers = [b"Host: svc.test"] if i or draw(st.integers(0, 5)) else []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(HEADER_NAMES))
        value = draw(st.one_of(st.sampled_from(TRICKY_VALUES), VALUE_TEXT,
                               st.binary(max_size=40)) if draw(st.integers(0, 2)) else VALUE_TEXT)
        headers.append(name + b": " + value)
    body = draw(st.one_of(st.just(b""), st.binary(max_size=200), st.just(SMUGGLED)))
    framing = draw(st.sampled_from(["length"] * 3 + ["chunked"] * 3 + ["none", "both"]))
    if framing in ("length", "both"):
        headers.append(b"Content-Length: %d" % len(body))
    payload = body if framing in ("length", "none") else b""
    if framing in ("chunked", "both"):
        headers.append(b"Transfer-Encoding: chunked")
        pieces = draw(st.lists(st.integers(1, 64), max_size=4))
        ext = draw(st.sampled_from([b"", b"", b";a=b", b";" + b"x" * 200]))
        trailer = draw(st.sampled_from([b"", b"", b"X-T: 1\r\n",
                                        b"X-T: " + b"t" * 70_000 + b"\r\n"]))
        payload = _chunked(body, pieces, ext, trailer, draw(st.integers(0, 30)))
    if draw(st.booleans()):
        headers = draw(st.permutations(headers))
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + payload


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        bits = draw(st.one_of(
            st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\x00", b" ", b"\t", b":",
                             b"\r\n Folded: x", b"\r\nContent-Length: 3", b"\r\nHost: x.test",
                             b"\r\nTransfer-Encoding: chunked", SMUGGLED]),
            st.binary(min_size=1, max_size=8)))
        if op == "insert":
            data = data[:at] + bits + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + len(bits):]
        elif op == "replace":
            data = data[:at] + bits + data[at + len(bits):]
        elif op == "duplicate":
            data = data[:at] + data[at:at + 40] + data[at:]
        elif len(data) > 1:
            data = data[:max(1, at)]
    return data


@st.composite
def conversation(draw: st.DrawFn) -> list[bytes]:
    """One client's bytes, cut into the pieces it sends them in."""
    n = draw(st.integers(1, 3))
    data = b"".join(draw(one_request(i)) for i in range(n))
    if draw(st.booleans()):  # half the examples mutated, half left as generated
        data = draw(mutated(data))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backend() -> Iterator[StrictBackend]:
    b = StrictBackend()
    yield b
    b.close()


@dataclass
class Worker:
    port: int
    pid: int
    base_kb: int  # its memory before the fuzz


@pytest.fixture(scope="module")
def worker(backend: StrictBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A built-in router worker routing everything to ``backend``."""
    state = tmp_path_factory.mktemp("fuzz-router")
    r = BuiltinRouter(state, f"127.0.0.1:{free_port()}")
    asyncio.run(r.start())
    asyncio.run(r.apply(RoutingTable(1, (ServiceRoute("svc", (
        Backend("h1", backend.address, 1, 100),)),))))
    port, pid = int(r.listen.rpartition(":")[2]), int(Path(state / "router-0.pid").read_text())
    assert get(port, "/warm").status == 200
    yield Worker(port, pid, memory_kb(pid))
    asyncio.run(r.stop())


# -- the property ------------------------------------------------------------------------------

def check_conversation(port: int, backend: StrictBackend, pieces: list[bytes]) -> None:
    before = len(backend.seen)
    errors_before = len(backend.errors)
    data, closed = converse(port, pieces[0], rest=pieces[1:])
    assert closed, f"the router neither answered nor closed; got {data[:300]!r}"
    answers, leftover = parse_answers(data)
    assert leftover == b"", f"unparseable bytes from the router: {leftover[:300]!r}"
    for a in answers[:-1]:
        assert a.seq is not None, f"a router answer {a.status} before the last: {answers}"
    if answers and answers[-1].seq is None:
        assert answers[-1].status in REFUSALS, answers[-1]
        assert answers[-1].headers.get(b"connection") == b"close", answers[-1]
    for a in answers:
        if a.seq is not None:
            assert a.status == 200, a
    _wait_quiet(backend)
    assert backend.errors[errors_before:] == [], backend.errors[errors_before:]
    upstream = backend.seen[before:]
    assert [u.seq for u in upstream] == [a.seq for a in answers if a.seq is not None], \
        "the backend received requests whose answers never reached the client (smuggling)"
    event(f"forwarded {min(len(upstream), 3)}, then " +
          (str(answers[-1].status) if answers and answers[-1].seq is None else "no refusal"))
    for u in upstream:
        assert len(u.values(b"host")) == 1, u
        assert not (u.values(b"content-length") and u.values(b"transfer-encoding")), u
        assert u.values(b"x-forwarded-for"), u


def _wait_quiet(backend: StrictBackend) -> None:
    """Give a request still in flight to the backend (it should be none) time to land."""
    count = -1
    while count != len(backend.seen):
        count = len(backend.seen)
        time.sleep(0.002)


FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


@settings(max_examples=FUZZ_EXAMPLES, **FUZZ_SETTINGS)  # type: ignore[arg-type]
@given(pieces=conversation())
def test_fuzzed_requests_are_answered_well_formed_and_never_smuggled(
        worker: Worker, backend: StrictBackend, pieces: list[bytes]) -> None:
    check_conversation(worker.port, backend, pieces)


@pytest.mark.soak
@settings(max_examples=SOAK_EXAMPLES, **FUZZ_SETTINGS)  # type: ignore[arg-type]
@given(pieces=conversation())
def test_fuzz_soak(worker: Worker, backend: StrictBackend, pieces: list[bytes]) -> None:
    check_conversation(worker.port, backend, pieces)


def test_after_the_fuzz_the_worker_serves_with_bounded_memory(worker: Worker) -> None:
    assert get(worker.port, "/after-fuzz").status == 200
    grown = memory_kb(worker.pid) - worker.base_kb
    assert grown < 32 * 1024, f"the worker grew by {grown // 1024} MB over the fuzz"
