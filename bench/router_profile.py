"""Instructions per request of one built-in router worker, under callgrind (not a test).

    python bench/router_profile.py [--requests 4000] [--connections 50] [--out FILE]

Wall time and req/s swing with whatever else the machine runs; the number of instructions a
worker executes per proxied request does not, so this is the figure to compare changes of the
hot path by. One worker runs under ``valgrind --tool=callgrind`` with instrumentation off; a client
of this script (50 keep-alive connections, like wrk in bench/router.py) warms it up, collection
is switched on for exactly ``--requests`` requests and the counts dumped. ``--out`` keeps the
callgrind file (``callgrind_annotate FILE`` shows where the instructions go).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client(asyncio.Protocol):
    """Sends ``count`` requests one after another on one keep-alive connection."""

    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self.left = count
        self.done = done
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = re.search(rb"(?i)content-length: *(\d+)", self.buf[:end])
            if m is None:
                raise SystemExit(f"unexpected response: {self.buf[:200]!r}")
            total = end + 4 + int(m.group(1))
            if len(self.buf) < total:
                return
            if not self.buf.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"not a 200: {self.buf[:200]!r}")
            self.buf = self.buf[total:]
            self.left -= 1
            if self.left:
                self.transport.write(REQUEST)  # type: ignore[attr-defined]
            else:
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(None)


async def drive(port: int, requests: int, connections: int) -> None:
    loop = asyncio.get_running_loop()
    per = max(1, requests // connections)
    futures = []
    for _ in range(connections):
        fut = loop.create_future()
        await loop.create_connection(lambda f=fut: Client(per, f), "127.0.0.1", port)
        futures.append(fut)
    await asyncio.gather(*futures)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited ({proc.returncode}) before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def callgrind_control(*args: str, pid: int) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def total_instructions(dump: Path, timeout: float = 60.0) -> int:
    """The instruction total of a callgrind dump (waiting for it to be written whole)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit(f"no totals in {dump}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="requests counted")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=1000, help="requests before counting")
    ap.add_argument("--no-metrics", action="store_true", help="run the worker with --no-metrics")
    ap.add_argument("--out", type=Path, help="keep the callgrind output file here")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install valgrind")
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-profile-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backends = [free_port(), free_port()]
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "backend.py"), str(backends[0]), "a",
             str(backends[1]), "a"], stdout=subprocess.DEVNULL))
        table = {"version": 1, "routes": [{"service": "bench", "backends": [
            {"host_id": f"a{i}", "address": f"127.0.0.1:{p}", "release": 1}
            for i, p in enumerate(backends)]}]}
        (work / "table.json").write_text(json.dumps(table))
        port = free_port()
        out = work / "callgrind.out"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", sys.executable, "-m", "hinotori.router.builtin",
                "--listen", f"127.0.0.1:{port}", "--control", str(work / "w.sock"),
                "--table-file", str(work / "table.json"), "--log", str(work / "w.log")]
        if args.no_metrics:
            argv.append("--no-metrics")
        worker = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=env)
        procs.append(worker)
        wait_port(port, worker, 300)
        asyncio.run(drive(port, args.warmup, args.connections))
        callgrind_control("-z", pid=worker.pid)
        callgrind_control("-i", "on", pid=worker.pid)
        started = time.monotonic()
        asyncio.run(drive(port, args.requests, args.connections))
        callgrind_control("-i", "off", pid=worker.pid)
        callgrind_control("-d", pid=worker.pid)
        served = (args.requests // args.connections) * args.connections
        dump = out.with_name(out.name + ".1")  # the first dump; the bare name is for the exit
        per_request = total_instructions(dump) / served
        print(f"builtin worker{' (no metrics)' * args.no_metrics}: {served} requests in "
              f"{time.monotonic() - started:.1f} s under callgrind, "
              f"{per_request:,.0f} instructions per request")
        record("router", "builtin worker instructions per request"
               + (" (no metrics)" if args.no_metrics else ""), per_request, unit="instr")
        if args.out is not None:
            shutil.copy(dump, args.out)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
