"""Helpers for the routers' hostile-client tests and their fuzz: a strict backend and raw clients.

``StrictBackend`` parses what a router forwards with h11, a parser that shares nothing with the
built-in router's httptools, so "well-formed" is judged independently. It numbers the requests
it gets (``X-Seq``, assigned when a request is complete) and answers each with an empty body, so
a client can tell exactly which upstream requests its answers came from: one client request
that became two upstream requests (smuggling) shows as a number no client ever receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

from tests.support import free_port


@dataclass
class Upstream:
    """One request as a backend received it."""

    seq: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class StrictBackend:
    port: int = field(default_factory=free_port)
    seen: list[Upstream] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # bytes from a router that h11 refused

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self.loop.create_server(
            lambda: _StrictConn(self), "127.0.0.1", self.port), self.loop).result(5)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _StrictConn(asyncio.Protocol):
    def __init__(self, backend: StrictBackend) -> None:
        self.backend = backend
        self.h = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        self.request: Upstream | None = None
        self.body: list[bytes] = []
        self.tail = b""  # the last bytes received, to show with an error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-400:]
        self.h.receive_data(data)
        self._events(at_eof=False)

    def eof_received(self) -> bool:
        self.h.receive_data(b"")
        self._events(at_eof=True)
        return False

    def _events(self, at_eof: bool) -> None:
        while True:
            try:
                event = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                if not at_eof:  # at EOF: a request cut short by a client that left
                    self.backend.errors.append(f"{exc}: ...{self.tail!r}")
                self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return
            if isinstance(event, h11.Request):
                self.request = Upstream(0, event.method, event.target, list(event.headers))
                self.body = []
            elif isinstance(event, h11.Data):
                self.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._answer()

    def _answer(self) -> None:
        req = self.request
        assert req is not None
        req.body = b"".join(self.body)
        req.seq = len(self.backend.seen) + 1
        self.backend.seen.append(req)
        out = self.h.send(h11.Response(status_code=200, headers=[
            ("X-Seq", str(req.seq)), ("X-Backend", "strict"), ("Content-Length", "0")]))
        out += self.h.send(h11.EndOfMessage())  # type: ignore[operator]
        self.transport.write(out)  # type: ignore[arg-type]
        self.h.start_next_cycle()


# -- raw clients -------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def seq(self) -> int | None:
        v = self.headers.get(b"x-seq")
        return int(v) if v is not None else None


def parse_answers(data: bytes) -> tuple[list[Answer], bytes]:
    """Responses in ``data`` (interim 1xx skipped); what could not be parsed is returned too."""
    answers: list[Answer] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0 or not data.startswith(b"HTTP/1."):
            break
        lines = data[:end].split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in lines[1:])}
        length = int(headers.get(b"content-length", b"0"))
        body, data = data[end + 4:end + 4 + length], data[end + 4 + length:]
        if status >= 200:
            answers.append(Answer(status, headers, body))
    return answers, data


def converse(port: int, data: bytes, *, rest: Sequence[bytes] = (),
             timeout: float = 15.0) -> tuple[bytes, bool]:
    """Send ``data`` (then each of ``rest`` a moment apart, so that they arrive as separate
    reads), half-close, read until the router closes: (bytes received, closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # the router may refuse and close mid-send
            s.sendall(data)
            for piece in rest:
                time.sleep(0.001)
                s.sendall(piece)
            s.shutdown(socket.SHUT_WR)
        return read_to_end(s)


def read_to_end(s: socket.socket) -> tuple[bytes, bool]:
    """Everything until EOF or reset: (bytes, True); (bytes, False) if the timeout struck."""
    out = bytearray()
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        return bytes(out), False
    except ConnectionError:
        pass
    return bytes(out), True


def get(port: int, path: str = "/", host: str = "svc.test") -> Answer:
    """One ordinary request on a fresh connection."""
    data, _ = converse(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answers, _ = parse_answers(data)
    assert answers, data
    return answers[0]


def memory_kb(pid: int, field_name: str = "VmRSS") -> int:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(field_name)
