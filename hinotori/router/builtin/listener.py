"""Addresses and the listening socket.

Workers share one port through SO_REUSEPORT (the kernel spreads new connections over them). That
same option would also let a worker silently share a port with any other SO_REUSEPORT program
(HAProxy uses it too), so before binding we probe: a bind *without* SO_REUSEPORT succeeds only if
nobody listens. If somebody does, it must be a sibling worker (one answering ping on a control
socket next to ours, serving the same address); otherwise the port is someone else's and we stop.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable


class AddressInUse(Exception):
    """The listen address is held by a program that is not a hinotori router worker."""

    def __init__(self, listen: str) -> None:
        super().__init__(
            f"hinotori router: cannot listen on {listen}: the address is already in use by "
            f"another program; change [router] listen in hinotori.toml or stop that program")


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> (host, port). ValueError says what is wrong."""
    host, sep, port_s = str(text).strip().rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"invalid address {text!r}: write HOST:PORT, e.g. \"127.0.0.1:8080\"")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"invalid address {text!r}: port must be 1-65535")
    return host, port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_is_free(host: str, port: int) -> bool:
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only skips TIME_WAIT leftovers; on Linux it never allows binding over a
        # live listener, which is exactly the question asked here.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return True
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        probe.close()


def open_listener(listen: str, sibling_serves: Callable[[], bool],
                  backlog: int = 2048) -> socket.socket:
    """A non-blocking listening socket on ``listen`` with SO_REUSEPORT.

    ``sibling_serves`` is asked only when the port is taken; it says whether the holder is one of
    our sibling workers. Raises AddressInUse otherwise, ValueError for a malformed address.
    """
    host, port = parse_address(listen)
    if not _port_is_free(host, port) and not sibling_serves():
        raise AddressInUse(listen)
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(listen) from None
        raise
    return sock
