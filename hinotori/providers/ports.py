"""Ports for process hosts: free now, and outside the kernel's ephemeral range.

A host is given its port before it binds it. A port taken from the ephemeral range (a bind to
port 0) can meanwhile become the source port of any outgoing connection on this machine: the
controller's own health probes open thousands a second at 1,000 hosts, and a host then fails
with "Address already in use". Ports below the ephemeral range are never chosen by connect(),
so only another explicit bind can take one. They are handed out round-robin from a random
start (another controller on this machine starts elsewhere), each checked free by a bind, so a
port comes back only after the whole range went round; the ephemeral way is the fallback when
that range is too small or all taken.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import deque
from pathlib import Path

from hinotori.errors import ProviderError

LOWEST = 10_000  # below: the well-known and registered ports services are configured with
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_start() -> int:
    """The first port connect() may pick by itself (Linux's default when unknown)."""
    try:
        return int(RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Held while a port is checked by a bind and while boots fork: a child forked while a check's
# socket is open holds that port until it execs, and the host given it then fails to bind.
SPAWN_LOCK = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        # A check's socket lingering in a forked child must not keep a host (which sets
        # SO_REUSEADDR, as servers do) off its port; a listening socket still refuses it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortPool:
    """Thread-safe: boots run in threads."""

    def __init__(self, low: int = LOWEST, high: int | None = None) -> None:
        self.low, self.high = low, high if high is not None else ephemeral_start()
        self._next = random.randrange(self.low, self.high) if self.high > self.low else 0
        self._recent: deque[int] = deque(maxlen=4096)  # handed out by the fallback
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock, SPAWN_LOCK:
            if self.high - self.low >= 1000:
                for _ in range(200):
                    port = self._next
                    self._next = port + 1 if port + 1 < self.high else self.low
                    if _bindable(port):
                        return port
            return self._ephemeral()

    def _ephemeral(self) -> int:
        """A port free now and not handed out recently, from the ephemeral range."""
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self._recent:
                self._recent.append(port)
                return port
        raise ProviderError("no free TCP port on 127.0.0.1",
                            hint="too many hosts on this machine?")
