"""What the controller runs for metrics: a sample every ``[metrics] interval``, rollup and
pruning every minute, a last sample before each host is destroyed, and the totals the
Prometheus endpoint serves.

The recorder gets what it observes through callables (router stats, the hosts the store
knows, a host's usage), so it imports no controller and runs in tests on plain data. Every
observation and the write it leads to happen under one asyncio lock: a destroy-time sample
never interleaves with a periodic one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager

from hinotori.model import BackendStats, Host
from hinotori.observe.metrics.points import Counts, Point
from hinotori.observe.metrics.sampler import Sampler
from hinotori.observe.metrics.store import MetricsStore, Total
from hinotori.providers.base import HostUsage
from hinotori.spec.schema import MetricsSpec

log = logging.getLogger("hinotori.metrics")

StatsSource = Callable[[], Awaitable[Mapping[str, BackendStats]]]
HostsSource = Callable[[], Iterable[Host]]
UsageSource = Callable[[Host], Awaitable[HostUsage | None]]
# Many hosts at once (by host id; a host the source cannot tell about is absent): a provider
# that reads usage for all its hosts in one go (one /proc scan) is asked once per sample.
UsagesSource = Callable[[list[Host]], Awaitable[Mapping[str, HostUsage]]]
Destroying = Callable[[Host], AbstractAsyncContextManager[None]]

MAINTAIN_EVERY = 60.0


class MetricsRecorder:
    def __init__(self, store: MetricsStore, spec: MetricsSpec, *, stats: StatsSource,
                 hosts: HostsSource, usage: UsageSource, usages: UsagesSource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.spec = spec
        self.stats = stats
        self.hosts = hosts
        self.usage = usage
        self.usages = usages
        self.clock = clock
        self.sampler = Sampler(store.sampler_state())
        self._lock = asyncio.Lock()
        # Router stats fetched for destroys (``_stats_after``): fetches started, samples taken,
        # and the last fetch as (its number, the samples before it, the stats).
        self._fetches = self._samples = 0
        self._kept: tuple[int, int, Mapping[str, BackendStats]] | None = None
        # Destroys waiting for their host's last usage, and what one read found for them.
        self._usage_wanted: dict[str, Host] = {}
        self._usage_read: dict[str, HostUsage | None] = {}

    async def _usage(self, hosts: Iterable[Host]) -> dict[str, HostUsage]:
        live = [h for h in hosts if h.state.alive]
        if self.usages is not None:
            return {i: u for i, u in (await self.usages(live)).items()
                    if isinstance(u, HostUsage)}
        found = await asyncio.gather(*(self.usage(h) for h in live), return_exceptions=True)
        return {h.id: u for h, u in zip(live, found, strict=True) if isinstance(u, HostUsage)}

    async def sample_once(self) -> list[Point]:
        """Take one sample and store it (points, totals and baseline in one transaction)."""
        async with self._lock:
            self._samples += 1  # the baseline moves: stats fetched before are stale for finals
            stats = await self.stats()
            hosts = list(self.hosts())
            usage = await self._usage(hosts)
            before = self.sampler.snapshot()
            now = self.clock()
            points = self.sampler.sample(now, stats, hosts, usage, self.spec.interval)
            write = asyncio.ensure_future(asyncio.to_thread(
                self.store.write_sample, points, self.sampler.state(), now))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # Cancelled while the thread writes: the write goes on; whether the baseline
                # moves must follow whether it was stored, or a delta is counted twice.
                await asyncio.wait([write])
                if write.exception() is not None:
                    self.sampler.rollback(before)
                raise
            except BaseException:
                self.sampler.rollback(before)  # not stored: the next sample counts it again
                raise
            return points

    async def maintain(self) -> tuple[int, int]:
        """Roll complete minutes up, then prune past retention: (rolled, pruned)."""
        now = self.clock()
        rolled = await asyncio.to_thread(self.store.rollup, now)
        pruned = await asyncio.to_thread(self.store.prune, now, keep_raw=self.spec.retention_10s,
                                         keep_minute=self.spec.retention_1m)
        return rolled, pruned

    @contextlib.asynccontextmanager
    async def destroying(self, host: Host) -> AsyncIterator[None]:
        """Around a host's destroy: first keep what it counted and used since the last sample
        (it goes into the next one). Never stops the destroy: a failure is logged."""
        try:
            asked = self._fetches
            if host.state.alive:
                self._usage_wanted[host.id] = host
            try:
                async with self._lock:
                    stats = await self._stats_after(asked)
                    usage = await self._usage_of(host) if host.state.alive else None
                    self.sampler.final(host, stats.get(host.id), usage)
            finally:
                self._usage_wanted.pop(host.id, None)
                self._usage_read.pop(host.id, None)
        except Exception:
            log.exception("metrics: final sample of %s failed", host.id)
        yield

    async def _usage_of(self, host: Host) -> HostUsage | None:
        """``host``'s usage, read (under the lock) together with every other destroy waiting:
        a process host's usage is a scan of all /proc, and at 2,000 hosts `down` spent ~30 ms
        on one per host, one after another."""
        if host.id not in self._usage_read:
            self._usage_wanted[host.id] = host
            wanted, self._usage_wanted = list(self._usage_wanted.values()), {}
            found = await self._usage(wanted)
            self._usage_read.update((h.id, found.get(h.id)) for h in wanted)
        return self._usage_read.pop(host.id)

    async def _stats_after(self, asked: int) -> Mapping[str, BackendStats]:
        """Router stats from a fetch started after fetch number ``asked`` and after the last
        sample (under the lock): destroys waiting together share one fetch. Each fetched every
        host's counters itself: at 2,000 hosts `down` spent ~100 s on them, one after another."""
        kept = self._kept
        if kept is not None and kept[0] > asked and kept[1] == self._samples:
            return kept[2]
        self._fetches += 1
        number, samples = self._fetches, self._samples
        stats = await self.stats()
        self._kept = (number, samples, stats)
        return stats

    async def totals(self, service: str | None = None) -> list[Total]:
        """Per (service, release): every counter since the history began, including what the
        router counted since the last sample; gauges as of the last sample."""
        async with self._lock:
            stats = await self.stats()
            fresh = self.sampler.peek(stats, self.hosts())
            stored = await asyncio.to_thread(self.store.totals, service)
        out: dict[tuple[str, int], Total] = {(t.service, t.release): t for t in stored}
        for (svc, rel), counts in fresh.items():
            if service not in (None, svc):
                continue
            old = out.get((svc, rel))
            total = Counts.from_dict(old.counts.to_dict()) if old else Counts()
            total.add(counts)
            out[(svc, rel)] = Total(service=svc, release=rel, counts=total,
                                    memory_bytes=old.memory_bytes if old else 0,
                                    hosts=old.hosts if old else 0,
                                    updated=old.updated if old else self.clock())
        return [out[k] for k in sorted(out)]

    async def run(self) -> None:
        """Sample every interval, maintain every minute, until cancelled; then one last
        sample, so a controller that stops cleanly leaves everything counted in the store."""
        next_maintain = 0.0
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.sample_once()
                    if started >= next_maintain:
                        await self.maintain()
                        next_maintain = started + MAINTAIN_EVERY
                except Exception:
                    log.exception("metrics sample failed")
                await asyncio.sleep(max(0.0, self.spec.interval - (time.monotonic() - started)))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.sample_once())


def chain_destroying(*hooks: Destroying | None) -> Destroying:
    """Several ``Fleet.destroying`` hooks as one: entered in order, left in reverse."""
    active = [h for h in hooks if h is not None]

    @contextlib.asynccontextmanager
    async def around(host: Host) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for hook in active:
                await stack.enter_async_context(hook(host))
            yield

    return around
