"""Load hinotori.toml into the Spec, turning every problem into a SpecError with file:line: key."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from hinotori.errors import SpecError
from hinotori.spec.locate import key_lines, line_of
from hinotori.spec.schema import Spec

SPEC_FILE = "hinotori.toml"


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec and where it came from (paths in it are relative to ``root``)."""

    spec: Spec
    path: Path

    @property
    def root(self) -> Path:
        return self.path.parent


def load_spec(path: Path | str) -> LoadedSpec:
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if not path.exists():
        raise SpecError("no spec file here", file=str(path),
                        hint="run `hinotori init` to write a starter spec, or pass --spec PATH")
    text = path.read_text(encoding="utf-8")
    return LoadedSpec(spec=parse_spec(text, file=str(path)), path=path.resolve())


def parse_spec(text: str, *, file: str = SPEC_FILE) -> Spec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        message = re.sub(r"\s*\(at line.*\)", "", str(e))
        raise SpecError(f"TOML syntax: {message}", file=file,
                        line=int(m.group(1)) if m else None) from None
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        raise _spec_error(e, text, file, data) from None


def _spec_error(error: ValidationError, text: str, file: str, data: dict) -> SpecError:
    """The first problem, located; the others listed after it so one run shows them all."""
    lines = key_lines(text)
    problems = []
    for err in error.errors():
        loc = _toml_path(err["loc"], data)
        key = ".".join(str(p) for p in loc) or None
        message = _message(err)
        problems.append((line_of(lines, loc), key, message))
    line, key, message = problems[0]
    more = [f"{file}:{ln}: {k}: {m}" if ln else f"{file}: {k}: {m}"
            for ln, k, m in problems[1:]]
    hint = ("also: " + "; ".join(more)) if more else None
    return SpecError(message, file=file, line=line, key=key, hint=hint)


def _toml_path(loc: tuple[str | int, ...], data: object) -> list[str | int]:
    """The TOML key path of a pydantic error location: drop what pydantic adds that the file
    does not say: union-branch tags ("str", "list[str]") and the discriminator of a tagged
    union (the value of its `kind` key, e.g. "canary")."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in ("str", "list", "int", "float",
                                                               "bool")):
            continue
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return path


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling; see the spec reference in the README)"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")
