"""The shipper: moves new lines from every live host's files into the central store.

``ship(hosts)`` is one pass over the live hosts (the controller runs it every ~200 ms; none
when nothing changed since a pass that left nothing to do, ``_quiet``); ``flush(host,
final=True)`` ships everything of one host and is called around its destruction, so that a
host's logs are in the store before the host is gone (invariant 5).

How it reads, and why:

- **From the stored offset.** Each (host, source) is a stream whose shipped offset lives in
  logs.db and moves in the same transaction as its lines, so a restarted controller resumes
  exactly where the last one stopped, and a line is stored once even if read twice.
- **Complete lines only**, until the host's life ends: then its partial last line is shipped
  too (see tail.py).
- **Files stay open** between passes, like ``tail -F``: a file that is renamed (rotated) or
  deleted - even the whole view of a destroyed process host - can still be read to its end
  through the open descriptor. A path that now names another file (new inode) or a file
  shorter than its offset (truncated) starts a new generation of the stream at offset 0; the
  old file is read to its end first.
- **One transaction per pass**, on a worker thread: SQLite's C code releases the GIL, and the
  event loop (health probes, the API) keeps running while a large batch is stored. Each
  source gets at most 1 MiB per pass and a pass stops reading after ``pass_bytes``, so one
  noisy host cannot starve the others or make a pass long; the order rotates between passes.

A host on another machine has no files here: its source serves its output as API feeds
(feeds.py), read once per pass and flush, stored by the same (stream, offset) rule.

Since process hosts keep output.log after they die, the lines of a host killed with SIGKILL
are all shipped by the next flush or pass: the kernel had them as soon as write() returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping, Sequence
from typing import cast

from hinotori.model import Host
from hinotori.observe.logs.changes import FileChanges
from hinotori.observe.logs.feeds import FeedReader
from hinotori.observe.logs.sources import SOURCES, FeedSource, LogSource, SourceFile
from hinotori.observe.logs.store import Batch, LogStore
from hinotori.observe.logs.tail import READ_SIZE, read_lines
from hinotori.observe.logs.tails import ShipStats, Tail, Work, ident_of

log = logging.getLogger("hinotori.logs")

Declared = Callable[[str], Sequence[str]]  # service -> its log_files globs


def no_declared_files(_: str) -> Sequence[str]:
    return ()


# A pass asks each host's source for its file list (globs of declared log_files) this often
# (never, for a host with nothing declared and its output open); between, it looks (one stat
# each) only at the open files inotify saw change, or at all without inotify. A host with no
# file open yet is listed every pass, and a flush (before a host is destroyed) always lists:
# nothing is lost.
DISCOVER_EVERY = 1.0


class Shipper:
    def __init__(self, store: LogStore, *, declared: Declared = no_declared_files,
                 sources: Mapping[str, LogSource] = SOURCES,
                 pass_bytes: int = 16 * READ_SIZE, discover_every: float = DISCOVER_EVERY,
                 changes: FileChanges | None = None) -> None:
        self.store = store
        self.declared = declared
        self.sources = sources
        self.pass_bytes = pass_bytes
        self.discover_every = discover_every
        self._next_discovery = 0.0
        self._source_of: dict[str, LogSource | None] = {}  # by provider, for one pass
        self.stats = ShipStats()
        self._tails: dict[str, dict[str, Tail]] = {}  # host id -> source name -> open tail
        self._retiring: list[Tail] = []  # rotated or finished: read to the end, then closed
        self._lock = asyncio.Lock()  # one pass or flush at a time: they share the tails
        self._turn = 0
        self._warned: set[str] = set()
        self._feeds = FeedReader(store)
        self._feed_kinds: dict[type, bool] = {}
        # which open files had writes, renames... (inotify)
        self._changes = changes if changes is not None else FileChanges()
        self._hosts: list[Host] = []  # the last pass's, and their services and providers
        self._services: set[str] = set()
        self._providers: set[str] = set()
        self._settled = False  # the last pass left nothing for the next (see _quiet)
        self._held: set[Hashable] | None = set()  # changes _quiet took (None: some were lost)

    # -- the API -------------------------------------------------------------------------
    async def ship(self, hosts: Iterable[Host]) -> int:
        """One pass over ``hosts``, which must be every live host: a host shipped before that
        is no longer among them is finished, so the rest of its files (partial tail too) is
        shipped and they are closed. Returns how many new lines were stored."""
        hosts = list(hosts)
        async with self._lock:
            if self._quiet(hosts):
                return 0
            return await asyncio.to_thread(self._pass, hosts)

    async def flush(self, host: Host, final: bool = True) -> int:
        """Ship everything ``host`` has written so far. With ``final`` the host is done:
        its partial last lines are shipped too and its files closed. Returns new lines."""
        async with self._lock:
            return await asyncio.to_thread(self._drain, host, final)

    @contextlib.asynccontextmanager
    async def destroying(self, host: Host) -> AsyncIterator[None]:
        """Wrap a provider's destroy: ship (and open) everything before it, and after it the
        rest - what the host wrote while stopping, read from files kept open even if destroy
        removed them. If destroy fails the host may live on: only complete lines then."""
        await self.flush(host, final=False)
        done = False
        try:
            yield
            done = True
        finally:
            await self.flush(host, final=done)

    def close(self) -> None:
        """Close every open file (the controller is stopping; offsets are in the store)."""
        for tails in self._tails.values():
            for tail in tails.values():
                tail.close()
        for tail in self._retiring:
            tail.close()
        self._tails.clear()
        self._retiring.clear()
        self.stats.open_files = 0

    # -- one pass ------------------------------------------------------------------------
    def _quiet(self, hosts: list[Host]) -> bool:
        """Whether a pass now would find nothing to do, known without one: the same hosts as
        the last pass, which left every host with its files open, each read up to its size
        and watched by inotify, no rotated file to finish and no feed to ask; no listing due;
        and inotify saw no change since. At a thousand quiet hosts a pass is a thread hop and
        walks of every host and file, five times a second, for nothing. Changes taken here
        are kept for the next pass (``_to_look``)."""
        if not self._settled or self._retiring or hosts != self._hosts:
            return False
        if time.monotonic() >= self._next_discovery and \
                any(self.declared(s) for s in self._services):
            return False
        changed = self._changes.changed()
        if changed is None or self._held is None:
            self._held = None
        else:
            self._held |= changed
        return self._held is not None and not self._held

    def _pass(self, hosts: list[Host]) -> int:
        self._settled = False
        ts = self.store.now()
        self._source_of.clear()
        if hosts != self._hosts:  # the same Host objects as last pass (cheap): the same set
            live = {h.id for h in hosts}
            for gone in [h for h in self._tails if h not in live]:
                self._retiring += self._tails.pop(gone).values()
            for gone in self._feeds.hosts() - live:
                self._feeds.forget(gone)
            self._hosts, self._services = hosts, {h.service for h in hosts}
            self._providers = {h.provider for h in hosts}
        self._turn += 1
        k = self._turn % len(hosts) if hosts else 0
        clock = time.monotonic()
        listing = clock >= self._next_discovery
        if listing:
            self._next_discovery = clock + self.discover_every
        # A host with no file open yet (its output not there yet) is listed every pass.
        # Listing finds files that did not exist at the last one; between listings one stat
        # follows each open file inotify saw change (changes.py; a new file at its path is a
        # rotation: _look lists then).
        globs = {s: bool(self.declared(s)) for s in self._services}
        look = self._to_look()
        live_tails: list[Iterable[Tail]] = []
        for host in hosts[k:] + hosts[:k]:
            tails = self._tails.get(host.id)
            if not tails or (listing and globs[host.service]):
                live_tails.append(self._discover(host))
            elif look is None or host.id in look:
                live_tails.append(self._look(host))
            else:
                live_tails.append(tails.values())  # unchanged since its sizes were taken
        self.stats.open_files = self._count_open()
        work = self._read_retiring(ts)  # a rotated file's rest goes before its successor's
        budget = self.pass_bytes
        for tail in (t for tails in live_tails for t in tails):
            if budget <= 0:
                break
            if tail.size == tail.seen:
                continue  # one stat said it: nothing new since everything was read
            errors = self.stats.errors
            w = self._read(tail, ts, final=False)  # whole reads: a short one would cut a line
            # One read saw every byte the stat counted: until the size changes, a read would
            # find nothing more (at most a partial last line). Known once the rows are stored.
            covered = tail.size if tail.size - tail.offset < READ_SIZE else -1
            if w:
                w.seen = covered
                budget -= w.offset - tail.offset
                work.append(w)
            elif self.stats.errors == errors:
                tail.seen = covered
        stored = self._commit(work, ts) + self._ship_feeds(hosts, ts)
        self._settled = look is not None and self._nothing_left(hosts)
        return stored

    def _nothing_left(self, hosts: list[Host]) -> bool:
        """Whether the next pass has nothing to do unless inotify or a listing says so: each
        host has a file open, each file is read up to the size its stat gave (the pass's
        budget did not run out, no read failed), at its path and watched; no rotated file is
        left to finish and no host is read through feeds (asked every pass)."""
        return not self._retiring and not self._fed(self._providers) and all(
            self._tails.get(h.id) for h in hosts) and all(
            t.seen == t.size and not t.polled and self._changes.watched(t)
            for tails in self._tails.values() for t in tails.values())

    def _to_look(self) -> set[str] | None:
        """Hosts with an open file inotify saw change, or that nothing would tell of (not
        watched; its path names no file). None: every host."""
        changed, held = self._changes.changed(), self._held
        self._held = set()
        if changed is None or held is None:
            return None
        changed |= held
        return {t.host for t in changed if isinstance(t, Tail)} | {
            t.host for tails in self._tails.values() for t in tails.values()
            if t.polled or not self._changes.watched(t)}  # dropped by the kernel too

    def _drain(self, host: Host, final: bool) -> int:
        """Everything written when the flush began (a host still writing fast cannot keep
        it going); then, if ``final``, the rest up to the end, partial tails included."""
        self._source_of.clear()
        self._hosts = []  # tails opened here: the next pass checks the host is live
        self._settled = False
        stored = self._ship_feeds([host], self.store.now(), force=True)
        tails = self._discover(host)
        goal = {id(t): self._size(t) for t in tails}
        while True:
            ts = self.store.now()
            work = self._read_retiring(ts, host.id)
            work += [w for w in (self._read(t, ts, final=False) for t in tails
                                 if t.offset < goal[id(t)]) if w]
            if not work:
                break
            stored += self._commit(work, ts)
        if final:
            for _ in range(64):  # a finished host's files no longer grow: one round, normally
                ts = self.store.now()
                work = [w for w in (self._read(t, ts, final=True) for t in tails) if w]
                if not work:
                    break
                stored += self._commit(work, ts)
            for tail in self._tails.pop(host.id, {}).values():
                tail.close()
            self._feeds.forget(host.id)
            self.stats.open_files = self._count_open()
        return stored

    @staticmethod
    def _size(tail: Tail) -> int:
        try:
            return os.fstat(tail.fh.fileno()).st_size
        except OSError:
            return tail.offset

    def _read(self, tail: Tail, ts: float, *, final: bool) -> Work | None:
        try:
            rows, offset = read_lines(tail.fh, tail.offset, stream=tail.stream, ts=ts,
                                      final=final)
        except OSError as e:
            self._error(f"cannot read {tail.name} of {tail.host}: {e}")
            return None
        if tail.unframe is not None:
            unframe = tail.unframe
            rows = [(s, off, t, unframe(text)) for s, off, t, text in rows]
        return Work(tail, rows, offset) if offset != tail.offset else None

    def _read_retiring(self, ts: float, host: str | None = None) -> list[Work]:
        """Finished files: read their rest (partial tail included); close them at the end."""
        work = []
        for tail in list(self._retiring):
            if host is not None and tail.host != host:
                continue
            w = self._read(tail, ts, final=True)
            if w is None:
                tail.close()
                self._retiring.remove(tail)
            else:
                with contextlib.suppress(OSError):
                    w.close = w.offset >= os.fstat(tail.fh.fileno()).st_size  # read to the end
                work.append(w)
        return work

    def _commit(self, work: list[Work], ts: float) -> int:
        if not work:
            return 0
        try:
            stored = self.store.ingest([Batch(w.tail.stream, w.rows, w.offset) for w in work],
                                       ts)
        except Exception as e:  # offsets did not move: the next pass reads the same lines
            self._error(f"cannot store log lines: {e}")
            raise
        for w in work:
            w.tail.offset = w.offset
            w.tail.seen = w.seen
            if w.close:
                w.tail.close()
                self._retiring.remove(w.tail)
        self.stats.open_files = self._count_open()
        self.stats.passes += 1
        self.stats.lines += stored
        return stored

    def _ship_feeds(self, hosts: list[Host], ts: float, *, force: bool = False) -> int:
        """One request per feed of ``hosts`` (hosts on other machines), stored together."""
        batches = []
        fed = self._fed({h.provider for h in hosts})
        for host in hosts if fed else ():
            if host.provider not in fed:
                continue
            source = self._source(host.provider)
            for feed in cast(FeedSource, source).feeds(host):
                batch, error = self._feeds.read(host, feed, ts, force=force)
                if error:
                    self._error(error)
                if batch:
                    batches.append(batch)
        if not batches:
            return 0
        try:
            stored = self.store.ingest(batches, ts)
        except Exception as e:  # positions did not move: the next pass asks again
            self._error(f"cannot store log lines: {e}")
            raise
        self._feeds.stored(batches)
        self.stats.lines += stored
        return stored

    # -- finding and opening files ---------------------------------------------------------
    def _source(self, provider: str) -> LogSource | None:
        """The provider's source, looked up once per pass (or flush)."""
        if provider not in self._source_of:
            self._source_of[provider] = self.sources.get(provider)
        return self._source_of[provider]

    def _fed(self, providers: set[str]) -> set[str]:
        """Those of ``providers`` whose hosts' logs are read through feeds."""
        return {p for p in providers if (s := self._source(p)) is not None and self._is_feed(s)}

    def _is_feed(self, source: LogSource) -> bool:
        # A runtime Protocol check walks the protocol's members: once per source class.
        kind = type(source)
        if kind not in self._feed_kinds:
            self._feed_kinds[kind] = isinstance(source, FeedSource)
        return self._feed_kinds[kind]

    def _look(self, host: Host) -> list[Tail]:
        """The host's open tails with their sizes, from one stat of each path; a path that
        names another file or a shorter one (rotated, truncated) is dealt with by a listing."""
        tails = self._tails[host.id]
        for tail in tails.values():
            try:
                st = os.stat(tail.path)
            except OSError:
                tail.size = self._size(tail)  # gone from its path: keep reading the open file
                tail.polled = True
                continue
            if ident_of(st) != tail.ident or st.st_size < tail.offset:
                return self._discover(host)
            tail.size, tail.polled = st.st_size, False
        return list(tails.values())

    def _discover(self, host: Host) -> list[Tail]:
        """The host's open tails, after opening new files and noticing rotation."""
        source = self._source(host.provider)
        if source is None:
            if host.provider not in self._warned:
                self._warned.add(host.provider)
                log.warning("no log source for provider %r: its hosts' logs are not shipped",
                            host.provider)
            return []
        tails = self._tails.setdefault(host.id, {})
        try:
            files = source.files(host, self.declared(host.service))
        except OSError as e:
            self._error(f"cannot list log files of {host.id}: {e}")
            files = []
        for sf in files:
            tail = tails.get(sf.name)
            if tail is None:
                opened = self._open(host, sf)
                if opened:
                    tails[sf.name] = opened
                continue
            try:
                now = ident_of(os.stat(sf.path))
                size = os.fstat(tail.fh.fileno()).st_size
            except OSError:
                tail.polled = True
                continue  # gone from its path: keep reading the open file
            if now != tail.ident:  # rotated: finish the old file, start a new generation
                self._retiring.append(tail)
                opened = self._open(host, sf, after=tail)
            elif size < tail.offset:  # truncated in place: what was cut is gone
                tail.close()
                opened = self._open(host, sf, after=tail)
            else:
                continue
            if opened:
                tails[sf.name] = opened
            else:
                del tails[sf.name]
        for tail in tails.values():
            tail.size = self._size(tail)
        return list(tails.values())

    def _open(self, host: Host, sf: SourceFile, after: Tail | None = None) -> Tail | None:
        try:
            fh = open(sf.path, "rb")  # noqa: SIM115 - kept open across passes on purpose
            st = os.fstat(fh.fileno())
        except OSError:
            return None
        ident = ident_of(st)
        known = self.store.stream(host.id, sf.name)
        if after is None and known and known.inode == ident and st.st_size >= known.shipped:
            tail = Tail(host.id, sf.name, fh, ident, known.id, known.gen, known.shipped,
                         sf.unframe, str(sf.path))
        else:
            gen = 0 if known is None else known.gen + 1
            stream = self.store.open_stream(host=host.id, service=host.service,
                                            release=host.release, source=sf.name,
                                            inode=ident, gen=gen)
            tail = Tail(host.id, sf.name, fh, ident, stream.id, stream.gen, stream.shipped,
                         sf.unframe, str(sf.path))
        if self._changes.watch(tail, fh.fileno()):  # before the first read: no write missed
            tail.changes = self._changes
        return tail

    def _count_open(self) -> int:
        return sum(len(t) for t in self._tails.values()) + len(self._retiring)

    def _error(self, message: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = message
        log.warning("%s", message)
