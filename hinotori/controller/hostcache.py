"""The live hosts as the store has them, read again only as far as the store changed them.

The log shipper wants every live host 5 times a second, the health monitor the serving ones
twice a second, the reaper and the metrics sampler theirs; at a thousand hosts reading and
decoding them all each time costs more than the work done with them. Every ``save_host`` stamps
its row with the next mark (``Store.host_mark``), so a ``LiveHosts`` asks for the mark first
(one indexed query): the same mark, the same hosts; a later one, and only the rows written
since are read (``Store.hosts_written_after``). What it hands out is always what a fresh read
would give. The readers of one store with the same ``states`` share one table (``_Table``), so
a switch of 2,000 hosts is read once, not once per reader: at 2,000 hosts a whole read took
25-40 ms of the event loop, and four readers each made one after any commit to the store (the
deploys' own `switch N ms` at 1,000 hosts showed up to 90 ms of it). Called from one thread
(the event loop's).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Collection

from hinotori.deploy.fleet import LIVE_STATES
from hinotori.model import Host, HostState
from hinotori.store import Store


def _order(host: Host) -> tuple[float, str]:
    return host.born_at, host.id  # Store.hosts' order


class _Table:
    """One store's hosts in ``states`` (None: all), by id, kept up to date by the rows
    written since the last read."""

    def __init__(self, store: Store, states: frozenset[HostState] | None) -> None:
        self.store = store
        self.states = states
        self.mark: int | None = None
        self.by_id: dict[str, Host] = {}
        self.hosts: list[Host] = []
        self.version = 0  # moves whenever ``hosts`` changed
        self.reads = 0

    def fresh(self) -> None:
        mark = self.store.host_mark()
        if mark == self.mark:
            return
        if self.mark is None or mark < self.mark:  # first, or another store file: all of it
            self.by_id, self.mark = {}, -1
        written = self.store.hosts_written_after(self.mark)
        self.mark = mark  # taken before the read: a row written during it is read again
        self.reads += 1
        states, by_id = self.states, self.by_id
        for host in written:
            if states is None or host.state in states:
                by_id[host.id] = host
            else:
                by_id.pop(host.id, None)
        if written:
            self.hosts = sorted(by_id.values(), key=_order)
            self.version += 1


# The tables of each store, by the states they keep: readers of the same view share one.
_TABLES: weakref.WeakKeyDictionary[Store, dict[frozenset[HostState] | None, _Table]] = \
    weakref.WeakKeyDictionary()


class LiveHosts:
    """``states``: which hosts to keep (the live ones; None: every host the store knows)."""

    def __init__(self, store: Store, states: Collection[HostState] | None = LIVE_STATES
                 ) -> None:
        key = frozenset(states) if states is not None else None
        tables = _TABLES.setdefault(store, {})
        self._table = tables.get(key) or tables.setdefault(key, _Table(store, key))
        self._version = -1
        self._groups: dict[tuple[str, HostState], list[Host]] | None = None
        self._ids: dict[tuple[str, HostState], frozenset[str]] = {}

    @property
    def version(self) -> int:
        """Moves whenever the hosts of this view changed (read by the last call)."""
        return self._table.version

    @property
    def reads(self) -> int:
        """How often the store was read for this view (for tests and curiosity)."""
        return self._table.reads

    def _fresh(self) -> list[Host]:
        table = self._table
        table.fresh()
        if table.version != self._version:
            self._version = table.version
            self._groups = None
            self._ids = {}
        return table.hosts

    def __call__(self) -> list[Host]:
        """Every live host (shared objects: for readers that change nothing)."""
        return list(self._fresh())

    def shared(self, service: str, state: HostState) -> list[Host]:
        """A service's hosts in ``state`` as shared objects, which the caller must not change
        (grouped once per read: the health monitor asks many times a second)."""
        self._fresh()
        if self._groups is None:
            groups: dict[tuple[str, HostState], list[Host]] = {}
            for h in self._table.hosts:
                groups.setdefault((h.service, h.state), []).append(h)
            self._groups = groups
        return self._groups.get((service, state), [])

    def ids(self, service: str, state: HostState) -> frozenset[str]:
        """The ids of ``shared(service, state)``, as a set made once per read."""
        hosts = self.shared(service, state)
        key = (service, state)
        if key not in self._ids:
            self._ids[key] = frozenset(h.id for h in hosts)
        return self._ids[key]

    def of(self, service: str, state: HostState) -> list[Host]:
        """A service's hosts in ``state``, as copies the caller may change and save."""
        return [copy_host(h) for h in self.shared(service, state)]


def copy_host(host: Host) -> Host:
    """A copy of a shared host that its holder may change and save."""
    mine = copy.copy(host)
    mine.data = dict(host.data)
    return mine
