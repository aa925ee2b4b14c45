"""The event loop told when a process host ends: a pidfd per live host (Linux 5.3+).

The health monitor asks whether each serving host still lives at every look (5 times a second
per host at a 200 ms interval). Asking the kernel each time (``waitpid`` for our children, a
signal 0 and a /proc read for adopted ones) is a syscall or three per look; a pidfd watched by
the loop costs nothing until the process ends, and then says so at once: ``alive`` is a dict
look-up, and ``listeners`` hear of the end as it happens (the monitor takes such a host out
of traffic then, not at its next look).

A pidfd names one process, never a later one given the same pid; the start ticks read after
opening it tie it to the host's. Watches belong to the event loop that made them: trusted only
while it runs, and dropped and made again when another loop asks (a test's next
``asyncio.run``). Where
pidfds are missing (other systems, old kernels) nothing is watched and callers ask the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from hinotori.providers.proc_usage import proc_stat


class ExitWatch:
    """``reap(pid)`` is called first when a watched process ends, then each listener."""

    def __init__(self, reap: Callable[[int], None]) -> None:
        self.reap = reap
        self.listeners: list[Callable[[int], None]] = []
        self._ticks: dict[int, int] = {}  # pid -> start ticks of the process watched
        self._fds: dict[int, int] = {}  # pid -> its pidfd
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._fds)

    def alive(self, pid: int, ticks: object) -> bool:
        """True when a pidfd watches ``pid`` started at ``ticks`` and it has not ended (False:
        not known here, ask the kernel)."""
        # Its loop must be running to be told (a test's finished asyncio.run is not).
        return (self._ticks.get(pid, -1) == ticks and self._loop is not None
                and self._loop.is_running())

    def watch(self, pid: int, ticks: object) -> None:
        """Watch ``pid`` (alive, started at ``ticks``) from the running loop, if it can be."""
        if not isinstance(ticks, int) or not hasattr(os, "pidfd_open"):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on a loop (a thread): nobody to tell
        if loop is not self._loop:
            self.close()
            self._loop = loop
        if self._ticks.get(pid) == ticks:
            return
        self._forget(pid)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # gone already, or no pidfds here
        st = proc_stat(pid)  # the pidfd holds this very process: is it the host's?
        if st is None or st[1] != ticks or st[0] in "ZX":
            os.close(fd)
            return
        self._ticks[pid], self._fds[pid] = ticks, fd
        loop.add_reader(fd, self._ended, pid)

    def _ended(self, pid: int) -> None:
        self._forget(pid)
        self.reap(pid)
        for listener in list(self.listeners):
            listener(pid)

    def _forget(self, pid: int) -> None:
        self._ticks.pop(pid, None)
        fd = self._fds.pop(pid, None)
        if fd is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def close(self) -> None:
        """Stop watching (the provider closes, or another loop takes over)."""
        for pid in list(self._fds):
            self._forget(pid)
        self._loop = None
