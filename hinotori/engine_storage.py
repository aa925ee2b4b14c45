"""Asking a container engine again when it lost a race in its own image store.

Podman reads every image of its store to answer about one: to name an image's parent (an
inspect, a history) or to check its build cache (buildah). An image removed at that moment by
someone else (a prune, another project's gc) fails the call with "image not known" or "layer not
known" about that *other* image, with status 500. The same question asked again succeeds. An
image that is really missing is a 404 (``docker.errors.NotFound``), never retried here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

STORAGE_RACE = ("layer not known", "image not known")
ATTEMPTS = 4
PAUSE = 0.05  # seconds, times the attempt number: the remover is done within moments


def lost_storage_race(engine_said: str) -> bool:
    """Whether the engine's error text is the store race rather than a real failure."""
    return any(race in engine_said for race in STORAGE_RACE)


def retrying(call: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """``call()``, asked again (up to ``attempts`` in all) while the engine answers with its
    image store race; any other error, and a 404, is raised at once."""
    import docker.errors

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as e:
            if attempt == attempts or not lost_storage_race(str(e.explanation or e)):
                raise
            time.sleep(PAUSE * attempt)
    raise AssertionError("unreachable")


def inspect_image(client: object, ref: str) -> dict:
    """The engine's inspect of image ``ref``, through the store race (NotFound if missing)."""
    api = client.api  # type: ignore[attr-defined]
    return retrying(lambda: api.inspect_image(ref))
