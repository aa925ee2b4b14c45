"""Keep the cyclic garbage collector's full collections short in long-running processes.

A generation-2 collection looks at every tracked object that is not frozen: in a router worker
serving 1,000 backends (~20k objects of start-up, ~10 per backend per route) or a controller,
5-30 ms with the event loop stopped, and one came inside a switch now and then (issue 17).
``settle`` collects once and then freezes (``gc.freeze``) everything that survived, so later
collections look only at what was made since. A process calls it when its long-lived objects
have just been made and a pause costs nothing anyone waits for: after start-up, and after a
``prepare`` compiled the routes of the next switch.

Frozen objects are freed by reference counting as ever; only a frozen object that later dies
inside a reference cycle waits, until the next full ``settle`` (which unfreezes first and
collects everything; at most every ``FULL_EVERY`` seconds). So that is bounded by what was
frozen, and the hot paths break their cycles when a connection ends (the upstream parser, the
client's), so a closed connection is freed at once.
"""

from __future__ import annotations

import gc
import time

FULL_EVERY = 600.0  # seconds: at most this often a settle looks at the frozen objects again

_full_at: float | None = None  # time.monotonic() of the last settle that unfroze first


def settle(*, full: bool | None = None) -> float:
    """Collect, then freeze what is left. Returns the milliseconds it took (a deliberate
    pause: call it where nobody waits).

    A full settle unfreezes first, so the collection sees every object (frozen garbage in a
    cycle is freed then): the first one, and one at least ``FULL_EVERY`` seconds after the
    last (or ``full=True``). Any other looks only at what was made since the last freeze: a
    prepare at 1,000 backends costs its new routes' scan, not the whole heap's again."""
    global _full_at
    began = time.perf_counter()
    now = time.monotonic()
    if full or (full is None and (_full_at is None or now - _full_at >= FULL_EVERY)):
        gc.unfreeze()
        _full_at = now
    gc.collect()
    gc.freeze()
    return (time.perf_counter() - began) * 1000


def describe() -> dict[str, object]:
    """What the collector did in this process: objects frozen, collections per generation."""
    return {"frozen": gc.get_freeze_count(),
            "collections": [g["collections"] for g in gc.get_stats()]}
