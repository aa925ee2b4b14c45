"""State store: releases, hosts, deployments and the append-only event log."""

from hinotori.store.sqlite import Store, default_actor

__all__ = ["Store", "default_actor"]
