"""From a RoutingTable to what HAProxy runs: a Plan (backends, servers, maps) and haproxy.cfg.

The plan has two parts that change at different speeds:

* the *shape* (which services exist, their Host/path rules, how many release slots each has)
  lives in haproxy.cfg as frontend ACLs and backends; changing it needs a (seamless) reload.
* the *runtime state* (servers, their addresses and weights, which release a header or the
  sticky cookie selects) changes with every deployment and goes through the Runtime API with no
  reload: servers with ``add server``/``set server``/``del server``, release selection with
  ``add map``/``set map``/``del map``. The cfg is rewritten with the same state after each apply,
  so a reload or a restart starts from exactly what was served.

Per service ``svc`` there is a main backend ``svc`` (every serving host, weighted; the one
ordinary requests use) and release slots ``svc.r1``, ``svc.r2``... (the hosts of one release
each, weight 0 counted as 1), used when a request asks for a release: ``X-Hinotori-Release:
canary | stable | vN``, or the sticky cookie ``hinotori-svc=vN``. A per-service map turns that
value into the slot backend (and ``preview`` into a held release's: `deploy --hold`; its
servers have weight 0 in the main backend, so only the header and the preview frontend on
``preview_listen`` reach it). A release keeps its slot while it serves; a new release takes a
free slot, so a blue-green switch or a canary never changes the shape. Only when more releases
serve at once than there are slots (at least two) does the shape grow.

Ordinary requests (no header, no cookie) go where the ``live`` map says: the main backend, or,
when one release takes all the traffic (a blue-green switch; every member weighted, no sticky
cookie to set), that release's slot backend, which then holds exactly the main backend's
servers and weights. A switch between two releases already in their slots is then one ``set
map``, whatever the number of hosts; a backend nothing points to (the main one while a slot
serves, a slot with no release) is ``idle``: its servers are left as they are (none of them
gets a request) until it is pointed to again, and only then converged.

Maintenance mode is in the live map too: a service in maintenance points it to its
``svc.maint`` backend, which answers 503 from the maintenance maps (maint.py), so an ordinary
request pays no extra lookup for it; a request asking for a release (header, cookie, the
preview frontend) checks the live map before it goes to a slot.

A catch-all route (no Host, prefix ``/``) has one more rule per slot before all of these, a
switch (flags.py) that is on while its slot is where every request would go anyway: then an
ordinary request costs one pointer test instead of a header scan and a live-map lookup.

Only a route with ``sticky`` set has the cookie rule (the flag is part of its shape): the others
never look at the ``Cookie`` header.

Servers are named ``v<release>_<host id>``: the release is in the name so the main backend can
tell a sticky client which release it got (``srv_name,field(1,_)``), and the host id gives the
counters their key.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from hinotori.model import RoutingTable, ServiceRoute
from hinotori.router import maintenance
from hinotori.router.haproxy import tls
from hinotori.router.haproxy.flags import (
    LIVE_FLAGS,
    declared,
    fast_lane,
    flag_backend,
    flag_on,
    live_flag,
    live_flags,
)
from hinotori.router.haproxy.maint import MAINTENANCE_MAPS, maintenance_maps
from hinotori.router.haproxy.rules import MARK as MARK
from hinotori.router.haproxy.rules import MARK_FRONTEND as MARK_FRONTEND
from hinotori.router.haproxy.rules import (
    maint_backend,
    mark_frontend,
    not_in_maintenance,
    static_rules,
)
from hinotori.router.haproxy.settings import REQUEST_TIMEOUT as REQUEST_TIMEOUT
from hinotori.router.haproxy.settings import (
    SAMPLE_RANGE,
    Settings,
    duration,
    live_file,
    maintenance_file,
    map_file,
    sample_file,
    sticky_file,
)
from hinotori.router.haproxy.settings import map_text as map_text
from hinotori.router.haproxy.settings import mark_socket as mark_socket
from hinotori.router.haproxy.settings import sample_current as sample_current
from hinotori.router.haproxy.settings import sample_entries as sample_entries
from hinotori.router.haproxy.settings import sample_value as sample_value
from hinotori.router.haproxy.slots import assign_slots, live_backend, slot_backend

MIN_SLOTS = 2         # a canary needs two releases selectable without a reload
MAX_WEIGHT = 256      # HAProxy's weight range is 0..256
FRONTEND = "_front"   # service names start with a letter, so "_" names never clash
PREVIEW_FRONTEND = "_preview"  # on preview_listen: a held release answers for its service
# A request's latency line: worker pid, the frontend's line number, server, Ta (ms)
LINE_FORMAT = "%pid %lc %s %Ta"
NO_ROUTE = "_none"
LATENCY_RING = "hinotori-latency"
# 25-33k lines: what is logged between two dumps of the ring (stats.py: at most 1 s apart,
# sooner after ~4,000 lines, checked every 0.25 s), a burst at N = 1 included
RING_BYTES = 1 << 20
# Runtime API connections HAProxy serves at once (its default is 10). Past it a connection is
# accepted by the kernel and never answered: ten kept connections of abandoned router objects
# (a bench's, an operator's socat) had every stats read time out after 10 s.
STATS_MAXCONN = 100
CONNECT_TIMEOUT = 1.0  # seconds; a connect that times out is retried (`retries 3`, redispatched)
_HOST_ID = re.compile(r"^[A-Za-z0-9.:-][A-Za-z0-9._:-]*$")


@dataclass(frozen=True)
class Shape:
    """The part of one route that lives in haproxy.cfg."""

    service: str
    hosts: tuple[str, ...]
    prefix: str
    slots: int
    sticky: bool = False  # the route's cookie selects a release: its frontend has the rule

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Shape:
        return cls(str(d["service"]), tuple(d["hosts"]), str(d["prefix"]),  # type: ignore[arg-type]
                   int(d["slots"]), bool(d.get("sticky", False)))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int
    weight: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Plan:
    shapes: tuple[Shape, ...] = ()
    servers: dict[str, dict[str, Server]] = field(default_factory=dict)  # backend -> name ->
    maps: dict[str, dict[str, str]] = field(default_factory=dict)  # service -> key -> backend
    sticky: set[str] = field(default_factory=set)  # services whose cookie selects a release
    slots: dict[str, dict[int, int]] = field(default_factory=dict)  # service -> release -> slot
    lost: frozenset[str] = frozenset()  # backend addresses on machines seen down
    # Services in maintenance: map file name -> service -> value (see maintenance_maps).
    maintenance: dict[str, dict[str, str]] = field(default_factory=dict)
    live: dict[str, str] = field(default_factory=dict)  # service -> ordinary requests' backend
    idle: frozenset[str] = frozenset()  # backends no map points to: left as they are
    flags: frozenset[str] | None = None  # the _live switches on (flags.py); None: leave them


def server_name(release: int, host_id: str) -> str:
    return f"v{release}_{host_id}"


def host_of(name: str) -> str:
    """The host id in a server name (``v3_web-1a2b`` -> ``web-1a2b``)."""
    return name.split("_", 1)[1] if "_" in name else name


def address_key(address: str) -> str:
    """``host:port`` as HAProxy shows a server's (``[::1]:80`` -> ``::1:80``)."""
    host, _, port = address.rpartition(":")
    return f"{host.strip('[]')}:{port}"


def _split_address(address: str, where: str) -> tuple[str, int]:
    parsed = _parse_address(address)
    if parsed is None:
        raise ValueError(f"{where}: address must be host:port, got {address!r}")
    return parsed


@functools.lru_cache(maxsize=8192)  # every apply parses every backend's address again
def _parse_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def scaled(weights: list[int]) -> list[int]:
    """Weights in HAProxy's 0..256, keeping their ratios (a nonzero weight stays nonzero)."""
    top = max(weights, default=0)
    if top <= MAX_WEIGHT:
        return list(weights)
    return [0 if w == 0 else max(1, round(w * MAX_WEIGHT / top)) for w in weights]


def _check(route: ServiceRoute) -> None:
    if not route.path_prefix.startswith("/") or any(c.isspace() for c in route.path_prefix):
        raise ValueError(f"route {route.service!r}: path_prefix must start with '/' and have no "
                         f"spaces, got {route.path_prefix!r}")
    for h in route.hosts:
        if not h or any(c.isspace() or c in "\"'\\#" for c in h):
            raise ValueError(f"route {route.service!r}: bad host {h!r}")
    for b in route.backends:
        if not isinstance(b.weight, int) or b.weight < 0:
            raise ValueError(f"route {route.service!r}: backend {b.host_id!r} weight must be an "
                             f"integer >= 0, got {b.weight!r}")
        if not _HOST_ID.match(b.host_id):
            raise ValueError(f"route {route.service!r}: host id {b.host_id!r} cannot name an "
                             f"HAProxy server (letters, digits, '.', ':', '-', '_')")


def plan(table: RoutingTable, previous_slots: dict[str, dict[int, int]],
         previous_shapes: tuple[Shape, ...] = ()) -> Plan:
    """The Plan serving ``table``. Raises ValueError naming a bad route or backend."""
    out = Plan(lost=frozenset(address_key(a) for a in table.lost))
    old_slot_count = {s.service: s.slots for s in previous_shapes}
    shapes = []
    seen: set[str] = set()
    for route in table.routes:
        _check(route)
        if route.service in seen:
            raise ValueError(f"route {route.service!r} appears twice in the table")
        seen.add(route.service)
        svc = route.service
        # A lost backend is never served, even if a table still names it.
        backends = [b for b in route.backends if address_key(b.address) not in out.lost]
        releases = sorted({int(b.release) for b in backends})
        count = max(MIN_SLOTS, old_slot_count.get(svc, 0))
        slots = assign_slots(releases, previous_slots.get(svc, {}), count)
        out.slots[svc] = slots
        count = max(count, max(slots.values(), default=0))
        hosts = tuple(sorted({h.lower().rsplit(":", 1)[0] if h.count(":") == 1 else h.lower()
                              for h in route.hosts}))
        shapes.append(Shape(svc, hosts, route.path_prefix, count, route.sticky))

        parsed = [(b, *_split_address(b.address, f"route {svc!r}: backend {b.host_id!r}"))
                  for b in backends]
        main = out.servers.setdefault(svc, {})
        for (b, host, port), w in zip(parsed, scaled([b.weight for b in backends]),
                                      strict=True):
            name = server_name(b.release, b.host_id)
            main[name] = Server(name, host, port, w)
        for slot in range(1, count + 1):
            out.servers.setdefault(slot_backend(svc, slot), {})
        for release, slot in slots.items():
            members = [(b, host, port) for b, host, port in parsed if b.release == release]
            side = out.servers[slot_backend(svc, slot)]
            for (b, host, port), w in zip(members, scaled([max(1, b.weight) for b, *_ in members]),
                                          strict=True):
                name = server_name(b.release, b.host_id)
                side[name] = Server(name, host, port, w)

        keys = {f"v{r}": slot_backend(svc, s) for r, s in slots.items()}
        if route.canary is not None and route.canary in slots:
            keys["canary"] = slot_backend(svc, slots[route.canary])
        if route.preview is not None and route.preview in slots:
            keys["preview"] = slot_backend(svc, slots[route.preview])
        stable = max((r for r in slots if r not in (route.canary, route.preview)), default=None)
        if stable is not None:
            keys["stable"] = slot_backend(svc, slots[stable])
        out.maps[svc] = keys
        if route.sticky and len(set(slots) - {route.preview}) > 1:  # a held one never counts
            out.sticky.add(svc)
    out.shapes = tuple(shapes)
    out.maintenance = maintenance_maps(table)
    down = out.maintenance.get(MAINTENANCE_MAPS[0], {})
    out.live = {svc: maint_backend(svc) if svc in down else
                live_backend(svc, out.servers.get(svc, {}), svc in out.sticky,
                             out.slots.get(svc, {}))
                for svc in (shape.service for shape in shapes)}
    out.flags = frozenset(flag for shape in shapes if fast_lane(shape.hosts, shape.prefix)
                          if (flag := flag_on(shape.service, out.live[shape.service],
                                              out.maps[shape.service],
                                              shape.service in out.sticky)) is not None) \
        | {live_flag(be) for be in out.live.values()}
    pointed = set(out.live.values()) | {v for m in out.maps.values() for v in m.values()}
    out.idle = frozenset(be for be in out.servers if be not in pointed)
    return out


def _maintenance_backend(s: Settings, svc: str) -> list[str]:
    """The backend that answers a service in maintenance: 503, Retry-After, HTML or JSON by
    Accept. Only the live map leads here, and it does so only once the maps hold the answer
    (router.py converges them first)."""
    retry, js, page = (maintenance_file(s, n) for n in MAINTENANCE_MAPS)
    answer = (f'http-request return status 503 hdr Retry-After "%[str({svc}),map({retry})]" '
              'hdr Cache-Control no-store hdr Vary Accept')
    return [
        f"backend {maint_backend(svc)}",
        f'  {answer} content-type "{maintenance.HTML_TYPE.decode()}" '
        f'lf-string "%[str({svc}),map({page}),b64dec]" '
        "if { req.hdr(accept) -m sub -i text/html } !{ req.hdr(accept) -m sub -i json }",
        f'  {answer} content-type "{maintenance.JSON_TYPE.decode()}" '
        f'lf-string "%[str({svc}),map({js}),b64dec]"',
        "",
    ]


def _ordered(shapes: tuple[Shape, ...]) -> list[tuple[int, Shape]]:
    """The order rules are tried in: routes with hosts first, then longest prefix first
    (stable: among equals the table's order), as the built-in router matches."""
    indexed = list(enumerate(shapes))
    return sorted(indexed, key=lambda p: (not p[1].hosts, -len(p[1].prefix)))


def render(settings: Settings, the_plan: Plan, *, loaded: bool) -> str:
    """haproxy.cfg for ``the_plan``. ``loaded`` False: no table yet (every request gets 503)."""
    s = settings
    lines = [
        "# Written by hinotori (hinotori/router/haproxy); rewritten on every apply.",
        "global",
        f"  maxconn {s.maxconn}",
        f"  nbthread {s.threads}",
        f"  stats socket {s.stats_socket} mode 600 level admin expose-fd listeners",
        "  stats timeout 10m",  # an idle Runtime API connection (cli.py) lasts this long
        f"  stats maxconn {STATS_MAXCONN}",
        f"  hard-stop-after {max(1, round(s.hard_stop_after))}s",
    ]
    if s.latency_log:
        lines.append(f"  log ring@{LATENCY_RING} local0 info")
        lines += ["", f"ring {LATENCY_RING}", "  format raw", "  maxlen 200",
                  f"  size {RING_BYTES}"]
    lines += [
        "",
        "defaults",
        "  mode http",
        "  option http-keep-alive",
        "  option dontlognull",
        # A connection refused or closed unanswered by one host is tried on another; a host
        # whose machine is cut off drops the SYN, so connect gives up after 1 s (as the
        # built-in router) and the retry goes elsewhere. `empty-response` also covers a
        # session the router ended because its backend was lost (router.py).
        "  option redispatch 1",
        "  retries 3",
        f"  retry-on conn-failure{' empty-response' if s.retry_unanswered else ''}",
        f"  timeout connect {duration(CONNECT_TIMEOUT)}",
        f"  timeout client {duration(s.keep_alive_timeout)}",
        "  timeout server 75s",
        f"  timeout http-request {duration(s.request_timeout)}",
        f"  timeout http-keep-alive {duration(s.keep_alive_timeout)}",
        "  timeout queue 10s",
        "",
        f"frontend {FRONTEND}",
        f"  bind {s.listen}",
    ]
    if s.tls_listen is not None and s.certs_dir is not None:
        lines += tls.frontend_lines(s.tls_listen, s.certs_dir, s.redirect_port)
    if s.retry_unanswered:
        # A request that may have reached an app is re-sent only when idempotent (as the
        # built-in router): no L7 retry (empty response) for the other methods.
        lines.append("  http-request disable-l7-retry if !METH_GET !METH_HEAD !METH_OPTIONS "
                     "!{ method PUT DELETE TRACE }")
    if s.latency_log:
        # Log 1 request in N, N read from the latency map per request, so the reader can
        # bound the line rate at runtime (a log line per request costs HAProxy a large part
        # of its req/s). One rule, no variable: a random draw looked up in the latency map's
        # range (see SAMPLE_RANGE). The line carries no sample expression and no %rt: either
        # makes HAProxy copy every request's URI (LW_REQ), logged or not; the N a line counts
        # for is in the ring's last marker before it (the _mark frontend), its uniqueness in
        # the frontend's line counter (%lc).
        lines += ["  log global",
                  f"  http-request set-log-level silent unless "
                  f"{{ rand({SAMPLE_RANGE}),map_int({sample_file(s)}) -m found }}",
                  f'  log-format "{LINE_FORMAT}"']
    switches = declared(the_plan.shapes)
    for i, shape in _ordered(the_plan.shapes):
        conds = _route_acls(lines, i, shape)
        lines += [f"  use_backend {be} if {{ srv_is_up({LIVE_FLAGS}/{be}) }}"  # flags.py
                  for be in switches.get(shape.service, ())]  # before every other rule
        lines += static_rules(s, shape.service, shape.slots, shape.sticky, conds)
    lines += [f"  default_backend {NO_ROUTE}", ""]
    if s.latency_log:
        lines += mark_frontend(s)
    if s.preview_listen:
        lines += _preview_frontend(s, the_plan)
    for shape in the_plan.shapes:
        svc = shape.service
        lines += [
            f"backend {svc}",
            "  balance roundrobin",
            # A sticky route tells a client which release it got; asking again by cookie goes
            # to that release's slot backend, never here.
            f'  http-response add-header Set-Cookie "hinotori-{svc}='
            f'%[srv_name,field(1,_)]; Path=/; HttpOnly; SameSite=Lax" '
            f"if {{ str({svc}),map({sticky_file(s)}) -m found }}",
            *_server_lines(the_plan.servers.get(svc, {})),
            "",
        ]
        for slot in range(1, shape.slots + 1):
            name = slot_backend(svc, slot)
            lines += [f"backend {name}", "  balance roundrobin",
                      *_server_lines(the_plan.servers.get(name, {})), ""]
        lines += _maintenance_backend(s, svc)
    lives = [n for shape in the_plan.shapes for n in live_flags(shape.service, shape.slots)]
    lines += flag_backend([*(n for names in switches.values() for n in names), *lives],
                          the_plan.flags or frozenset())
    status, why = (404, "no route for this host and path") if loaded else \
        (503, "no routing table loaded yet")
    lines += [f"backend {NO_ROUTE}",
              f'  http-request return status {status} content-type text/plain '
              f'string "{why}\\n"', ""]
    return "\n".join(lines)


def server_options(weight: int) -> str:
    """Options of a server line, in the cfg and in ``add server`` alike (dynamic servers do
    not inherit ``default-server``). ``pool-max-conn -1``: a server added at run time (every
    host a deploy brings) keeps no idle connection otherwise (HAProxy 2.6), so each request
    opened a new one and closed it with a reset: ~5x fewer requests a second to a Python
    app, and a traceback in its log per request. Idle pooled connections go after 1 s (5 s
    by default), because ``del server`` waits until a retired server has none left."""
    return f"weight {weight} pool-purge-delay 1s pool-max-conn -1"


def _server_lines(servers: dict[str, Server]) -> list[str]:
    return [f"  server {srv.name} {srv.address} {server_options(srv.weight)}"
            for srv in sorted(servers.values(), key=lambda x: x.name)]


def _route_acls(lines: list[str], i: int, shape: Shape) -> list[str]:
    """The ACLs that match route ``i``'s requests (Host, path prefix), appended to ``lines``;
    their names, all of which must hold (none: every request)."""
    conds = []
    if shape.hosts:
        lines.append(f"  acl r{i}_host req.hdr(host),field(1,:),lower -m str "
                     + " ".join(shape.hosts))
        conds.append(f"r{i}_host")
    if shape.prefix != "/":
        lines.append(f"  acl r{i}_path path_beg {shape.prefix}")
        conds.append(f"r{i}_path")
    return conds


def _preview_frontend(s: Settings, the_plan: Plan) -> list[str]:
    """The frontend on ``preview_listen``: the same rules, but a service with a held release
    (its map's ``preview`` key) answers with it; the others as on the main frontend."""
    lines = [f"frontend {PREVIEW_FRONTEND}", f"  bind {s.preview_listen}"]
    for i, shape in _ordered(the_plan.shapes):
        conds = _route_acls(lines, i, shape)
        m = map_file(s, shape.service)
        header = f"req.hdr(x-hinotori-release),lower,map({m})"
        held = f"str(preview),map({m})"
        up = not_in_maintenance(s, shape.service)
        lines += [
            f"  use_backend %[{header}] if " + " ".join(
                [*conds, "{ req.hdr(x-hinotori-release) -m found }", f"{{ {header} -m found }}",
                 up]),
            f"  use_backend %[{held}] if " + " ".join([*conds, f"{{ {held} -m found }}", up]),
            f"  use_backend %[str({shape.service}),map({live_file(s)},{shape.service})]"
            + (" if " + " ".join(conds) if conds else ""),
        ]
    return [*lines, f"  default_backend {NO_ROUTE}", ""]
