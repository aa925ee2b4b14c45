"""The ``sysctl`` step: kernel settings baked into an OS image.

    { sysctl = { "net.core.somaxconn" = "1024", "net.ipv4.tcp_fin_timeout" = "15" } }
    { sysctl = { ... }, priority = 40 }      # /etc/sysctl.d/40-hinotori.conf

An OS image gets ``/etc/sysctl.d/NN-hinotori.conf`` (NN = ``priority``, default 60: later
files win, as systemd-sysctl and ``sysctl --system`` read them), so a machine booting the
image applies them at boot; being a file of the image it is part of the digest. A container
shares the machine's kernel and runs no init that reads that file, so the image also carries
the settings in its ``hinotori.sysctls`` label and the container provider passes them to the
engine as the container's sysctls (``osimage/containerfile.py``, ``providers/container.py``).
A file tree has no kernel of its own to apply them to: the spec refuses the step without
``os``, and a recipe built in code that still has one fails here with the same advice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from hinotori import sysctls
from hinotori.bake.stepbase import Step, StepContext
from hinotori.errors import BakeError

DEFAULT_PRIORITY = 60


@dataclass(frozen=True)
class SysctlStep(Step):
    kind: ClassVar[str] = "sysctl"
    keys: ClassVar[frozenset[str]] = frozenset({"sysctl", "priority"})
    settings: tuple[tuple[str, str], ...]
    priority: int = DEFAULT_PRIORITY

    def __post_init__(self) -> None:
        settings = tuple((sysctls.check_name(k), sysctls.check_value(v))
                         for k, v in self.settings)
        if not settings:
            raise ValueError("sysctl: set at least one, e.g. sysctl = { \"net.core.somaxconn\" "
                             "= \"1024\" }")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not (
                0 <= self.priority <= 99):
            raise ValueError(f"sysctl: priority is 0-99, the NN of /etc/sysctl.d/NN-hinotori.conf "
                             f"(got {self.priority!r})")
        object.__setattr__(self, "settings", settings)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SysctlStep:
        cls.check_keys(d)
        table = d["sysctl"]
        if not isinstance(table, Mapping):
            raise ValueError("sysctl: expected a table of name = \"value\"")
        return cls(settings=tuple(table.items()), priority=d.get("priority", DEFAULT_PRIORITY))

    @property
    def path(self) -> str:
        """Where the settings go in the image (absolute)."""
        return f"{sysctls.CONF_DIR}/{self.priority:02d}-hinotori.conf"

    def values(self) -> dict[str, str]:
        return dict(self.settings)

    def conf(self) -> str:
        return sysctls.conf_text(self.values())

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sysctl": self.values()}
        if self.priority != DEFAULT_PRIORITY:
            d["priority"] = self.priority
        return d

    def describe(self) -> str:
        text = " ".join(f"{k}={v}" for k, v in self.settings)
        return f"sysctl: {text if len(text) <= 100 else text[:99] + '…'}"

    def execute(self, ctx: StepContext) -> None:
        raise BakeError(f"{ctx.label(self)}: sysctl steps set kernel settings and need an OS "
                        "image", hint="add os = { suite = \"bookworm\" } to the service's [image] "
                                      "table; a process host shares the machine's kernel")


def image_sysctls(steps: list[Step] | tuple[Step, ...]) -> dict[str, str]:
    """Every setting the recipe's sysctl steps make, as applied at boot: files in the order of
    their names, so a higher priority wins."""
    merged: dict[str, str] = {}
    for step in sorted((s for s in steps if isinstance(s, SysctlStep)),
                       key=lambda s: s.priority):
        merged.update(step.values())
    return merged
