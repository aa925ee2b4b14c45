"""The worker's control channel: newline-delimited JSON over a Unix socket.

One request object per line, one response object per line, in order::

    {"op":"ping"}                -> {"ok":true,"pid":..,"version":N|null,"listen":"..",
                                    "gc":{"frozen":N,"collections":[gen0,gen1,gen2]},..}
    {"op":"apply","table":{..}}  -> {"ok":true,"version":N}     (after the swap is done)
    {"op":"prepare","define":{id:route,..}}   -> {"ok":true}: compiled and kept (prepared.py)
    {"op":"switch","version":N,"routes":[id,..],"lost":[..],"define":{id:route,..}}
                                 -> {"ok":true,"version":N}: the table of those routes (any
                                    in "define" compiled first); a route not held here:
                                    {"ok":false,"missing":[id,..],...}, nothing changed
    {"op":"get"}                 -> {"ok":true,"table":{..}|null}
    {"op":"stats"}               -> {"ok":true,"backends":{host_id:{"active","requests","errors"}}}
    {"op":"shutdown"}            -> {"ok":true}, then a graceful stop
    {"op":"tls"}                 -> {"ok":true,"certs":[..]}: certificate files read again
                                    (tls.py); a bad one: {"ok":false,...}, the old ones serve
    anything wrong               -> {"ok":false,"error":"..."}

The server runs on the worker's event loop. Every op is a few dictionary operations (apply: one
compile and one reference swap; switch: a few lookups per backend), so it never holds the loop
long enough to matter to requests.
The socket is mode 0600: whoever can write to it can redirect traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hinotori import gcheap
from hinotori.errors import CertificateError
from hinotori.model import RoutingTable
from hinotori.router.builtin.prepared import Missing
from hinotori.router.builtin.table import assemble, link

if TYPE_CHECKING:
    from hinotori.router.builtin.worker import Worker

log = logging.getLogger("hinotori.router")

LINE_LIMIT = 64 * 1024 * 1024  # a routing table is one line


class ControlSocketBusy(Exception):
    """Another live worker already answers on this control socket."""


def handle(worker: Worker, request: Any) -> tuple[dict[str, Any], bool]:
    """Answer one control request. Returns (response, stop_after_replying)."""
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return {"ok": False, "error": "request must be a JSON object with a string 'op'"}, False
    op = request["op"]
    if op == "ping":
        return {"ok": True, **worker.describe()}, False
    if op == "apply":
        raw = request.get("table")
        if not isinstance(raw, dict):
            return {"ok": False, "error": "apply needs 'table': a routing table object"}, False
        try:
            table = RoutingTable.from_dict(raw)
            worker.apply(table, wire=raw)
        except (KeyError, TypeError, ValueError) as exc:
            return {"ok": False, "error": f"invalid routing table: {exc!r}"}, False
        return {"ok": True, "version": table.version}, False
    if op == "prepare":
        try:
            worker.prepared.define(_routes(request.get("define")), worker._pool_for,
                                   worker._counters_for)
        except (KeyError, TypeError, ValueError) as exc:
            return {"ok": False, "error": f"invalid route: {exc!r}"}, False
        # The routes just compiled live long: freeze them now, while a pause costs nothing,
        # so no full collection scans them inside the switch to come (gcheap).
        gcheap.settle()
        return {"ok": True}, False
    if op == "switch":
        return _switch(worker, request), False
    if op == "get":
        return {"ok": True, "table": worker.table_dict()}, False
    if op == "stats":
        return {"ok": True, "backends": worker.stats()}, False
    if op == "shutdown":
        return {"ok": True}, True
    if op == "tls":
        try:
            return {"ok": True, "certs": worker.reload_certs()}, False
        except CertificateError as exc:
            return {"ok": False, "error": str(exc)}, False
    return {"ok": False, "error": f"unknown op {op!r} (ping, apply, prepare, switch, get, "
                                 f"stats, shutdown, tls)"}, False


def _routes(define: Any) -> dict[str, Any]:
    if define is None:
        return {}
    if not isinstance(define, dict):
        raise TypeError("'define' must map route ids to routes")
    return define


def _switch(worker: Worker, request: dict[str, Any]) -> dict[str, Any]:
    """Serve the table made of prepared routes (prepared.py), defining any sent along."""
    ids, version = request.get("routes"), request.get("version")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or \
            not isinstance(version, int):
        return {"ok": False, "error": "switch needs 'version' (int) and 'routes' (route ids)"}
    prepared = worker.prepared
    try:
        prepared.define(_routes(request.get("define")), worker._pool_for, worker._counters_for)
        table, compiled, text = prepared.table(version, ids, request.get("lost") or ())
    except Missing as exc:
        return {"ok": False, "missing": exc.ids,
                "error": f"routes not prepared here: {', '.join(exc.ids)}"}
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"invalid routing table: {exc!r}"}
    worker.install(assemble(table, compiled, link(compiled, worker.pools)), text)
    prepared.serving(ids)
    return {"ok": True, "version": version}


async def start_server(worker: Worker, path: Path) -> asyncio.AbstractServer:
    """Listen on ``path``; a stale socket file is replaced, a live one is ControlSocketBusy."""
    if path.exists() or path.is_symlink():
        if ping_sync(path) is not None:
            raise ControlSocketBusy(f"a router worker already answers on {path}")
        path.unlink()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    response, stop = {"ok": False, "error": f"not JSON: {exc}"}, False
                else:
                    response, stop = handle(worker, request)
                writer.write(json.dumps(response).encode() + b"\n")  # sent at once
                worker.flush_table_file()  # after the ack: the controller never waits on disk
                await writer.drain()
                if stop:
                    worker.request_stop()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.warning("control connection dropped: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(serve, path=str(path), limit=LINE_LIMIT)
    finally:
        os.umask(old_umask)
    return server


def ping_sync(path: Path, timeout: float = 1.0) -> dict[str, Any] | None:
    """Blocking ping (for start-up checks, before the loop serves anything). None if no answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b'{"op":"ping"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                part = s.recv(65536)
                if not part:
                    return None
                buf += part
        answer = json.loads(buf)
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) and answer.get("ok") else None
