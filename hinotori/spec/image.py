"""The `[services.NAME.image]` table: build context, recipe steps and the optional OS base."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from hinotori.bake.aptstep import check_package
from hinotori.bake.paths import relative
from hinotori.bake.stepbase import parse_mode
from hinotori.bake.steps import Step, step_from_dict, step_kind
from hinotori.spec.base import EnvName, Strict
from hinotori.sysctls import check_name, check_value


def _step_path(what: str, *, allow_root: bool = False) -> AfterValidator:
    """A path in a step: relative, no '..' (hinotori.bake.paths); kept as written."""
    def check(value: str) -> str:
        relative(value, what, allow_root=allow_root)
        return value
    return AfterValidator(check)


StepMode = Annotated[str, BeforeValidator(parse_mode)]


class RunStepSpec(Strict):
    """{ run = "shell line" | ["argv", ...], env = { K = "V" } }"""

    run: str | list[str] = Field(min_length=1)
    env: dict[EnvName, str] = {}


class EnvStepSpec(Strict):
    """{ env = { K = "V" } }: environment for every later run step."""

    env: dict[EnvName, str] = Field(min_length=1)


class CopyStepSpec(Strict):
    """{ copy = "src", to = "dest", mode = "0644" }: context path -> image path."""

    # Named by its alias: a field called `copy` would shadow BaseModel.copy.
    source: Annotated[str, _step_path("copy", allow_root=True), Field(alias="copy")]
    to: Annotated[str, _step_path("to", allow_root=True)]
    mode: StepMode | None = None


class FileStepSpec(Strict):
    """{ file = "path", content = "...", mode = "0644" }"""

    file: Annotated[str, _step_path("file")]
    content: str
    mode: StepMode = "0644"


class RemoveStepSpec(Strict):
    """{ remove = "path" }"""

    remove: Annotated[str, _step_path("remove")]


DebianPackage = Annotated[str, AfterValidator(check_package)]


class AptStepSpec(Strict):
    """{ apt = ["curl", ...] }: Debian packages, one cached layer (OS images only)."""

    apt: list[DebianPackage] = Field(min_length=1)


class SysctlStepSpec(Strict):
    """{ sysctl = { "net.core.somaxconn" = "1024" }, priority = 60 }: kernel settings in
    /etc/sysctl.d/NN-hinotori.conf (OS images only; hinotori.bake.sysctlstep)."""

    sysctl: dict[Annotated[str, AfterValidator(check_name)],
                 Annotated[str, BeforeValidator(check_value)]] = Field(min_length=1)
    priority: int = Field(60, ge=0, le=99)


_STEP_SPECS: dict[type[BaseModel], str] = {RunStepSpec: "run", EnvStepSpec: "env",
                                           CopyStepSpec: "copy", FileStepSpec: "file",
                                           RemoveStepSpec: "remove", AptStepSpec: "apt",
                                           SysctlStepSpec: "sysctl"}


def _step_tag(value: object) -> str | None:
    # Tags are bracketed so the spec loader drops them from error locations (see load.py).
    if isinstance(value, dict):
        kind = step_kind(value)
        return f"step[{kind}]" if kind else None
    kind = _STEP_SPECS.get(type(value))  # type: ignore[arg-type]
    return f"step[{kind}]" if kind else None


def _one_step_kind(value: object) -> object:
    if isinstance(value, dict) and step_kind(value) is None:
        raise ValueError("a step is a table with exactly one of run, env, copy, file, remove, "
                         "apt, sysctl (env may also go with run), e.g. { copy = \"src\", "
                         "to = \"app/\" }")
    return value


StepSpec = Annotated[
    Annotated[RunStepSpec, Tag("step[run]")]
    | Annotated[EnvStepSpec, Tag("step[env]")]
    | Annotated[CopyStepSpec, Tag("step[copy]")]
    | Annotated[FileStepSpec, Tag("step[file]")]
    | Annotated[RemoveStepSpec, Tag("step[remove]")]
    | Annotated[AptStepSpec, Tag("step[apt]")]
    | Annotated[SysctlStepSpec, Tag("step[sysctl]")],
    Discriminator(_step_tag, custom_error_type="step_kind",
                  custom_error_message="a step is a table naming one kind of step"),
    BeforeValidator(_one_step_kind),
]


class OsSpec(Strict):
    """`os = { ... }`: the image is a Debian system bootstrapped with mmdebstrap and imported
    into the container engine; the recipe's steps become its layers (hinotori.bake.osimage).
    python3 is always installed (verify runs its evaluator inside the host) besides
    `packages`."""

    suite: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,30}$")] = "bookworm"
    # Only variants that include apt: apt steps and `packages` need it.
    variant: Literal["minbase", "apt", "buildd", "required", "important", "standard"] = "minbase"
    packages: list[DebianPackage] = []
    mirror: Annotated[str, Field(pattern=r"^(https?|file)://\S+$")] = (
        "http://deb.debian.org/debian")
    arch: Annotated[str, Field(pattern=r"^[a-z0-9]+$")] | None = None  # default: the host's
    workdir: Annotated[str, Field(pattern=r"^/\S*$")] = "/app"  # where step paths point


class ImageSpec(Strict):
    """How a service's image is baked: the build context and the recipe (hinotori.bake)."""

    context: str = "."
    # A context outside the project copies files from elsewhere into the image (a home
    # directory, /etc): refused unless this says it is meant.
    allow_outside_context: bool = False
    steps: list[StepSpec] = []
    os: OsSpec | None = None  # None: a file tree (process hosts); else a Debian OS image

    @model_validator(mode="after")
    def _apt_needs_os(self) -> ImageSpec:
        if self.os is None and any(isinstance(s, AptStepSpec) for s in self.steps):
            raise ValueError("apt steps install Debian packages, so they need an OS image: add "
                             "os = { suite = \"bookworm\" } to this [image] table")
        sysctl_steps = [s for s in self.steps if isinstance(s, SysctlStepSpec)]
        if self.os is None and sysctl_steps:
            raise ValueError("sysctl steps set kernel settings of an OS image: add os = { suite "
                             "= \"bookworm\" } to this [image] table (a process host shares the "
                             "machine's kernel)")
        priorities = [s.priority for s in sysctl_steps]
        if len(set(priorities)) != len(priorities):
            raise ValueError("two sysctl steps would write the same /etc/sysctl.d file: merge "
                             "them into one, or give one another priority")
        return self

    def sysctls(self) -> dict[str, str]:
        """Every setting the recipe's sysctl steps make, a higher priority winning (as
        /etc/sysctl.d files are applied: in the order of their names)."""
        merged: dict[str, str] = {}
        for step in sorted((s for s in self.steps if isinstance(s, SysctlStepSpec)),
                           key=lambda s: s.priority):
            merged.update(step.sysctl)
        return merged

    def recipe(self) -> list[Step]:
        """The steps as the builder takes them."""
        return [step_from_dict(s.model_dump(exclude_unset=True, by_alias=True))
                for s in self.steps]

    def context_outside(self, root: Path) -> Path | None:
        """The real path of the context when it lies outside ``root`` (the spec's directory,
        links followed) and that was not allowed; else None."""
        if self.allow_outside_context:
            return None
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(real_root / self.context))
        return None if real.is_relative_to(real_root) else real
