"""Load hinotori.toml into the Spec, turning every problem into a SpecError with file:line: key.

Whatever the file holds, loading ends in a Spec or a SpecError (tests/unit/test_spec_hostile.py
fuzzes this): reading refuses what is not a spec file (read.py), nesting is bounded before
tomllib recurses, values TOML cannot hold are refused (integers outside 64 bits, NUL in a
string), and pydantic's errors are located and worded for a TOML author.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from hinotori.errors import SpecError
from hinotori.providers.registry import runs_os_image
from hinotori.spec import environments
from hinotori.spec.jobs import check_jobs
from hinotori.spec.locate import key_lines, line_of, nesting_problem
from hinotori.spec.messages import problem_text, toml_path
from hinotori.spec.read import SPEC_FILE, read_spec_text
from hinotori.spec.schema import Spec

MAX_NESTING = 100  # arrays and inline tables within each other; a spec needs about 4
MAX_LISTED = 10  # further problems listed after the first
_INT64 = (-(1 << 63), (1 << 63) - 1)  # TOML integers are 64-bit signed


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec and where it came from (paths in it are relative to ``root``).
    ``warnings``: things allowed but probably unintended, for the CLI to print once.
    ``environment``: the [environments.NAME] overlay merged into ``spec`` (None: the spec as
    written at the top level)."""

    spec: Spec
    path: Path
    warnings: tuple[str, ...] = ()
    environment: str | None = None

    @property
    def environments(self) -> list[str]:
        """The environments the spec declares, sorted."""
        return sorted(self.spec.environments)

    @property
    def root(self) -> Path:
        return self.path.parent


def load_spec(path: Path | str, environment: str | None = None) -> LoadedSpec:
    """The spec at ``path`` with ``environment``'s overlay merged in (every environment's
    merged spec is validated whichever is chosen: a broken overlay is an error for all)."""
    path = Path(path)
    # A project directory holds hinotori.toml; a directory named like a spec file is reported
    # as what it is rather than searched for a spec inside.
    if path.is_dir() and (path.suffix != ".toml" or (path / SPEC_FILE).exists()):
        path = path / SPEC_FILE
    text = read_spec_text(path)
    spec, relocate = _parse(text, str(path), environment)
    return LoadedSpec(spec=spec, path=path.resolve(), environment=environment,
                      warnings=tuple(spec_warnings(spec, text, str(path), relocate)))


Relocate = Callable[[tuple], tuple]


def _same(path: tuple) -> tuple:
    return path


def parse_spec(text: str, *, file: str = SPEC_FILE, environment: str | None = None) -> Spec:
    """The Spec in ``text`` (with ``environment``'s overlay merged in); ``file`` names it in
    errors, and its directory is the project root that image contexts must stay inside."""
    return _parse(text, file, environment)[0]


def _parse(text: str, file: str, environment: str | None) -> tuple[Spec, Relocate]:
    deep = nesting_problem(text, MAX_NESTING)
    if deep is not None:
        raise SpecError(deep[1], file=file, line=deep[0],
                        hint="a spec needs a few levels at most")
    data = _toml(text, file)
    _check_values(data, text, file)
    if not data:
        raise SpecError("the spec is empty", file=file,
                        hint="declare at least one service: a [services.NAME] table with a "
                        "command; `hinotori init` writes a starter spec")
    lines: list[dict] = []

    def where(path: tuple) -> int | None:
        if not lines:
            lines.append(key_lines(text))
        return line_of(lines[0], path)

    base_data, overlays = environments.split(data, file, where)
    chosen = base = _validate(base_data, text, file, _same)
    environments.check_settings(base.environments, file, where)
    chosen_relocate: Relocate = _same
    for name, overlay in overlays.items():
        origin = (environments.KEY, name)
        merged, provenance = environments.merge(base_data, overlay, origin)
        relocate = environments.relocator(provenance, origin)
        spec = _validate(merged, text, file, relocate)
        if name == environment:
            chosen, chosen_relocate = spec, relocate
    if environment is not None and environment not in overlays:
        raise environments.unknown_environment(environment, list(overlays), file)
    return chosen, chosen_relocate


def _validate(data: dict, text: str, file: str, relocate: Relocate) -> Spec:
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise _spec_error(e, text, file, data, relocate) from None
    _check_contexts(spec, text, file, relocate)
    _check_machines(spec, text, file, relocate)
    check_jobs(spec.jobs, set(spec.services), text, file, relocate)
    return spec


def _toml(text: str, file: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message, _, where = str(e).partition(" (at line ")
        line = where.split(",")[0]
        raise SpecError(f"TOML syntax: {message}", file=file,
                        line=int(line) if line.isdigit() else None) from None
    except ValueError:  # an integer of more than 4300 digits (int's conversion limit)
        raise SpecError("a number too large to read", file=file,
                        hint="TOML integers are 64-bit") from None
    except RecursionError:  # nesting_line bounds brackets; this is the last resort
        raise SpecError("values nested too deeply to read", file=file) from None


def _check_values(data: dict, text: str, file: str) -> None:
    """Refuse values no key of the schema can use, whatever the key: integers outside TOML's
    64-bit range and NUL characters (no path, argument or environment value can hold one).
    Iterative: dotted keys can nest tables as deep as the file is long."""
    stack: list[tuple[object, tuple | None]] = [(data, None)]
    while stack:
        node, link = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)  # type: ignore[union-attr]
        for key, value in items:
            here = (link, key)
            problem = None
            if isinstance(key, str) and "\0" in key:
                problem = "a key cannot contain NUL (\\u0000)"
            elif isinstance(value, str) and "\0" in value:
                problem = ("a string cannot contain NUL (\\u0000): no path, argument or "
                           "environment value can hold one")
            elif (isinstance(value, int) and not isinstance(value, bool)
                  and not _INT64[0] <= value <= _INT64[1]):
                digits = str(value)
                shown = digits if len(digits) <= 24 else f"{digits[:20]}… ({len(digits)} digits)"
                problem = f"{shown} is outside TOML's 64-bit integer range"
            if problem:
                path = _unlink(here)
                raise SpecError(problem, file=file, line=line_of(key_lines(text), path),
                                key=".".join(str(p) for p in path[:12]))
            if isinstance(value, dict | list):
                stack.append((value, here))


def _unlink(link: tuple | None) -> list[str | int]:
    path: list[str | int] = []
    while link is not None:
        link, key = link
        path.append(key)
    return path[::-1]


def _check_contexts(spec: Spec, text: str, file: str, relocate: Relocate) -> None:
    root = Path(file).parent
    for name, svc in spec.services.items():
        outside = svc.image.context_outside(root)
        if outside is not None:
            path = list(relocate(("services", name, "image", "context")))
            raise SpecError(
                f"{svc.image.context!r} is outside the project ({outside}); its files would "
                "be copied into the image", file=file, line=line_of(key_lines(text), path),
                key=".".join(path), hint="if that is meant, set allow_outside_context = true "
                f"in [services.{name}.image]")


def _check_machines(spec: Spec, text: str, file: str, relocate: Relocate) -> None:
    """A service's `machines` name declared [machines.NAME] tables, and only a provider that
    runs containers can use them."""
    for name, svc in spec.services.items():
        if not svc.machines:
            continue
        path = list(relocate(("services", name, "machines")))
        where = {"file": file, "line": line_of(key_lines(text), path), "key": ".".join(path)}
        unknown = sorted(set(svc.machines) - set(spec.machines))
        if unknown:
            raise SpecError(f"no [machines.NAME] table for {', '.join(unknown)} (declared: "
                            f"{', '.join(sorted(spec.machines)) or 'none'})", **where,
                            hint="declare each machine with its address, ssh and engine")
        if not runs_os_image(svc.provider):
            raise SpecError(f"machines run containers, not {svc.provider!r} hosts", **where,
                            hint='set provider = "container" and an [image] os table')


def spec_warnings(spec: Spec, text: str, file: str, relocate: Relocate = _same) -> list[str]:
    """What the spec allows but probably does not mean, as `file:line: key: text` lines."""
    out = []
    listen = spec.controller.listen
    if not _loopback(listen.rpartition(":")[0]):
        path = relocate(("controller", "listen"))
        line = line_of(key_lines(text), path)
        key = ".".join(map(str, path))
        out.append(f"{file}:{line}: {key}: {listen} is not a loopback address: the"
                   " controller's API (plain HTTP, every call needs the token in "
                   ".hinotori/token) is reachable from other machines; use 127.0.0.1:PORT "
                   "unless that is meant")
    return out


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _spec_error(error: ValidationError, text: str, file: str, data: dict,
                relocate: Relocate) -> SpecError:
    """The first problem, located; the others listed after it so one run shows them all.
    Errors at one key (each branch of a union) are merged into one problem."""
    lines = key_lines(text)
    problems: list[tuple[int | None, str | None, list[dict]]] = []
    for err in error.errors():
        loc = list(relocate(tuple(toml_path(err["loc"], data))))
        key = ".".join(str(p) for p in loc) or None
        if problems and problems[-1][1] == key:
            problems[-1][2].append(err)
        else:
            problems.append((line_of(lines, loc), key, [err]))
    texts = [(line, key, problem_text(errs)) for line, key, errs in problems]
    line, key, message = texts[0]
    more = [f"{file}:{ln}: {k}: {m}" if ln else f"{file}: {k}: {m}"
            for ln, k, m in texts[1:MAX_LISTED + 1]]
    if len(texts) > MAX_LISTED + 1:
        more.append(f"and {len(texts) - MAX_LISTED - 1} more")
    hint = ("also: " + "; ".join(more)) if more else None
    return SpecError(message, file=file, line=line, key=key, hint=hint)
