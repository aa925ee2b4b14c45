"""The routers by kind: what ``[router] kind = "..."`` may say, and how each is built.

A new data plane is one package with a class that follows ``router.base.Router`` (including
``create(ctx)``) and one line in ``ROUTERS``. Entries are named lazily ("module:Class"): the
spec checks kinds against this table, and neither the CLI's start nor a strategy (which sees
routers only through the protocol) may import a data plane to do so.
"""

from __future__ import annotations

from hinotori.registry import Registry
from hinotori.router.base import Router, RouterContext

ROUTERS: Registry[type[Router]] = Registry("router kind", {
    "builtin": "hinotori.router.builtin:BuiltinRouter",
    "haproxy": "hinotori.router.haproxy:HaproxyRouter",
})


def build(ctx: RouterContext) -> Router:
    """The router of ``ctx.settings.kind`` (UnknownName, listing the known, if none)."""
    return ROUTERS[ctx.settings.kind].create(ctx)
