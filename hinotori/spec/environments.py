"""`[environments.NAME]`: overlays of the spec, merged key by key before validation.

An environment's tables mirror the top-level ones and override them: tables merge, every other
value (a scalar, an array) replaces the one below it. The merge runs on the raw TOML data,
before the schema sees it, so every key the schema has, now or later, can be overridden
without code here. Besides the mirrored tables an environment holds only its own settings
(``promote_only``, ``promote_from``, ``soak``).

Errors in a merged spec are reported where the overlay wrote the value: the merge records, for
every key an overlay sets, the overlay's own path (``environments.production.services.web.
replicas``); a problem at a path the overlay never touched (the base alone is valid, so the
overlay caused it) points at the environment's table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from pydantic import Field

from hinotori.errors import SpecError
from hinotori.spec.base import Duration, Name, Strict

KEY = "environments"
SETTINGS = ("promote_only", "promote_from", "soak")

TomlPath = tuple[str | int, ...]


class EnvironmentSpec(Strict):
    """An environment's own settings (its overlay tables are merged into the spec instead)."""

    # Only promoted images deploy here: `deploy --from promote_from` of an image that served
    # there for at least `soak` without a failed deployment or a rollback.
    promote_only: bool = False
    promote_from: Name | None = None
    soak: Duration = Field(0.0, ge=0)


def split(data: dict[str, Any], file: str,
          where: Callable[[TomlPath], int | None]) -> tuple[dict[str, Any], dict[str, dict]]:
    """(the data with each environment reduced to its settings, each environment's overlay).
    Shapes the schema cannot report (an environment that is not a table) are refused here."""
    envs = data.get(KEY)
    if envs is None:
        return data, {}
    if not isinstance(envs, dict):
        raise SpecError("expected a table of [environments.NAME] tables", file=file,
                        line=where((KEY,)), key=KEY)
    settings: dict[str, Any] = {}
    overlays: dict[str, dict] = {}
    for name, table in envs.items():
        if not isinstance(table, dict):
            raise SpecError("expected a table ([environments.NAME])", file=file,
                            line=where((KEY, name)), key=f"{KEY}.{name}")
        if KEY in table:
            raise SpecError("an environment cannot declare environments", file=file,
                            line=where((KEY, name, KEY)), key=f"{KEY}.{name}.{KEY}")
        settings[name] = {k: v for k, v in table.items() if k in SETTINGS}
        overlays[name] = {k: v for k, v in table.items() if k not in SETTINGS}
    return {**data, KEY: settings}, overlays


def merge(base: dict[str, Any], overlay: dict[str, Any], origin: TomlPath
          ) -> tuple[dict[str, Any], dict[TomlPath, TomlPath]]:
    """``overlay`` merged over ``base`` (neither is changed), and the provenance of what the
    overlay set: merged path -> the overlay's path (``origin`` + the same keys)."""
    merged = copy.deepcopy(base)
    provenance: dict[TomlPath, TomlPath] = {}

    def into(target: dict[str, Any], over: dict[str, Any], path: TomlPath) -> None:
        for key, value in over.items():
            here = (*path, key)
            provenance[here] = (*origin, *here)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                into(target[key], value, here)
            else:
                target[key] = copy.deepcopy(value)

    into(merged, overlay, ())
    return merged, provenance


def relocator(provenance: dict[TomlPath, TomlPath], origin: TomlPath
              ) -> Callable[[TomlPath], TomlPath]:
    """Maps a path of the merged spec to where the overlay wrote it (its longest prefix the
    overlay set, then the rest of the path); a path it never touched maps to its table."""
    def relocate(path: TomlPath) -> TomlPath:
        path = tuple(path)
        for end in range(len(path), 0, -1):
            found = provenance.get(path[:end])
            if found is not None:
                return (*found, *path[end:])
        return origin
    return relocate


def check_settings(settings: dict[str, EnvironmentSpec], file: str,
                   where: Callable[[TomlPath], int | None]) -> None:
    """What one environment's settings say about the others."""
    for name, env in settings.items():
        path = (KEY, name, "promote_from")
        located = {"file": file, "line": where(path), "key": ".".join(path)}
        if env.promote_from is not None:
            if env.promote_from == name:
                raise SpecError("an environment cannot promote from itself", **located,
                                hint="name the environment its images come from")
            if env.promote_from not in settings:
                raise SpecError(f"no environment {env.promote_from!r} (declared: "
                                f"{', '.join(sorted(settings))})", **located)
        if env.promote_only and env.promote_from is None:
            raise SpecError("promote_only needs promote_from: the environment its images come "
                            "from", **located, hint='e.g. promote_from = "staging"')


def unknown_environment(name: str, declared: list[str], file: str) -> SpecError:
    if not declared:
        return SpecError(f"--environment {name}: this spec declares no environments",
                         file=file, hint="declare [environments.NAME] tables, or leave "
                         "--environment (and HINOTORI_ENVIRONMENT) unset")
    return SpecError(f"no environment {name!r} (declared: {', '.join(sorted(declared))})",
                     file=file, key="--environment")


def environment_needed(declared: list[str], file: str) -> SpecError:
    return SpecError(f"this spec declares environments ({', '.join(sorted(declared))}): choose "
                     "one with --environment/-E NAME or HINOTORI_ENVIRONMENT", file=file)
