"""What HAProxy holds (servers, map entries) and the Runtime API commands that turn it into a plan.

``Held`` is HAProxy's runtime state as far as a plan cares: every server of every backend
(address, weight, in maintenance or not) and the entries of the map files. ``diff`` gives the
commands from one Held to a plan, in an order that never leaves a request without a server
(new servers added and made ready, release maps, weights, and only then the servers that left
put in maintenance), and the Held that those commands produce.

That second half is what makes a switch cost O(changed) instead of O(table): the router keeps
the Held its last apply produced, and the next apply diffs against it instead of reading
``show servers state`` and every ``show map`` back (at 1,000 backends, parsing them is most of
a switch). It is kept only while nobody else changed HAProxy (router.py checks that), and a
fresh read always gives the same commands (tests/unit/test_haproxy_converge.py). ``ahead``
is the part of a diff that can run before the switch (``prepare``): the servers of a backend
that nothing points to yet, so that the switch itself is a few map entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from hinotori.router.haproxy import flags
from hinotori.router.haproxy.config import Plan, server_options


@dataclass(frozen=True)
class Server:
    """One server as HAProxy holds it."""

    host: str
    port: str
    weight: str
    maint: bool  # forced maintenance: no new requests (retired, or added and not yet ready)


@dataclass
class Held:
    servers: dict[str, dict[str, Server]] = field(default_factory=dict)  # backend -> name ->
    maps: dict[Path, dict[str, str]] = field(default_factory=dict)  # map file -> key -> value
    # backend -> the plan's servers (that very dict) it was converged to and still holds: a
    # plan used again (plans.py) finds them so without comparing 1,000 servers one by one.
    converged: dict[str, object] = field(default_factory=dict, compare=False)

    def copy(self) -> Held:
        return Held({be: dict(s) for be, s in self.servers.items()},
                    {f: dict(e) for f, e in self.maps.items()}, dict(self.converged))


_MAINT = 0x01  # srv_admin_state bit: forced maintenance


def parse_servers_state(text: str) -> dict[str, dict[str, Server]]:
    """``show servers state`` -> {backend: {server: Server}}."""
    columns: dict[str, int] = {}
    out: dict[str, dict[str, Server]] = {}
    for line in text.splitlines():
        if line.startswith("# be_id"):
            columns = {name: i for i, name in enumerate(line[2:].split())}
            continue
        fields = line.split()
        if not columns or len(fields) < len(columns) or not fields[0].isdigit():
            continue
        c = columns
        out.setdefault(fields[c["be_name"]], {})[fields[c["srv_name"]]] = Server(
            fields[c["srv_addr"]], fields[c["srv_port"]], fields[c["srv_uweight"]],
            bool(int(fields[c["srv_admin_state"]]) & _MAINT))
    return out


def parse_map(text: str) -> dict[str, str]:
    """``show map <file>`` -> {key: value}."""
    entries = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("0x"):
            entries[parts[1]] = parts[2]
    return entries


@dataclass
class Changes:
    add: list[str] = field(default_factory=list)      # add server / make ready / readdress
    clean: list[str] = field(default_factory=list)    # maint, in a backend about to be pointed to
    maps: list[str] = field(default_factory=list)     # add map / set map / del map
    weights: list[str] = field(default_factory=list)  # set server weight
    retire: list[str] = field(default_factory=list)   # set server state maint
    lost: set[str] = field(default_factory=set)       # backend/server on machines seen down

    @property
    def commands(self) -> list[str]:
        return self.add + self.clean + self.maps + self.weights + self.retire


def diff(plan: Plan, maps: dict[Path, dict[str, str]], held: Held) -> tuple[Changes, Held]:
    """The commands that make HAProxy, holding ``held``, serve ``plan`` with map files
    ``maps`` (ordered: a file's entries are added before the next file's; removals run in
    the reverse order), and the Held they leave.

    A backend of ``plan.idle`` (nothing points to it) is left as it is, but for servers on a
    machine seen down. A backend a map points to now and did not before may hold servers of
    an earlier release, still ready: they are put in maintenance before the maps change."""
    out = Changes()
    # What changes is copied, not the rest: a switch touches a backend or two of thousands
    # of servers held (a warm release, retired ones not yet deleted; Held.copy() of 4,000
    # cost ~3 ms a switch). A backend's servers are copied on their first change (own).
    after = Held(dict(held.servers), dict(held.maps), dict(held.converged))
    owned: set[str] = set()

    def own(backend: str) -> dict[str, Server]:
        if backend not in owned:
            owned.add(backend)
            after.servers[backend] = dict(held.servers.get(backend, {}))
        return after.servers[backend]

    pointed = {v for m in held.maps.values() for v in m.values()}
    for backend, wanted in plan.servers.items():
        have = held.servers.get(backend, {})
        if backend in plan.idle:
            for name, row in have.items():
                if f"{row.host}:{row.port}" in plan.lost and not row.maint:
                    out.retire.append(f"set server {backend}/{name} state maint")
                    own(backend)[name] = replace(row, maint=True)
                    after.converged.pop(backend, None)
            continue
        if held.converged.get(backend) is wanted:
            continue
        after.converged[backend] = wanted  # (wanted is never changed: plans.py)
        retire = out.retire if backend in pointed else out.clean
        now = own(backend)
        for name, srv in wanted.items():
            row = have.get(name)
            target = f"{backend}/{name}"
            port, weight = str(srv.port), str(srv.weight)
            if row is None or row.maint or row.weight != weight or row.port != port or \
                    row.host != srv.host:
                now[name] = Server(srv.host, port, weight, False)
            if row is None:
                out.add += [f"add server {target} {srv.address} {server_options(srv.weight)}",
                            f"set server {target} state ready"]
                continue
            if (row.host, row.port) != (srv.host, port):
                out.add.append(f"set server {target} addr {srv.host} port {srv.port}")
            if row.maint:
                out.add.append(f"set server {target} state ready")
            if row.weight != weight:
                out.weights.append(f"set server {target} weight {srv.weight}")
        for name, row in have.items():
            if name not in wanted and not row.maint:
                # In flight requests finish; new ones go elsewhere. Deleted once idle.
                retire.append(f"set server {backend}/{name} state maint")
                now[name] = Server(row.host, row.port, row.weight, True)
    for backend, have in held.servers.items():  # backends the plan dropped: only after a reload
        if backend not in plan.servers and backend != flags.LIVE_FLAGS:
            for name, row in have.items():
                if not row.maint:
                    out.retire.append(f"set server {backend}/{name} state maint")
                    own(backend)[name] = replace(row, maint=True)
                    after.converged.pop(backend, None)
    dels: list[str] = []
    for f, entries in maps.items():
        have_map = held.maps.get(f, {})
        for key, value in entries.items():
            if key not in have_map:
                out.maps.append(f"add map {f} {key} {value}")
            elif have_map[key] != value:
                out.maps.append(f"set map {f} {key} {value}")
        dels[:0] = [f"del map {f} {key}" for key in have_map if key not in entries]
        after.maps[f] = dict(entries)
    if plan.flags is not None and flags.LIVE_FLAGS in held.servers:
        # Once the maps say the same (a switch on leads where the live map does), before a
        # map entry leaves (a switch off hands requests back to the map rules).
        switches = held.servers[flags.LIVE_FLAGS]
        ups, downs = flags.commands(plan.flags, {n: r.maint for n, r in switches.items()})
        out.maps += ups + downs
        after.servers[flags.LIVE_FLAGS] = {n: replace(r, maint=n not in plan.flags)
                                           for n, r in switches.items()}
    out.maps += dels
    # Servers on a machine seen down: nothing will come back from them, so their sessions
    # end now instead of draining (after the maint above, so a retry goes elsewhere).
    if plan.lost:  # (a scan of every server: only when there is something to find)
        out.lost = {f"{be}/{n}" for be, have in held.servers.items() for n, r in have.items()
                    if f"{r.host}:{r.port}" in plan.lost and be != flags.LIVE_FLAGS}
    return out, after


def ahead(plan: Plan, held: Held) -> tuple[Changes, Held]:
    """What can be done before the switch to ``plan``: the backends it points to that no map
    points to now (a new release's slot) get their servers added, made ready and weighted,
    and their other servers put in maintenance; no request reaches them until the switch's
    map entries do. The rest (maps, backends in use, lost servers) is the switch's."""
    pointed = frozenset(v for m in held.maps.values() for v in m.values())
    early = replace(plan, idle=plan.idle | (pointed & plan.servers.keys()), lost=frozenset(),
                    flags=None)
    return diff(early, held.maps, held)
