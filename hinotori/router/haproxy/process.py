"""Running HAProxy in master-worker mode, detached from the controller, and finding it again.

``haproxy -W -S <master socket> -f haproxy.cfg -p haproxy.pid``: the master (pid in the pid
file) starts a worker and re-executes itself on ``reload``; the new worker takes the listening
sockets over from the old one (the master passes them; the stats socket also has ``expose-fd
listeners``), so a reload refuses no connection, and the old worker finishes its requests
before it exits (``hard-stop-after`` caps that). The master runs in its own session with no
inherited stdin/stdout, so it outlives the controller; a new controller adopts it when its
master socket answers and its pid file names a live HAProxy master for this config.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

from hinotori.errors import RouterError
from hinotori.processes import log_tail, pid_alive
from hinotori.router.haproxy import runtime
from hinotori.statefiles import open_private

START_TIMEOUT = 10.0
RELOAD_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0  # soft stop (in-flight requests finish), then SIGTERM, then SIGKILL
MIN_VERSION = (2, 6)  # `add server`/`del server` on the Runtime API, `http-request return`
INSTALL_HINT = "install it with `apt-get install haproxy` (Debian/Ubuntu), or set " \
               "[router] haproxy = \"/path/to/haproxy\" in hinotori.toml"


def find_binary(configured: str) -> str:
    found = shutil.which(configured)
    if found is None:
        raise RouterError(f"HAProxy is not installed (no {configured!r} executable found)",
                          hint=INSTALL_HINT)
    return found


def version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m:
        raise RouterError(f"{binary} -v did not print an HAProxy version: {out[:200]!r}",
                          hint=INSTALL_HINT)
    return int(m.group(1)), int(m.group(2))


def check_config(binary: str, cfg: Path) -> None:
    result = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        detail = " | ".join(line for line in (result.stderr + result.stdout).splitlines()
                            if "ALERT" in line or "error" in line.lower())[:800]
        raise RouterError(f"HAProxy rejects the configuration hinotori wrote ({cfg}): {detail}",
                          hint="this is a bug in hinotori's HAProxy config writer; the running "
                               "HAProxy keeps its previous configuration")


class Supervisor:
    """Start, adopt, reload and stop one HAProxy master and its worker."""

    def __init__(self, binary: str, cfg: Path, master_socket: Path, stats_socket: Path,
                 pidfile: Path, logfile: Path) -> None:
        self.binary = binary
        self.cfg = cfg
        self.master_socket = master_socket
        self.stats_socket = stats_socket
        self.pidfile = pidfile
        self.logfile = logfile
        self._child: subprocess.Popen[bytes] | None = None

    # -- finding it ----------------------------------------------------------------------------

    def master_pid(self) -> int | None:
        """The pid in the pid file, if it is a live HAProxy master running our config."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if os.fsencode(self.cfg) not in cmdline or os.fsencode(self.master_socket) \
                not in b",".join(cmdline):
            return None  # pid reused by something else
        return pid if pid_alive(pid) else None

    async def workers(self) -> tuple[list[int], list[int]]:
        """(current worker pids, old worker pids still finishing requests after a reload)."""
        _, current, old = runtime.parse_proc(await runtime.master(self.master_socket,
                                                                   "show proc", 2.0))
        return current, old

    async def worker_info(self) -> dict[str, str]:
        (text,) = await runtime.run(self.stats_socket, ["show info"], 2.0)
        return runtime.parse_info(text)

    async def adoptable(self) -> bool:
        if self.master_pid() is None:
            return False
        try:
            current, _ = await self.workers()
            info = await self.worker_info()
        except RouterError:
            return False
        return bool(current) and info.get("Pid", "").isdigit() and int(info["Pid"]) in current

    # -- life cycle ----------------------------------------------------------------------------

    async def spawn(self) -> None:
        if version(self.binary) < MIN_VERSION:
            raise RouterError(f"{self.binary} is older than HAProxy "
                              f"{'.'.join(map(str, MIN_VERSION))}", hint=INSTALL_HINT)
        check_config(self.binary, self.cfg)
        for stale in (self.master_socket, self.stats_socket):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        argv = [self.binary, "-W", "-S", f"{self.master_socket},mode,600", "-f", str(self.cfg),
                "-p", str(self.pidfile)]
        with open_private(self.logfile, "ab") as log:
            offset = log.tell()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.cfg.parent, umask=0o077)  # its pid file: 0600
        self._child = proc
        threading.Thread(target=proc.wait, name="reap-haproxy", daemon=True).start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await self.adoptable():
            if proc.returncode is not None:
                raise RouterError(f"HAProxy exited during start (exit code {proc.returncode}): "
                                  f"{self._tail(offset)}",
                                  hint=f"its log is {self.logfile}")
            if loop.time() > deadline:
                await self.stop()
                raise RouterError(f"HAProxy did not answer on {self.stats_socket} within "
                                  f"{START_TIMEOUT:g}s: {self._tail(offset)}",
                                  hint=f"its log is {self.logfile}")
            await asyncio.sleep(0.02)

    async def reload(self) -> int:
        """Seamless reload with the cfg on disk; return once the new worker answers. Its pid."""
        check_config(self.binary, self.cfg)
        before, _ = await self.workers()
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        await runtime.master(self.master_socket, "reload", 5.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELOAD_TIMEOUT
        while loop.time() < deadline:
            await asyncio.sleep(0.02)
            with contextlib.suppress(RouterError):  # the master re-executes itself meanwhile
                current, _ = await self.workers()
                fresh = [p for p in current if p not in before]
                if fresh:
                    info = await self.worker_info()
                    if info.get("Pid") == str(fresh[0]):
                        return fresh[0]
        raise RouterError(f"HAProxy did not finish a reload within {RELOAD_TIMEOUT:g}s: "
                          f"{self._tail(offset)}",
                          hint=f"the previous worker keeps serving; HAProxy's log is "
                               f"{self.logfile}")

    async def stop(self) -> None:
        """Soft stop (requests in flight finish), then SIGTERM, then SIGKILL."""
        pid = self.master_pid()
        if pid is None and self._child is not None and self._child.returncode is None:
            pid = self._child.pid
        if pid is not None:
            loop = asyncio.get_running_loop()
            for sig, wait in ((signal.SIGUSR1, STOP_TIMEOUT), (signal.SIGTERM, 5.0),
                              (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = loop.time() + wait
                while self._alive(pid) and loop.time() < deadline:
                    await asyncio.sleep(0.02)
                if not self._alive(pid):
                    break
        for path in (self.pidfile, self.master_socket, self.stats_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _tail(self, offset: int) -> str:
        return log_tail(self.logfile, offset, empty="(HAProxy wrote nothing)")

    def _alive(self, pid: int) -> bool:
        if self._child is not None and self._child.pid == pid:
            return self._child.returncode is None
        return pid_alive(pid)

