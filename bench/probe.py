"""The switch benchmark's client, a process of its own (bench/router.py; not a test).

    python bench/probe.py PORT [GAP_MS]

Sends keep-alive ``GET /`` requests to 127.0.0.1:PORT, each GAP_MS (default 0: none) after
the response to the one before, and whenever the ``X-Backend`` name of a response differs from
the one before prints ``NAME NS`` (NS: when the response was whole, ``time.perf_counter_ns()``,
the system's monotonic clock, the same in every process here): a line per switch, not per
response. A response without the header (a 502, say) prints ``! <its status line>`` and ends.

The gap: back to back, the probe keeps the router and the backend busy without pause, so on
a shared machine they use up their share of the CPU and wait for it, and what is timed is
the probe's own load more than the switch. With a gap the router sleeps between requests, as
it does for an operator's clients; the first request after a switch leaves at most GAP_MS
after it, which the figure includes (a measure no kinder than back to back).

Why a process and not a coroutine of the bench: the bench plays the controller, and a client
in the controller's event loop timestamps a response only when that loop gets to it, after
the rest of the apply (the state written, the answer read) and whatever else that process's
threads hold the GIL for; an operator's clients are elsewhere. Blocking sockets: a response
is read the moment the kernel wakes this process, with no event loop in between.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
NAME = re.compile(rb"(?i)\r\nx-backend: *([a-z]+)")


def main(port: int, gap: float) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = sys.stdout.buffer
    last = b""
    buf = b""
    while True:
        if gap:
            time.sleep(gap)
        sock.sendall(REQUEST)
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        head = buf[:end + 4]
        length = int(LENGTH.search(head).group(1))  # type: ignore[union-attr]
        while len(buf) < end + 4 + length:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        at = time.perf_counter_ns()
        buf = buf[end + 4 + length:]
        found = NAME.search(head)
        if found is None:
            out.write(b"! " + head.split(b"\r\n", 1)[0] + b"\n")
            out.flush()
            return
        name = found.group(1)
        if name != last:
            last = name
            out.write(name + b" %d\n" % at)
            out.flush()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError, ConnectionError):
        main(int(sys.argv[1]), float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0)
