"""The main frontend's routing rules past the switches, and the latency ring's marker frontend.

Every backend a rule of the main frontend may choose is named in it: a ``use_backend
%[...]`` (like any sample expression in a frontend's rules or log format) makes HAProxy copy
every request's URI for the logs, ~0.3k instructions a request on the switches' fast lane too.
"""

from __future__ import annotations

from hinotori.router.haproxy.flags import LIVE_FLAGS, live_flag
from hinotori.router.haproxy.settings import (
    Settings,
    live_file,
    map_file,
    mark_socket,
    sample_file,
    sticky_file,
)
from hinotori.router.haproxy.slots import slot_backend

MARK_FRONTEND = "_mark"  # the latency ring's markers (where N changed): mark_frontend
MARK = "M"  # a marker line's second field starts with it (a request line's is its number)


def maint_backend(service: str) -> str:
    """The backend the live map points a service in maintenance to (no servers; service
    names have no dots, so it never clashes with a service or a slot)."""
    return f"{service}.maint"


def not_in_maintenance(s: Settings, svc: str) -> str:
    """The condition a request asking for a release meets while ``svc`` is not in
    maintenance (one live-map lookup, paid only by such requests; it also has HAProxy load
    the live map, which the Runtime API changes)."""
    return f"!{{ str({svc}),map({live_file(s)}) -m str {maint_backend(svc)} }}"


def static_rules(s: Settings, svc: str, count: int, sticky: bool, conds: list[str]) -> list[str]:
    """The main frontend's rules for route ``svc`` (``count`` release slots) after its
    switches: by header, by cookie (sticky routes), by the live map, one rule per backend each
    may choose. The header (cookie) test before the route's Host and path ACLs (conditions
    stop at the first false): most requests carry neither, and one rule per slot then costs
    one header scan, no ACL repeated and no map looked up."""
    m = map_file(s, svc)
    slots = [slot_backend(svc, k) for k in range(1, count + 1)]
    up = not_in_maintenance(s, svc)
    out = [" ".join([f"  use_backend {be} if", "{ req.hdr(x-hinotori-release) -m found }", *conds,
                     f"{{ req.hdr(x-hinotori-release),lower,map({m}) -m str {be} }}", up])
           for be in slots]
    if sticky:
        out += [" ".join([f"  use_backend {be} if", f"{{ req.cook(hinotori-{svc}) -m found }}",
                          *conds,
                          f"{{ str({svc}),map({sticky_file(s)}) -m found }}",
                          f"{{ req.cook(hinotori-{svc}),lower,map({m}) -m str {be} }}", up])
                for be in slots]
    # Ordinary requests: where the live map says, read from its switches (flags.live_flags).
    out += [" ".join([f"  use_backend {be} if", *conds,
                      f"{{ srv_is_up({LIVE_FLAGS}/{live_flag(be)}) }}"])
            for be in (*slots, svc, maint_backend(svc))]
    # Reached only if no switch is on: the main backend, as the live map's default.
    out.append(f"  use_backend {svc}" + (" if " + " ".join(conds) if conds else ""))
    return out


def mark_frontend(s: Settings) -> list[str]:
    """A frontend on a Unix socket whose one line per request, ``<pid> M<line number> <N>
    /<previous N>`` (the number: no two markers alike, so none is taken for another),
    marks in the latency ring where N changed (``stats.set_sample`` requests it right after
    it changed the latency map): the lines after it count for N, those before for the
    previous one. Its sample expression costs only its own requests."""
    return [f"frontend {MARK_FRONTEND}", f"  bind {mark_socket(s)} mode 600", "  log global",
            f'  log-format "%pid {MARK}%lc %[int(0),map_int({sample_file(s)})] %HP"',
            "  http-request return status 200", ""]
