"""debian-web: the example service of an OS image (see hinotori.toml beside it).

Standard library only. It answers ``GET /`` with its version and host, ``GET /healthz`` with
"ok", and drains on SIGTERM: the listening socket closes, requests in flight finish, exit 0.

It binds $BIND (default 0.0.0.0) on $PORT: inside a container "all interfaces" is the
container's own network namespace, and the engine publishes the port on the machine's
127.0.0.1 only. Never run it with BIND=0.0.0.0 directly on a machine.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = (Path("VERSION").read_text().strip() if Path("VERSION").exists() else "dev")
HOST = os.environ.get("HINOTORI_HOST_ID") or socket.gethostname()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, "ok\n")
        elif self.path == "/":
            self._send(200, f"debian-web v{VERSION} on {HOST}\n")
        else:
            self._send(404, "not found\n")

    def _send(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Hello-Host", HOST)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main() -> None:
    port = int(os.environ.get("PORT") or 8000)
    server = ThreadingHTTPServer((os.environ.get("BIND", "0.0.0.0"), port), Handler)
    server.daemon_threads = False  # requests in flight finish before exit
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"debian-web v{VERSION} listening on port {port}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
