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

from hinotori.deploy.fleet import LIVE_STATES
from hinotori.model import Host, HostState
from hinotori.store import Store


class LiveHosts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._mark: tuple[int, int] | None = None
        self._hosts: list[Host] = []
        self.reads = 0  # how often the store was read (for tests and curiosity)

    def __call__(self) -> list[Host]:
        """Every live host (shared objects: for readers that change nothing)."""
        mark = self.store.changes()
        if mark != self._mark:
            self._hosts = self.store.hosts(states=LIVE_STATES)
            self._mark = mark  # taken before the read: a change during it reads again
            self.reads += 1
        return list(self._hosts)

    def of(self, service: str, state: HostState) -> list[Host]:
        """A service's hosts in ``state``, as copies the caller may change and save."""
        return [_copy(h) for h in self() if h.service == service and h.state == state]


def _copy(host: Host) -> Host:
    mine = copy.copy(host)
    mine.data = dict(host.data)
    return mine
