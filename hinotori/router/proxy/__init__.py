"""The built-in data plane: an asyncio HTTP/1.1 reverse proxy in worker processes of its own.

    routes.py   the routing table compiled for the hot path; per-backend counters
    relay.py    relaying requests (asyncio Protocols): keep-alive, pooling, retries, streaming
    worker.py   one worker process: listener (SO_REUSEPORT), control socket, last-table file
    client.py   BuiltinRouter: the controller's side (start/adopt, apply, stats, stop)
"""

from hinotori.router.proxy.client import BuiltinRouter

__all__ = ["BuiltinRouter"]
