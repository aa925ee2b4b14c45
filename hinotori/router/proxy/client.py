"""The control plane's handle on the built-in data plane (implements router.base.Router).

Workers are separate, detached processes (own session, output to a log file), so a controller
killed with SIGKILL leaves them serving; the next controller's ``start`` finds them by their
control sockets and adopts them. Each worker gets one persistent control connection, so an
``apply`` costs one small write and one read per worker: the switch is as fast as the
acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hinotori.errors import RouterError
from hinotori.model import BackendStats, RoutingTable

START_TIMEOUT = 10.0
CALL_TIMEOUT = 5.0


class _Channel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = asyncio.Lock()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, msg: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        data = json.dumps(msg).encode() + b"\n"
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # streams and locks belong to one loop: start afresh
            self.loop, self.lock = loop, asyncio.Lock()
            self.reader = self.writer = None
        async with self.lock:
            for attempt in (1, 2):  # a stale connection (worker restarted) gets one reconnect
                try:
                    if self.writer is None or self.writer.is_closing():
                        self.reader, self.writer = await asyncio.wait_for(
                            asyncio.open_unix_connection(str(self.path), limit=1 << 24), timeout)
                    assert self.reader and self.writer
                    self.writer.write(data)
                    await self.writer.drain()
                    line = await asyncio.wait_for(self.reader.readline(), timeout)
                    if not line:
                        raise ConnectionResetError("worker closed the control channel")
                    return json.loads(line)
                except (OSError, TimeoutError, ValueError) as e:
                    self.close()
                    if attempt == 2:
                        raise RouterError(f"router worker at {self.path} does not answer: "
                                          f"{e.__class__.__name__} {e}".strip()) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class BuiltinRouter:
    kind = "builtin"

    def __init__(self, state_dir: Path, listen: str, workers: int = 1,
                 metrics: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.listen = listen
        self.workers = workers
        self.metrics = metrics
        self.channels = [_Channel(self.state_dir / f"router-{i}.sock") for i in range(workers)]
        self._children: list[subprocess.Popen[bytes]] = []

    def _pid_file(self, i: int) -> Path:
        return self.state_dir / f"router-{i}.pid"

    def _log(self, i: int) -> Path:
        return self.state_dir / f"router-{i}.log"

    async def _ping(self, i: int) -> dict[str, Any] | None:
        if not self.channels[i].path.exists():
            return None
        try:
            reply = await self.channels[i].call({"op": "ping"}, timeout=1.0)
        except RouterError:
            return None
        return reply if reply.get("ok") else None

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.workers):
            pong = await self._ping(i)
            if pong is not None:
                if pong.get("listen") != self.listen:
                    raise RouterError(
                        f"the running router listens on {pong.get('listen')}, the spec says "
                        f"{self.listen}", hint="run `hinotori down` and `hinotori up` to move it")
                continue
            await self._spawn(i, first=(i == 0))

    async def _spawn(self, i: int, first: bool) -> None:
        channel = self.channels[i]
        channel.path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "hinotori.router.proxy", "--listen", self.listen,
                "--control", str(channel.path),
                "--table-file", str(self.state_dir / "router-table.json")]
        if not self.metrics:
            argv.append("--no-metrics")
        if first and not any(await asyncio.gather(*(self._ping(j)
                                                    for j in range(1, self.workers)))):
            argv.append("--exclusive-check")
        with open(self._log(i), "wb") as log:  # fresh per start: errors show this run only
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self._children.append(proc)
        self._pid_file(i).write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self._log(i).read_text(errors="replace").strip().splitlines()[-3:]
                raise RouterError("the router could not start: " + " / ".join(tail),
                                  hint=f"full log: {self._log(i)}")
            if await self._ping(i) is not None:
                return
            await asyncio.sleep(0.02)
        proc.kill()
        raise RouterError(f"the router did not answer within {START_TIMEOUT:.0f}s",
                          hint=f"see {self._log(i)}")

    async def _all(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        replies = await asyncio.gather(*(c.call(msg) for c in self.channels))
        for reply in replies:
            if not reply.get("ok"):
                raise RouterError(f"router worker refused {msg.get('op')}: {reply.get('error')}")
        return replies

    async def apply(self, table: RoutingTable) -> None:
        await self._all({"op": "apply", "table": table.to_dict()})

    async def current(self) -> RoutingTable | None:
        reply = await self.channels[0].call({"op": "get"})
        return RoutingTable.from_dict(reply["table"]) if reply.get("table") else None

    async def stats(self) -> dict[str, BackendStats]:
        total: dict[str, dict[str, Any]] = {}
        for reply in await self._all({"op": "stats"}):
            for host_id, c in reply["backends"].items():
                t = total.setdefault(host_id, {"active": 0, "requests": 0, "errors": 0,
                                               "statuses": {}, "latency": [],
                                               "latency_sum_ms": 0.0})
                for key in ("active", "requests", "errors", "latency_sum_ms"):
                    t[key] += c.get(key, 0)
                for k, v in c["statuses"].items():
                    t["statuses"][k] = t["statuses"].get(k, 0) + v
                t["latency"] = [a + b for a, b in zip(t["latency"] or [0] * len(c["latency"]),
                                                      c["latency"], strict=True)]
        return {h: BackendStats(host_id=h, active=t["active"], requests=t["requests"],
                                errors=t["errors"], statuses=t["statuses"],
                                latency=tuple(t["latency"]), latency_sum_ms=t["latency_sum_ms"])
                for h, t in total.items()}

    async def stop(self) -> None:
        for i, channel in enumerate(self.channels):
            pid = self._read_pid(i)
            with contextlib.suppress(RouterError):
                await channel.call({"op": "shutdown"}, timeout=2.0)
            channel.close()
            if pid is not None:
                await self._wait_exit(pid, 15.0)
            self._pid_file(i).unlink(missing_ok=True)
            channel.path.unlink(missing_ok=True)
        for child in self._children:
            child.poll()

    def _read_pid(self, i: int) -> int | None:
        try:
            return int(self._pid_file(i).read_text())
        except (OSError, ValueError):
            return None

    async def _wait_exit(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _running(pid, self._children):
            await asyncio.sleep(0.05)
        if _running(pid, self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int, children: list[subprocess.Popen[bytes]]) -> bool:
    for child in children:
        if child.pid == pid:
            return child.poll() is None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False
