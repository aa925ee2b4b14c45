"""Starter checks from a running host, like goss autoadd (`hinotori checks generate`).

The evaluator's ``survey`` mode reports what the host has (files of its view, its listening
sockets and processes); this module turns that into ``[[services.NAME.checks]]`` TOML that the
same host passes:

- its health endpoint (from the spec), as an ``http`` check;
- every socket it listens on: the one on the host's own port as ``port = "$PORT"`` (each host
  gets another port), any other by number;
- its processes, by name, with their count;
- its files and directories with their modes, and the sha256 of a few key files: those the
  command names (``app.py``), then the smallest other top-level files;
- the port variable in its env;
- the kernel settings it has changed (``kernel_param``): those the service sets (its
  ``sysctls`` and its image's sysctl steps), and those whose value differs from the kernel's
  own default for a fresh namespace. The defaults are a baked table
  (``hinotori.sysctls.KERNEL_DEFAULTS``) rather than a fresh container's values: a process
  host has no fresh counterpart to ask (it shares the machine's kernel), and booting a second
  container would double the cost of ``generate`` for a few numbers that are the kernel's
  constants. The table leaves out settings a namespace copies from the machine or the kernel
  scales with memory, so what is proposed is a change someone made, never noise of this
  machine. Engines change some too (Docker sets ``ip_unprivileged_port_start`` to 0): proposed
  as well, titled with the default, because an app may rely on them.

The output is validated with the check models before it is returned, so what is written always
loads. It is a start: people should delete what does not matter and add what does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hinotori.model import HealthCheck, Host
from hinotori.providers.base import Provider
from hinotori.sysctls import KERNEL_DEFAULTS
from hinotori.verify.checks import parse_checks
from hinotori.verify.runner import build_plan, run_evaluator

MAX_FILES = 50  # file and directory checks at most; the rest is summarised in a comment
MAX_HASHED = 5


async def survey_host(provider: Provider, host: Host, *, python: str | None = None,
                      port_env: str = "PORT", files_limit: int = 500,
                      sysctls: Sequence[str] = ()) -> dict[str, Any]:
    """What the host has (the evaluator's survey); ``port`` is the value of ``port_env``;
    ``sysctls`` holds the value of each of ``sysctls`` and of the kernel defaults' names."""
    names = sorted({*KERNEL_DEFAULTS, *sysctls})
    plan = build_plan(provider, host, [], mode="survey", files_limit=files_limit, port_env=port_env,
                      sysctls=names)
    return await run_evaluator(provider, host, plan, python=python, timeout=60.0)


def starter_checks(survey: dict[str, Any], *, port: str | None, port_env: str,
                   health: HealthCheck | None, command: Sequence[str],
                   declared: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Check tables (as dicts) that the surveyed host passes. ``port`` is the value of
    ``port_env`` in that host; ``declared`` the sysctls its service sets."""
    checks: list[dict[str, Any]] = []
    if health is not None and health.path:
        checks.append({"http": health.path, "status": health.status})
    seen: set[tuple[str, int]] = set()
    for s in sorted(survey.get("sockets", ()), key=lambda s: (s["protocol"], s["port"])):
        key = (s["protocol"], s["port"])
        if key in seen:
            continue  # the same port on IPv4 and IPv6
        seen.add(key)
        target: str | int = f"${port_env}" if str(s["port"]) == port else s["port"]
        check: dict[str, Any] = {"port": target, "listening": True}
        if s["protocol"] != "tcp":
            check["protocol"] = s["protocol"]
        checks.append(check)
    counts: dict[str, int] = {}
    for p in survey.get("processes", ()):
        counts[p["comm"]] = counts.get(p["comm"], 0) + 1
    checks += [{"process": name, "running": True, "count": n} for name, n in sorted(counts.items())]
    if port is not None:
        checks.append({"env": port_env, "value": r"^\d+$"})
    checks += kernel_checks(survey.get("sysctls") or {}, declared or {})
    checks += _file_checks(survey.get("files", ()), command)
    parse_checks(checks)  # what we write must load
    return checks


def kernel_checks(values: Mapping[str, str | None],
                  declared: Mapping[str, str]) -> list[dict[str, Any]]:
    """kernel_param checks for the settings the host has changed (see the module docstring),
    each with the value the host has and a title that says why it was proposed."""
    out: list[dict[str, Any]] = []
    for name, value in sorted(values.items()):
        if value is None:
            continue  # not on this kernel
        if name in declared:
            why = "set by the service"
        elif name in KERNEL_DEFAULTS and value != KERNEL_DEFAULTS[name]:
            why = f"kernel default {KERNEL_DEFAULTS[name]}"
        else:
            continue
        out.append({"kernel_param": name, "value": value, "title": f"{name} = {value} ({why})"})
    return out


def _file_checks(files: Sequence[dict[str, Any]], command: Sequence[str]) -> list[dict[str, Any]]:
    named = {a.removeprefix("./") for a in command}
    regular = [f for f in files if f["type"] == "file" and "sha256" in f]
    key = [f for f in regular if f["path"] in named]
    key += sorted((f for f in regular if "/" not in f["path"] and f not in key),
                  key=lambda f: (f["size"], f["path"]))
    hashed = {f["path"] for f in key[:MAX_HASHED]}
    out: list[dict[str, Any]] = []
    for f in files[:MAX_FILES]:
        if f["type"] == "directory":
            out.append({"directory": f["path"], "mode": f["mode"]})
        elif f["type"] in ("file", "symlink"):
            check = {"file": f["path"], "type": f["type"], "mode": f["mode"]}
            if f["path"] in hashed:
                check["sha256"] = f["sha256"]
            out.append(check)
    for f in files[MAX_FILES:]:
        if f["path"] in hashed:
            out.append({"file": f["path"], "mode": f["mode"], "sha256": f["sha256"]})
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def to_toml(service: str, checks: Sequence[dict[str, Any]], *, header: str = "",
            more_files: int = 0) -> str:
    """``[[services.SERVICE.checks]]`` tables, resource key first."""
    lines = [f"# {line}" for line in header.splitlines()]
    if more_files:
        lines.append(f"# ({more_files} more files and directories not listed)")
    for check in checks:
        lines += ["", f"[[services.{_toml_key(service)}.checks]]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in check.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
