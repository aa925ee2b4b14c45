"""Invariant 5 with real process hosts: a host's logs are in the central store before the host
is gone, every line exactly once, also when it was killed with SIGKILL while writing.

The hosts are booted by the real ProcessProvider (own session, output.log in their state dir)
from a tiny image whose program writes numbered lines with one write() each, so the file is
the ground truth of what the host wrote: the kernel had each line once write() returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from pathlib import Path

import pytest

from hinotori.model import Host, Release, ReleaseConfig
from hinotori.observe.logs import LogQuery, LogStore, Shipper, search
from hinotori.providers.base import BootRequest
from hinotori.providers.process import ProcessProvider

pytestmark = pytest.mark.integration

WRITER = r'''
import os, signal, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
app = open(os.path.join(os.environ["HINOTORI_SCRATCH"], "app.log"), "ab", buffering=0)

def bye(*_):
    for i in range(1, 101):
        os.write(1, b"bye %d\n" % i)
        app.write(b"app bye %d\n" % i)
    os.write(1, b"no newline at the very end")
    os._exit(0)

signal.signal(signal.SIGTERM, bye)
i = 0
while mode == "forever" or i < n:
    i += 1
    if mode == "forever":  # two writes per line: a kill can land between them
        os.write(1, b"line %d " % i)
        os.write(1, b"x" * (i % 50) + b"\n")
    else:
        os.write(1, b"line %d\n" % i)
        app.write(b"app %d\n" % i)
os.write(1, b"written\n")
while True:
    time.sleep(1)
'''


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    root.mkdir()
    (root / "writer.py").write_text(WRITER)
    return root


async def boot(provider: ProcessProvider, image: Path, tmp_path: Path, host_id: str,
               *args: str) -> Host:
    release = Release(service="web", number=4, image="sha256:test",
                      config=ReleaseConfig(command=(sys.executable, "writer.py", *args)),
                      created_at=time.time())
    return await provider.boot(BootRequest(host_id=host_id, release=release, image_root=image,
                                           state_dir=tmp_path / "hosts" / host_id))


async def wait_for(path: Path, text: bytes, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_bytes():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


async def ship_loop(shipper: Shipper, hosts: list[Host], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await shipper.ship(hosts)
        await asyncio.sleep(0.05)


def lines_of(store: LogStore, host: str, source: str = "stdout") -> list[str]:
    return [ln.line for ln in search(store, LogQuery(host=host, source=source, limit=None))]


def test_sigkilled_host_every_line_once(tmp_path: Path, image: Path) -> None:
    """N numbered lines, SIGKILL, flush: 1..N exactly once (stdout and a declared file)."""
    n = 20_000
    store = LogStore(tmp_path / "logs.db")
    provider = ProcessProvider(tmp_path / "hosts")
    shipper = Shipper(store, declared=lambda service: ["app.log"])

    async def scenario() -> Host:
        host = await boot(provider, image, tmp_path, "web-kill", "count", str(n))
        stop = asyncio.Event()
        loop = asyncio.create_task(ship_loop(shipper, [host], stop))  # ships while it writes
        await wait_for(Path(host.data["log"]), b"written\n")
        await provider.kill(host)  # SIGKILL: no chance to flush anything itself
        stop.set()
        await loop
        async with shipper.destroying(host):  # what Fleet.destroy does
            await provider.destroy(host, grace=1.0)
        return host

    host = run(scenario())
    assert not Path(host.root or "").exists()  # the view and scratch are gone…
    assert lines_of(store, host.id) == [f"line {i}" for i in range(1, n + 1)] + ["written"]
    assert lines_of(store, host.id, "$HINOTORI_SCRATCH/app.log") == \
        [f"app {i}" for i in range(1, n + 1)]  # …their declared file is in the store


def test_sigkilled_mid_write_store_equals_what_was_written(tmp_path: Path,
                                                           image: Path) -> None:
    """Killed at a random point while writing as fast as it can: the store holds exactly the
    file's lines, each once, the half-written last one included."""
    store = LogStore(tmp_path / "logs.db")
    provider = ProcessProvider(tmp_path / "hosts")
    shipper = Shipper(store)

    async def scenario() -> Host:
        hosts = [await boot(provider, image, tmp_path, f"web-{i}", "forever", "0")
                 for i in range(2)]
        stop = asyncio.Event()
        loop = asyncio.create_task(ship_loop(shipper, hosts, stop))
        await asyncio.sleep(1.0)
        for h in hosts:
            await provider.kill(h)
        await asyncio.sleep(0.1)
        stop.set()
        await loop
        for h in hosts:
            await shipper.flush(h)
            await provider.destroy(h, grace=1.0)
        return hosts[0]

    run(scenario())
    for i in range(2):
        written = (tmp_path / "hosts" / f"web-{i}" / "output.log").read_bytes()
        expected = written.decode().split("\n")
        if expected[-1] == "":
            expected.pop()
        stored = lines_of(store, f"web-{i}")
        assert len(stored) > 1000
        assert stored == expected  # same lines, same order, none twice
        numbers = [int(re.match(r"line (\d+)", s).group(1)) for s in stored]  # type: ignore[union-attr]
        assert numbers == list(range(1, len(numbers) + 1))


def test_destroyed_host_last_words_are_shipped_after_its_view_is_gone(tmp_path: Path,
                                                                      image: Path) -> None:
    """SIGTERM makes the app write 100 more lines to stdout and to its declared file, then
    exit; destroy removes its scratch dir. All of it is in the store, and stays queryable."""
    store = LogStore(tmp_path / "logs.db")
    provider = ProcessProvider(tmp_path / "hosts")
    shipper = Shipper(store, declared=lambda service: ["app.log"])

    async def scenario() -> Host:
        host = await boot(provider, image, tmp_path, "web-term", "count", "10")
        await wait_for(Path(host.data["log"]), b"written\n")
        await shipper.ship([host])
        async with shipper.destroying(host):
            await provider.destroy(host, grace=5.0)
        return host

    host = run(scenario())
    out = lines_of(store, host.id)
    assert out[-101:] == [f"bye {i}" for i in range(1, 101)] + ["no newline at the very end"]
    assert lines_of(store, host.id, "$HINOTORI_SCRATCH/app.log")[-1] == "app bye 100"
    assert not (tmp_path / "hosts" / host.id / "scratch").exists()
    again = LogStore(tmp_path / "logs.db")  # what `hinotori logs --host` reads, much later
    assert [ln.line for ln in search(again, LogQuery(host=host.id, grep="bye 100",
                                                       source="stdout"))] == \
        ["bye 100"]
    with contextlib.suppress(Exception):
        shipper.close()
