"""What every recipe step is: the ``Step`` interface and the context a step runs in.

A step is a frozen dataclass with these duties:

    to_json()       its canonical description, equal to the shape a spec writes (``{"run":
                    "make"}``); it feeds the recipe hash and the step's cache key
    describe()      a one-line label for progress and errors
    execute(ctx)    change the build directory, or raise BakeError naming the step
    from_dict(d)    build it from its dict form; ValueError for a malformed one (a pydantic
                    validator turns that into a spec error with file and key)

and, where they apply:

    inputs(src, l)  what the step reads from outside the tree, as manifest entries (a copy
                    step: its source in the build context). Their digest enters the cache key,
                    so an edit to a file only a late step copies reuses every earlier step
    environment(e)  the environment later run steps get (an env step adds to it)

Class attributes tell the builder how to treat a kind without knowing it: ``keys`` (every key
its dict form may have: the registry tells ``{run, env}`` from ``{env}`` by them),
``reads_context`` (a recipe holding such a step starts from an empty tree instead of the whole
context), ``changes_tree`` (false: the tree after it is the tree before it) and
``writes_in_place`` (the step may rewrite existing files in place, so files it is given must
not share storage with the build cache).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from hinotori.bake.context import BuildSource
    from hinotori.bake.manifest import ManifestEntry

_MODE = re.compile(r"(0o?)?[0-7]{3,4}")


@dataclass(frozen=True)
class StepContext:
    """Where and how a step runs. ``index`` is 1-based; ``log_dir`` is outside the build dir.

    ``source`` is the build context (for steps that read it). ``inputs`` is what
    ``Step.inputs`` returned when the cache key was made, or None without a cache: a step that
    reads the context checks that what it copies is still exactly that, so a file edited during
    the bake cannot be stored under a key made from its old content.
    """

    build_dir: Path
    env: Mapping[str, str]
    log_dir: Path
    index: int
    source: BuildSource | None = None
    inputs: Sequence[ManifestEntry] | None = None
    # Told (absolute path, sha256) of each file the step wrote and verified against ``inputs``,
    # so the cache's snapshot need not hash it again.
    on_verified: Callable[[str, str], None] | None = None

    def label(self, step: Step) -> str:
        return f"step {self.index} ({step.describe()})"


class Step(ABC):
    kind: ClassVar[str]
    keys: ClassVar[frozenset[str]]
    reads_context: ClassVar[bool] = False
    changes_tree: ClassVar[bool] = True
    writes_in_place: ClassVar[bool] = False

    @abstractmethod
    def to_json(self) -> dict[str, Any]: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def execute(self, ctx: StepContext) -> None:
        """Change the build directory, or raise BakeError saying why it could not."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step: ...

    def inputs(self, source: BuildSource, label: str) -> list[ManifestEntry] | None:
        """What the step reads from outside the build tree; None when nothing. ``label``
        names the step in errors (a missing or refused source)."""
        return None

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The environment of the run steps after this one."""
        return dict(env)

    @classmethod
    def check_keys(cls, d: Mapping[str, Any]) -> None:
        unknown = set(d) - cls.keys
        if unknown:
            raise ValueError(f"{cls.kind} step: unknown keys {sorted(unknown)} "
                             f"(it takes {', '.join(sorted(cls.keys))})")


def parse_mode(value: object, what: str = "mode") -> str:
    """A permission mode written as an octal string ("0644", "644", "0o644") -> "0644".

    An integer is refused: TOML has no octal integers without ``0o``, so ``mode = 644`` is
    almost always decimal 644 written by mistake.
    """
    if not isinstance(value, str) or not _MODE.fullmatch(value):
        raise ValueError(f"{what}: write a mode as an octal string, e.g. \"0644\" "
                         f"(got {value!r})")
    mode = int(value.replace("o", ""), 8)
    if mode & 0o7000:
        raise ValueError(f"{what}: setuid, setgid and sticky bits are not kept in an image "
                         f"(got {value!r})")
    return f"{mode:04o}"


def check_env(env: object, what: str = "env") -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise ValueError(f"{what}: expected a table of NAME = \"value\"")
    for k, v in env.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"{what}: {k!r} is not a valid environment variable name")
        if not isinstance(v, str):
            raise ValueError(f"{what}: the value of {k} must be a string")
    return dict(env)
