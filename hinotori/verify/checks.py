"""The check spec: what a ``[[services.NAME.checks]]`` table may say, validated with pydantic.

A check is one TOML table whose resource key names what is checked and whose other keys are
matchers, as in serverspec and goss::

    { file = "app.py", mode = "0444" }
    { command = "python3 -V", exit_status = 0, stdout = "3\\." }
    { port = "$PORT", listening = true }
    { http = "/healthz", status = 200, body = "ok" }
    { kernel_param = "net.core.somaxconn", value = "4096" }
    { mount = "/", filesystem = "overlay", options = ["rw"] }
    { interface = "lo", up = true, addresses = ["127.0.0.1/8"], mtu = 65536 }
    { dns = "localhost", addresses = ["127.0.0.1"] }

Each resource is one model with ``extra="forbid"``, so an unknown matcher is an error at its own
key. The models form a tagged union chosen by the table's first resource key (``group`` is both
a resource and a matcher of ``file``, so "which resource key" alone would be ambiguous); a table
with no resource key, or with another one that is not a matcher of the first, is refused before
any model sees it. Tags are written
``check[file]``: the spec loader drops bracketed union tags from error locations, so an error
points at ``services.web.checks.3.mode`` and its line, not at an invented key.

Only what can be decided without the host is checked here (one resource, known matchers, regexes
that compile, modes and sizes well formed). What the host says is the evaluator's business
(``evaluator.py``), which receives each check as ``plan()``: resource, target and matchers with
their defaults filled in. ``RESOURCES`` is the registry of resources, and the tagged union
``Check`` is built from it: adding a resource is one model here, one line in ``RESOURCES`` and
one function in the evaluator's table (the evaluator ships to hosts as a single file, so it
keeps its own table; a unit test holds the two tables to the same names).

This module must not import ``hinotori.spec`` (the spec schema imports it).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    model_validator,
)

from hinotori import sysctls
from hinotori.durations import parse_duration, parse_size


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression ({e}): {value!r}") from None
    return value


def _mode(value: object) -> str:
    # TOML has no leading-zero integers; an int here is almost always a decimal typo (644).
    if not isinstance(value, str) or not re.fullmatch(r"(0o?)?[0-7]{3,4}", value):
        raise ValueError(f"write a mode as an octal string, e.g. \"0644\" (got {value!r})")
    return f"{int(value.replace('o', ''), 8):04o}"


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"durations are strings with a unit, e.g. \"10s\" (got {value!r})")
    return parse_duration(value)


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a size is a number of bytes or a string like \"4KiB\"")
    return value if isinstance(value, int) else parse_size(str(value))


def _argv(value: object) -> list[str]:
    """A command as an argv list; a string is split like a shell would, without a shell."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as e:
            raise ValueError(f"cannot split the command into words: {e}") from None
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise ValueError("a command is a string or a list of strings")
    if not argv:
        raise ValueError("a command cannot be empty")
    return argv


def _request_target(value: str) -> str:
    if not re.fullmatch(r"[!-~]+", value):
        raise ValueError(f"only visible ASCII characters (no spaces or control characters; "
                         f"percent-encode the rest): {value!r}")
    return value


def _port(value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not (
            (text.isdigit() and 0 < int(text) < 65536)
            or re.fullmatch(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", text)):
        raise ValueError(f"a port is a number (1-65535) or a variable of the host's env such as "
                         f"\"$PORT\" (got {value!r})")
    return text


def _sysctl_value(value: object) -> str:
    return sysctls.normalise(sysctls.check_value(value))


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def _ip_or_network(value: str) -> str:
    """An address, or an address with its prefix length ("10.0.0.5/24", kept as written)."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"not an IP address (optionally with /prefix): {value!r}") from None
    return str(iface) if "/" in value else str(iface.ip)


Regex = Annotated[str, AfterValidator(_regex)]
Mode = Annotated[str, BeforeValidator(_mode)]
Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]
Target = Annotated[str, Field(min_length=1)]
FileType = Literal["file", "directory", "symlink", "socket", "pipe", "character-device",
                   "block-device"]


class CheckBase(BaseModel):
    """Shared by every check: the resource key (``resource``), an optional title, and a
    ``presence`` matcher (exists, running…) that, when false, must stand alone."""

    # strict: a matcher's TOML type must be the documented one (exit_status = "0" is refused)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
    resource: ClassVar[str]
    presence: ClassVar[str | None] = "exists"
    settings: ClassVar[frozenset[str]] = frozenset()  # how to look, not what: fine when absent
    title: str | None = None  # shown instead of the generated description

    @model_validator(mode="after")
    def _absent_alone(self) -> CheckBase:
        flag = self.presence
        if flag and getattr(self, flag) is False:
            extra = sorted(self.model_fields_set - {self.resource, "title", flag}
                           - self.settings)
            if extra:
                raise ValueError(f"`{flag} = false` checks that the {self.resource} is absent: "
                                 f"drop {', '.join(extra)}")
        return self

    @property
    def target(self) -> Any:
        return getattr(self, self.resource)

    def matchers(self) -> dict[str, Any]:
        """Every matcher that applies, defaults included (None means "not checked")."""
        return self.model_dump(exclude={self.resource, "title"}, exclude_none=True)

    def describe(self) -> str:
        return self.title or f"{self.resource} {self._target_text()}"

    def _target_text(self) -> str:
        return str(self.target)

    def plan(self) -> dict[str, Any]:
        """The check as the evaluator reads it (JSON-ready)."""
        return {"resource": self.resource, "target": self.target, "matchers": self.matchers(),
                "description": self.describe()}


class FileCheck(CheckBase):
    resource = "file"
    file: Target  # relative to the host's view (its working directory) or absolute
    exists: bool = True
    type: FileType | None = None
    mode: Mode | None = None
    owner: str | None = None  # a user name or a numeric uid
    group: str | None = None  # a group name or a numeric gid
    contains: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str)
                                                   else v)] | None = None  # every substring
    matches: Regex | None = None  # searched in the content
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    size: Size | None = None


class DirectoryCheck(CheckBase):
    resource = "directory"
    directory: Target
    exists: bool = True
    mode: Mode | None = None
    owner: str | None = None
    group: str | None = None


class CommandCheck(CheckBase):
    resource = "command"
    presence = None
    command: Annotated[list[str], BeforeValidator(_argv)]  # run without a shell
    exit_status: int = 0
    stdout: Regex | None = None
    stderr: Regex | None = None
    timeout: Duration = 10.0

    def _target_text(self) -> str:
        return shlex.join(self.command)


class PortCheck(CheckBase):
    resource = "port"
    presence = "listening"
    port: Annotated[str, BeforeValidator(_port)]
    listening: bool = True
    protocol: Literal["tcp", "udp"] = "tcp"

    def _target_text(self) -> str:
        return f"{self.port}/{self.protocol}"


class HttpCheck(CheckBase):
    resource = "http"
    presence = None
    # "/path" on the host's address, or a whole http(s):// URL; it goes into a request line
    # as written, so only visible ASCII (no CR/LF, spaces or control characters)
    http: Annotated[str, AfterValidator(_request_target)]
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"] = "GET"
    status: int = Field(200, ge=100, le=599)
    body: Regex | None = None
    header: dict[str, Regex] | None = None  # header name -> regex its value must match
    timeout: Duration = 5.0

    @model_validator(mode="after")
    def _url(self) -> HttpCheck:
        if not self.http.startswith(("/", "http://", "https://")):
            raise ValueError("http is a path such as \"/healthz\" or an http(s):// URL")
        return self

    def _target_text(self) -> str:
        return f"{self.method} {self.http}"


class ProcessCheck(CheckBase):
    resource = "process"
    presence = "running"
    process: Target  # a process name (as in /proc/PID/comm) or a part of its command line
    running: bool = True
    count: int | None = Field(None, ge=0)


class EnvCheck(CheckBase):
    resource = "env"
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    exists: bool = True
    value: Regex | None = None


class PackageCheck(CheckBase):
    resource = "package"
    presence = "installed"
    package: Target
    installed: bool = True
    version: Regex | None = None  # searched in the installed version string


class UserCheck(CheckBase):
    resource = "user"
    user: Target
    exists: bool = True
    uid: int | None = Field(None, ge=0)
    home: str | None = None
    shell: str | None = None
    groups: list[str] | None = None  # the user is in each of these (primary or supplementary)


class GroupCheck(CheckBase):
    resource = "group"
    group: Target
    exists: bool = True
    gid: int | None = Field(None, ge=0)


class ServiceCheck(CheckBase):
    resource = "service"
    presence = None
    service: Target
    running: bool | None = True
    enabled: bool | None = None


class KernelParamCheck(CheckBase):
    """A sysctl as the host sees it (/proc/sys: the host's namespaces, the machine's kernel)."""

    resource = "kernel_param"
    kernel_param: Annotated[str, AfterValidator(sysctls.check_name)]
    exists: bool = True
    # compared with runs of white space made one space ("32768 60999"); an integer is fine
    value: Annotated[str, BeforeValidator(_sysctl_value)] | None = None
    matches: Regex | None = None


class MountCheck(CheckBase):
    """A mount point in the host's mount namespace (its /proc/self/mountinfo)."""

    resource = "mount"
    presence = "mounted"
    mount: Annotated[str, Field(pattern=r"^/")]
    mounted: bool = True
    filesystem: str | None = None  # "overlay", "tmpfs", "ext4"…
    options: list[Annotated[str, Field(min_length=1)]] | None = None  # each set ("ro", "size=…")
    source: str | None = None  # the mounted device or source, as mountinfo names it


class InterfaceCheck(CheckBase):
    """A network interface of the host's network namespace (asked over netlink)."""

    resource = "interface"
    interface: Annotated[str, Field(pattern=r"^[^/\s]{1,15}$")]
    exists: bool = True
    up: bool | None = None
    mtu: int | None = Field(None, ge=68)
    # each is on the interface: "127.0.0.1" or with its prefix length, "127.0.0.1/8"
    addresses: list[Annotated[str, AfterValidator(_ip_or_network)]] | None = None


class DnsCheck(CheckBase):
    """A name resolves in the host the way its programs resolve it (getaddrinfo: /etc/hosts,
    then whatever nsswitch says), optionally to each of ``addresses``."""

    resource = "dns"
    presence = "resolvable"
    settings = frozenset({"timeout"})
    dns: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,253}$")]
    resolvable: bool = True
    addresses: list[Annotated[str, AfterValidator(_ip)]] | None = None
    timeout: Duration = 5.0


RESOURCES: dict[str, type[CheckBase]] = {m.resource: m for m in (
    FileCheck, DirectoryCheck, CommandCheck, PortCheck, HttpCheck, ProcessCheck, EnvCheck,
    PackageCheck, UserCheck, GroupCheck, ServiceCheck, KernelParamCheck, MountCheck,
    InterfaceCheck, DnsCheck)}


def _resource_keys(value: dict[object, object]) -> tuple[str | None, list[str]]:
    """The resource a table names (its first resource key) and any other resource keys that
    are not matchers of it (``group`` is a resource, and also a matcher of ``file``)."""
    named = [k for k in value if isinstance(k, str) and k in RESOURCES]
    if not named:
        return None, []
    fields = RESOURCES[named[0]].model_fields
    return named[0], [k for k in named[1:] if k not in fields]


def _one_resource(value: object) -> object:
    if isinstance(value, dict):
        resource, others = _resource_keys(value)
        if resource is None or others:
            what = "none" if resource is None else " and ".join([resource, *others])
            raise ValueError(f"a check names exactly one resource ({', '.join(RESOURCES)}) "
                             f"by its first such key; this one names {what}")
    return value


def _tag(value: object) -> str | None:
    if isinstance(value, CheckBase):
        return f"check[{value.resource}]"
    if isinstance(value, dict):
        resource, _ = _resource_keys(value)
        return f"check[{resource}]" if resource else None
    return None


# One tagged member per registered resource, in RESOURCES' order.
Check = Annotated[
    Union[tuple(Annotated[m, Tag(f"check[{name}]")] for name, m in RESOURCES.items())],  # noqa: UP007
    Discriminator(_tag, custom_error_type="check_resource",
                  custom_error_message="a check is a table naming one resource"),
    BeforeValidator(_one_resource),
]

_CHECKS: TypeAdapter[list[CheckBase]] = TypeAdapter(list[Check])


def parse_checks(data: object) -> list[CheckBase]:
    """Checks from plain data (a list of tables). Raises pydantic's ValidationError; in a spec,
    the loader turns that into a SpecError with file, line and key."""
    return _CHECKS.validate_python(data)
