"""ExitWatch and the process provider's liveness: a pidfd watched by the event loop says a host
ended as it ends, and until then liveness asks the kernel nothing (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hinotori.model import Host, HostState
from hinotori.providers.proc_usage import proc_stat
from hinotori.providers.process import ProcessProvider
from hinotori.providers.process_exits import ExitWatch

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")


def sleeper() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    st = proc_stat(proc.pid)
    assert st is not None
    return proc, st[1]


def test_a_watched_process_is_alive_without_asking_and_its_end_is_told_at_once() -> None:
    proc, ticks = sleeper()
    reaped: list[int] = []
    heard: list[int] = []
    watch = ExitWatch(reaped.append)
    watch.listeners.append(heard.append)

    async def scenario() -> None:
        assert not watch.alive(proc.pid, ticks)  # not watched yet: ask the kernel
        watch.watch(proc.pid, ticks)
        assert watch.alive(proc.pid, ticks) and len(watch) == 1
        assert not watch.alive(proc.pid, ticks + 1)  # another process given the same pid
        os.kill(proc.pid, signal.SIGKILL)
        for _ in range(1000):
            if heard:
                break
            await asyncio.sleep(0.01)
        assert heard == [proc.pid] and reaped == [proc.pid]
        assert not watch.alive(proc.pid, ticks) and len(watch) == 0

    try:
        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()


def test_a_watch_belongs_to_its_event_loop_and_a_stranger_is_never_watched() -> None:
    proc, ticks = sleeper()
    watch = ExitWatch(lambda pid: None)

    async def watched() -> bool:
        watch.watch(proc.pid, ticks)
        return watch.alive(proc.pid, ticks)

    async def asked() -> bool:
        return watch.alive(proc.pid, ticks)

    try:
        assert asyncio.run(watched())
        assert not asyncio.run(asked())  # another loop would never be told: ask again
        assert not watch.alive(proc.pid, ticks)  # no loop at all
        assert asyncio.run(watched())  # watched again from the new loop
        watch.close()
        assert len(watch) == 0

        async def stranger() -> int:
            watch.watch(proc.pid, ticks + 7)  # the pid's process started at other ticks
            return len(watch)

        assert asyncio.run(stranger()) == 0
    finally:
        proc.kill()
        proc.wait()


def test_the_process_provider_hears_of_a_host_dying_and_reaps_it(tmp_path: Path) -> None:
    provider = ProcessProvider(tmp_path)
    proc, ticks = sleeper()
    provider._children[proc.pid] = proc  # as its own boot would keep it
    provider._child_ticks[proc.pid] = ticks
    host = Host(id="h1", service="web", release=1, provider="process",
                state=HostState.SERVING, born_at=0.0, pid=proc.pid,
                data={"start_ticks": ticks})
    heard: list[int] = []
    provider.exit_watch.listeners.append(heard.append)

    async def scenario() -> tuple[bool, bool, bool]:
        first = provider.alive_now(host)  # asks the kernel, then watches
        second = provider.exit_watch.alive(proc.pid, ticks)
        os.kill(proc.pid, signal.SIGKILL)
        for _ in range(1000):
            if heard:
                break
            await asyncio.sleep(0.01)
        return first, second, provider.alive_now(host)

    try:
        assert asyncio.run(scenario()) == (True, True, False)
        assert heard == [proc.pid]
        assert proc.returncode is not None  # reaped: no zombie left behind
        assert asyncio.run(provider.exit_status(host)) == 128 + signal.SIGKILL
    finally:
        provider.close()
        proc.kill()
        proc.wait()
