"""The built-in router: an asyncio HTTP/1.1 reverse proxy (the data plane) and its supervisor.

Two halves, in different processes::

    controller process                        worker process(es), detached, SO_REUSEPORT
    ------------------                        -------------------------------------------
    BuiltinRouter (supervisor.py)   -- JSON lines over router-{i}.sock -->  control.py
      start/adopt, apply, current,                                        |
      stats, stop; client.py keeps                                        v
      one control connection per                  Worker (worker.py): live CompiledTable,
      worker open                                 pools, counters, 1 s sweep, drain
                                                         |
                     clients --> ClientProtocol (downstream.py) --> Exchange (exchange.py)
                                 |    (the fast lane, lane.py)  --> UpstreamProtocol + Pool
                                 +-----------------------------------> (upstream.py) --> backends

Modules, one job each:

    __main__.py    ``python -m hinotori.router.builtin``: arguments, uvloop, exit codes
    worker.py      shared state of one worker; table swap and table file; life cycle
    listener.py    listen address parsing; SO_REUSEPORT socket; "port in use by a stranger"
    control.py     the control channel server (ping, apply, get, stats, shutdown)
    table.py       routing table compiled for the hot path; matching; weighted picks; counters
    downstream.py  client connections: request parsing (httptools), ordering, flow control
    exchange.py    one proxied request: backend choice, connect, safe retries, relaying
    lane.py        the fast lane: a repeated plain request with no Exchange, handed to one
                   the moment anything else happens
    whole.py       whole plain requests and responses recognised without the parser
    upstream.py    backend connections: response parsing; keep-alive pool per address
    http1.py       HTTP/1.1 pieces: hop-by-hop filtering, heads, chunks, canned responses
    prepared.py    routes compiled ahead of their switch, by the controller's route ids
    client.py      the controller's persistent control connection to one worker
    sent.py        the controller's route ids, and which routes each worker holds
    supervisor.py  BuiltinRouter: spawn or adopt workers, fan out control ops, stop them

Why it is built this way:

* Speed: asyncio Protocols with httptools callbacks, no coroutine per request; request and
  response bytes are batched per read into one write; routing is one dict lookup and an index
  increment; counters are plain attributes; timeouts come from a one-second sweep, not timers.
  The common case (a client asking the same plain head again, a whole plain response) takes
  the fast lane: two Python calls per request, its route remembered per connection and live
  table, its 2xx latencies counted in a batch (~14k instructions per request, was 41k).
* Switches: a table is compiled once, then swapped by one reference assignment, so each request
  sees one whole table, and a keep-alive client's next request already uses the new one. Pools
  of backends that left the table are retired: idle connections close, busy ones finish (drain).
  A route is sent and compiled once per worker (``prepare`` while new hosts warm, or the first
  switch that needs it); a switch to routes a worker holds is a line of route ids (prepared.py).
* Safety: a request is re-sent only when it cannot have reached an application, or when it is
  idempotent and its bytes were kept; everything else gets a 502 (see exchange.py).
* Independence: workers are detached processes that keep serving when the controller dies and
  reload their last table from disk when they restart; a new controller adopts them by socket.
"""

from hinotori.router.builtin.supervisor import BuiltinRouter

__all__ = ["BuiltinRouter"]
