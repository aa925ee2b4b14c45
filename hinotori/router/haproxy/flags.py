"""The fast lane of a catch-all route: switches an ordinary request reads without a lookup.

Every rule HAProxy evaluates per request costs: the header rule ~0.6k instructions (it scans
the request's headers), the live map's dynamic ``use_backend %[...]`` ~1.1k (a map lookup, a
name built and looked up among the proxies). A catch-all route (no Host, prefix ``/``: its
rules have no ACL to test first) gets one rule per release slot before them, ``use_backend
svc.rK if { srv_is_up(_live/svc.rK) }``: a pointer read. The "servers" of the ``_live``
backend are such switches (never sent a request: no rule leads to ``_live``); each is declared
in haproxy.cfg (``disabled`` when off) and flipped with ``set server _live/<name> state
ready|maint``, Runtime API commands like the map entries, no reload.

A slot's switch is on only when nothing but the live map could decide differently: the slot
is where ordinary requests go, no other backend is in the service's release map (no canary,
no held release, no other release a header or cookie could ask for) and no cookie is set.
Then the header rule would pick the same backend, and skipping it changes nothing. Otherwise
every switch is off and requests take the rules as before (header, cookie, live map): these
stay in every config, so a switch left off is never wrong, only slower.

Every route (catch-all or not) also has the live map's switches (``live_flags``): one per
backend its live map entry may name, on while it names that one, flipped in the same batch as
the entry (on before off). The live-map rules read them (config.rules), so no rule builds a
backend name with ``use_backend %[...]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from hinotori.router.haproxy.slots import slot_backend

LIVE_FLAGS = "_live"
# Never connected to: no rule sends a request to the _live backend.
FLAG_ADDRESS = "127.0.0.1:1"


class Shaped(Protocol):  # config.Shape
    @property
    def service(self) -> str: ...
    @property
    def hosts(self) -> tuple[str, ...]: ...
    @property
    def prefix(self) -> str: ...
    @property
    def slots(self) -> int: ...


def declared(shapes: Iterable[Shaped]) -> dict[str, list[str]]:
    """Service -> its switches, in rule order (its slot backends'), for the catch-all routes."""
    return {s.service: [slot_backend(s.service, k) for k in range(1, s.slots + 1)]
            for s in shapes if fast_lane(s.hosts, s.prefix)}


def live_flags(service: str, slots: int) -> list[str]:
    """The live map's switches of ``service``, in rule order: one per backend the live map may
    name (its slots, its main backend, its maintenance one), on while it names that one. The
    rules read these instead of looking the live map up (~0.25k instructions a rule against
    ~0.75k), so none builds a backend name (config.rules)."""
    return [live_flag(b) for b in (*(slot_backend(service, k) for k in range(1, slots + 1)),
                                   service, f"{service}.maint")]


def live_flag(backend: str) -> str:
    """The switch that is on while the live map names ``backend``."""
    return f"{backend}_live"


def fast_lane(hosts: tuple[str, ...], prefix: str) -> bool:
    """Whether a route's ordinary requests get the switches (catch-all: no ACL to repeat)."""
    return not hosts and prefix == "/"


def flag_on(service: str, live: str, entries: Mapping[str, str], sticky: bool) -> str | None:
    """The switch to turn on for ``service`` (its slot backend's name), or None: ``live`` is
    where its ordinary requests go, ``entries`` its release map."""
    if sticky or not live.startswith(f"{service}.r"):
        return None
    if any(backend != live for backend in entries.values()):
        return None
    return live


def flag_backend(names: list[str], on: frozenset[str]) -> list[str]:
    """The _live backend declaring the switches ``names``, those in ``on`` on."""
    if not names:
        return []
    return [f"backend {LIVE_FLAGS}", *(f"  server {n} {FLAG_ADDRESS}" + ("" if n in on else
                                                                        " disabled")
                                       for n in names), ""]


def commands(on: Iterable[str], have: Mapping[str, bool]) -> tuple[list[str], list[str]]:
    """The commands turning on exactly ``on`` among the declared switches ``have`` (name ->
    off): first the ones to turn on, then the ones to turn off, so that for an instant two
    may be on (both right, the earlier rule wins), never none that should be."""
    want = set(on)
    ups = [f"set server {LIVE_FLAGS}/{n} state ready" for n in sorted(want)
           if have.get(n, False)]
    downs = [f"set server {LIVE_FLAGS}/{n} state maint" for n, off in sorted(have.items())
             if n not in want and not off]
    return ups, downs
