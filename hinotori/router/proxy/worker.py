"""One data-plane worker process: listener, proxy, control channel, last-table file.

Run as ``python -m hinotori.router.proxy --listen 127.0.0.1:8080 --control PATH.sock
--table-file PATH.json``. Several workers may share the port (SO_REUSEPORT). The worker is
detached from the controller that starts it and keeps serving if that controller dies.

Control channel: a unix socket, one JSON object per line each way:
    {"op": "ping"}                 -> {"ok": true, "pid": …, "version": N|null, "listen": "…"}
    {"op": "apply", "table": {…}}  -> {"ok": true, "version": N}   (after the swap, once the
                                                                    table file holds it too)
    {"op": "get"}                  -> {"ok": true, "table": {…}|null}
    {"op": "stats"}                -> {"ok": true, "backends": {host_id: counters}}
    {"op": "shutdown"}             -> {"ok": true}, then a graceful exit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from hinotori.model import RoutingTable
from hinotori.router.proxy.relay import Proxy
from hinotori.router.proxy.routes import CompiledTable

SHUTDOWN_GRACE = 10.0


def listen_socket(listen: str, exclusive_check: bool) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if exclusive_check:
        # SO_REUSEPORT would happily share the port with a stranger that also set it; make
        # sure nobody else is there before the first worker takes it. SO_REUSEADDR on the
        # probe only lets it past TIME_WAIT leftovers of our own earlier run (connections the
        # router closed); on Linux it never binds over a live listener.
        probe = socket.socket(family)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as e:
            raise SystemExit(f"cannot listen on {listen}: {e.strerror}; change [router] listen "
                             "in hinotori.toml") from None
        finally:
            probe.close()
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as e:
        raise SystemExit(f"cannot listen on {listen}: {e.strerror}; change [router] listen "
                         "in hinotori.toml") from None
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.table_file = Path(args.table_file)
        self.proxy = Proxy(CompiledTable(self._load_table()), metrics=not args.no_metrics)
        self.stopping = asyncio.Event()
        self.control_writers: set[asyncio.StreamWriter] = set()
        self._save_lock = asyncio.Lock()
        self._saved: RoutingTable | None = None

    def _load_table(self) -> RoutingTable:
        try:
            return RoutingTable.from_dict(json.loads(self.table_file.read_text()))
        except (OSError, ValueError, KeyError):
            return RoutingTable(version=0)

    def _write_table_file(self, data: str) -> None:
        tmp = self.table_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(data)
        tmp.replace(self.table_file)  # atomic: a crash leaves the old file or the new one

    async def _persist(self) -> None:
        """Write the live table to the table file and return once it is there.

        Run after the swap and before the ack: traffic moves at the swap (no file I/O in
        its way), and an acknowledged table survives a crash of this worker, whose restart
        reads the file. The syscalls run in a thread so the loop keeps relaying meanwhile.
        Serialised: concurrent applies write in turn, each writing the table live at its
        turn, so the file never goes back to an older table. No fsync: a crashed worker, not
        a crashed machine, is what this guards against. A failed write answers the apply
        with its error: the table is live but would not survive a restart.
        """
        async with self._save_lock:
            table = self.proxy.table.table
            if table is self._saved:  # an apply that swapped after ours already wrote it
                return
            await asyncio.to_thread(self._write_table_file, json.dumps(table.to_dict()))
            self._saved = table

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.control_writers.add(writer)
        try:
            while line := await reader.readline():
                try:
                    msg = json.loads(line)
                    reply = self.answer(msg)
                    if msg.get("op") == "apply":
                        await self._persist()
                except Exception as e:  # a bad message must not kill the data plane
                    reply = {"ok": False, "error": f"{e.__class__.__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.control_writers.discard(writer)
            writer.close()

    def answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        proxy = self.proxy
        if op == "apply":
            table = RoutingTable.from_dict(msg["table"])
            proxy.swap(CompiledTable(table))
            return {"ok": True, "version": table.version}
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "version": proxy.table.version or None,
                    "listen": self.args.listen, "in_flight": proxy.in_flight}
        if op == "get":
            table = proxy.table.table
            return {"ok": True, "table": table.to_dict() if table.version else None}
        if op == "stats":
            return {"ok": True, "backends": {h: c.to_dict() for h, c in proxy.stats.items()}}
        if op == "shutdown":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def run(self) -> None:
        sock = listen_socket(self.args.listen, self.args.exclusive_check)
        control_path = Path(self.args.control)
        control_path.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.proxy.client_factory, sock=sock, backlog=4096)
        control = await asyncio.start_unix_server(self.control, path=str(control_path))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        print(f"router worker {os.getpid()} listening on {self.args.listen}", flush=True)
        while not self.stopping.is_set():  # close client connections idle too long
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.stopping.wait()
            self.proxy.sweep()
        # Graceful: stop accepting, close idle keep-alive connections, let in-flight finish.
        server.close()
        self.proxy.closing = True
        self.proxy.close_idle()
        deadline = loop.time() + SHUTDOWN_GRACE
        while self.proxy.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        control.close()
        for writer in list(self.control_writers):  # let control handlers end, not be cancelled
            writer.close()
        await asyncio.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            control_path.unlink()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hinotori.router.proxy")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--table-file", required=True)
    ap.add_argument("--no-metrics", action="store_true",
                    help="count nothing (only to measure what the counters cost)")
    ap.add_argument("--exclusive-check", action="store_true",
                    help="refuse to start if anything already listens on the address")
    args = ap.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform): asyncio's loop works
        uvloop = None
    worker = Worker(args)
    try:
        if uvloop is not None:
            uvloop.run(worker.run())
        else:
            asyncio.run(worker.run())
    except SystemExit as e:
        print(e, file=sys.stderr, flush=True)
        raise SystemExit(2) from None
