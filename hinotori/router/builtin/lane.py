"""The fast lane: a plain request proxied with no ``Exchange``, its state on the connections.

Most requests a worker sees are a client asking the same plain head again (whole.py) of a route
with nothing to decide per request (one release, no maintenance, no preview), and a pooled
connection to the backend the schedule names is idle. Then ``ClientProtocol.data_received``
picks the backend and writes the head, and ``UpstreamProtocol.data_received`` relays a whole
plain response, counts it and pools the connection: two Python calls per request, where an
exchange took fifteen and an object. A client connection remembers its last plain head (what
it makes for the backend) and, per live table, the route it matched (``resolve``).

Anything else, at any moment, goes to an ``Exchange``: a request the lane cannot start is
served by one from the start (``serve``), and a request in the lane is handed to one
(``promote``) the moment anything but its whole plain response happens: more bytes from the
client, its EOF or loss, flow control on either side, a response the parser must read, the
backend connection lost, the worker's sweep finding the backend slow. The exchange then has
exactly the state it would have had from the start (the head sent on a reused pooled
connection, replayable), so retries, timeouts, drains and refusals are its own, unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hinotori.router.builtin.exchange import REPLAY_LIMIT, Exchange

if TYPE_CHECKING:
    from hinotori.router.builtin.downstream import ClientProtocol
    from hinotori.router.builtin.table import CompiledRoute, Target
    from hinotori.router.builtin.whole import Plain


def resolve(client: ClientProtocol) -> None:
    """The route of the client's remembered plain request in the live table, if the lane may
    serve it: ``Exchange.begin``'s questions, answered once per head and table."""
    worker = client.worker
    table = client.plain_table = worker.table
    route = None
    plain = client.plain
    if (table is not None and plain.method != b"HEAD"  # a HEAD response is the parser's
            and not (worker.redirect_http and client.scheme == b"http")):
        found = table.match(plain.host, plain.path)
        if (found is not None and found.maintenance is None and found.turn is not None
                and not found.sticky and found.canary is None and found.preview is None):
            route = found
    client.plain_route = route


def _exchange(client: ClientProtocol, plain: Plain, head: bytes) -> Exchange:
    client.lane = False
    ex = client.current = Exchange(client)
    ex.method, ex.url, ex.path, ex.host, ex.cookie, ex.accept, ex.release_hint, _ = plain
    ex.replay_size = len(head)
    if len(head) <= REPLAY_LIMIT:  # every method that qualifies is idempotent
        ex.replay = [head]
    ex.request_complete = True
    return ex


def serve(client: ClientProtocol, plain: Plain, head: bytes, route: CompiledRoute | None,
          target: Target | None) -> None:
    """A plain request the lane does not take: an exchange from the start (``target``: the
    backend the lane picked already, on ``route``)."""
    ex = _exchange(client, plain, head)
    ex.pending.append(head)
    ex.pending_size = len(head)
    if target is None:
        ex.begin()
    else:
        ex.go(route, target)  # type: ignore[arg-type]


def promote(client: ClientProtocol) -> Exchange:
    """The client's request in the lane becomes its current exchange, bound to the backend
    connection carrying it as ``Exchange._attach`` binds one (its head already sent)."""
    conn = client.up
    assert conn is not None
    client.up = None
    conn.client = None
    ex = _exchange(client, client.plain, client.plain_head)
    ex.route = client.plain_route
    ex.target = client.target
    ex.started = client.started
    ex.attempts = 1
    ex.upstream = conn
    conn.exchange = ex
    conn.reused = True
    conn.got_bytes = conn.head_done = conn.skip_body = conn.eof_body = False
    conn.last_active = client.last_active  # when the head went (the client's last bytes)
    return ex
