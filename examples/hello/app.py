"""hello: the example service hinotori deploys in its demo, tests and benchmarks.

Standard library only, so a baked image needs nothing but a Python interpreter. It is an
HTTP/1.1 keep-alive server on $BIND:$PORT (127.0.0.1:8000 by default; BIND=0.0.0.0 in a container
on a machine of a fleet) whose behaviour is set by env vars, so a test or a demo can play a bad
release without writing a new app:

    HELLO_VERSION      version to report (else the VERSION file in the working dir, else "dev")
    HELLO_ERROR_RATE   fraction (0..1) of ``GET /`` answered with 500
    HELLO_LATENCY_MS   delay added to every ``GET /``
    HELLO_HEALTHY      "0" makes ``GET /healthz`` answer 503
    HINOTORI_HOST_ID   the host name reported in ``X-Hello-Host`` (else the machine's hostname)

Routes: ``GET /``, ``GET /healthz``, ``GET /sleep?ms=N`` (for in-flight and draining tests),
``GET /print?n=N&tag=T`` (prints N lines "T 0".."T N-1" to stdout, for log-shipping tests),
``POST /echo`` (Content-Length or chunked bodies), and with a ``data`` volume
(``HINOTORI_VOLUME_DATA``, for stateful services) ``POST /notes`` appends a line that
``GET /notes`` returns.

SIGTERM drains: the listening socket closes at once (new connections are refused), requests in
flight finish (for at most ``DRAIN_LIMIT`` seconds) and the process exits 0. Responses sent
while draining carry ``Connection: close`` so keep-alive clients move elsewhere.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DRAIN_LIMIT = 10.0


def _version() -> str:
    if os.environ.get("HELLO_VERSION"):
        return os.environ["HELLO_VERSION"]
    try:
        return Path("VERSION").read_text().strip() or "dev"
    except OSError:
        return "dev"


VERSION = _version()
HOST = os.environ.get("HINOTORI_HOST_ID") or socket.gethostname()
_VOLUME = os.environ.get("HINOTORI_VOLUME_DATA")
NOTES = Path(_VOLUME) / "notes.txt" if _VOLUME else None
ERROR_RATE = float(os.environ.get("HELLO_ERROR_RATE") or 0)
LATENCY = float(os.environ.get("HELLO_LATENCY_MS") or 0) / 1000
HEALTHY = os.environ.get("HELLO_HEALTHY", "1") != "0"


class Tracker:
    """Counts requests in flight, so a drain knows when the last one has been answered."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.draining = False

    def __enter__(self) -> None:
        with self.cond:
            self.active += 1

    def __exit__(self, *exc: object) -> None:
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def wait_idle(self, limit: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.active == 0, timeout=limit)


TRACKER = Tracker()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hello"
    # Headers and body are written separately; without NODELAY, Nagle plus the client's
    # delayed ACK can add 40 ms to a keep-alive response.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the host's log

    def do_GET(self) -> None:
        with TRACKER:
            url = urlsplit(self.path)
            if url.path == "/":
                if LATENCY:
                    time.sleep(LATENCY)
                if ERROR_RATE and random.random() < ERROR_RATE:
                    self._reply(500, b"injected error\n")
                else:
                    self._reply(200, f"hello from v{VERSION} ({HOST})\n".encode())
            elif url.path == "/healthz":
                self._reply(*((200, b"ok") if HEALTHY else (503, b"unhealthy")))
            elif url.path == "/notes" and NOTES:
                self._reply(200, NOTES.read_bytes() if NOTES.exists() else b"")
            elif url.path == "/print":  # log lines on demand, for log-shipping tests
                query = parse_qs(url.query)
                count, tag = int(query.get("n", ["1"])[0]), query.get("tag", ["line"])[0]
                for i in range(count):
                    print(f"{tag} {i}", flush=True)
                self._reply(200, f"printed {count}\n".encode())
            elif url.path == "/sleep":
                ms = float(parse_qs(url.query).get("ms", ["0"])[0])
                time.sleep(ms / 1000)
                self._reply(200, f"slept {ms:g}ms\n".encode())
            else:
                self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        with TRACKER:
            body = self._read_body()
            if urlsplit(self.path).path == "/echo":
                self._reply(200, body, "application/octet-stream")
            elif urlsplit(self.path).path == "/notes" and NOTES:
                with NOTES.open("ab") as f:  # on the volume: outlives this host and release
                    f.write(body.rstrip(b"\n") + b"\n")
                self._reply(201, b"noted\n")
            else:
                self._reply(404, b"not found\n")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Hello-Version", VERSION)
        self.send_header("X-Hello-Host", HOST)
        if TRACKER.draining:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold up the exit
    request_queue_size = 256  # a load test opens many connections at once


def main() -> int:
    port = int(os.environ.get("PORT") or 8000)
    # BIND: 127.0.0.1 for a process host; a container on a machine of a fleet is reached
    # through its engine's port forwarding, so there it listens on all its interfaces.
    bind = os.environ.get("BIND") or "127.0.0.1"
    server = Server((bind, port), Handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                     daemon=True).start()
    print(f"hello v{VERSION} listening on {bind}:{port}", flush=True)
    while not stop.wait(1.0):
        pass  # a bare wait() would not wake for signal handlers on every platform
    TRACKER.draining = True
    server.shutdown()
    server.server_close()  # refuse new connections from now on
    drained = TRACKER.wait_idle(DRAIN_LIMIT)
    print(f"hello v{VERSION} stopped ({'drained' if drained else 'drain timed out'})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
