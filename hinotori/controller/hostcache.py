"""The live hosts as the store has them, read again only when the store changed.

The log shipper wants every live host 5 times a second and the health monitor the serving
ones twice a second; at a thousand hosts reading and decoding them all each time costs more
than the work done with them. ``LiveHosts`` keeps the last read and asks the store for its
change mark first (``Store.changes``: one PRAGMA): the same mark means the same rows, so the
answer is always what a fresh read would give. Called from one thread (the event loop's), as
the mark is per connection.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

from hinotori.deploy.fleet import LIVE_STATES
from hinotori.model import Host, HostState
from hinotori.store import Store


class LiveHosts:
    """``states``: which hosts to keep (the live ones; None: every host the store knows)."""

    def __init__(self, store: Store, states: Collection[HostState] | None = LIVE_STATES
                 ) -> None:
        self.store = store
        self.states = states
        self._mark: tuple[int, int] | None = None
        self._hosts: list[Host] = []
        self._groups: dict[tuple[str, HostState], list[Host]] | None = None
        self._ids: dict[tuple[str, HostState], frozenset[str]] = {}
        self.reads = 0  # how often the store was read (for tests and curiosity)

    def _fresh(self) -> list[Host]:
        mark = self.store.changes()
        if mark != self._mark:
            self._hosts = self.store.hosts(states=self.states)
            self._groups = None
            self._ids = {}
            self._mark = mark  # taken before the read: a change during it reads again
            self.reads += 1
        return self._hosts

    def __call__(self) -> list[Host]:
        """Every live host (shared objects: for readers that change nothing)."""
        return list(self._fresh())

    def shared(self, service: str, state: HostState) -> list[Host]:
        """A service's hosts in ``state`` as shared objects, which the caller must not change
        (grouped once per read: the health monitor asks many times a second)."""
        self._fresh()
        if self._groups is None:
            groups: dict[tuple[str, HostState], list[Host]] = {}
            for h in self._hosts:
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
