"""A minimal, fast HTTP/1.1 keep-alive backend for router benchmarks (uvloop + a Protocol).

    python bench/backend.py PORT NAME [PORT NAME …]

Answers every request with a small fixed body and ``X-Backend: NAME``; one process serves all
the given ports so the backends cost as little CPU as possible beside the router under test.
Requests are assumed bodiless (GET), which is what the benchmarks send.
"""

from __future__ import annotations

import asyncio
import sys

try:
    import uvloop
except ImportError:  # the stdlib loop works, only slower
    uvloop = None


class Backend(asyncio.Protocol):
    def __init__(self, name: bytes) -> None:
        body = b"hello from " + name + b"\n"
        self.response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: " + name +
                         b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(self.response * count)  # type: ignore[attr-defined]


async def serve(pairs: list[tuple[int, str]]) -> None:
    loop = asyncio.get_running_loop()
    for port, name in pairs:
        await loop.create_server(lambda n=name: Backend(n.encode()), "127.0.0.1", port,
                                 backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    args = sys.argv[1:]
    pairs = [(int(args[i]), args[i + 1]) for i in range(0, len(args), 2)]
    (uvloop.run if uvloop else asyncio.run)(serve(pairs))
