"""Shared pieces of the spec schema: the strict base model and the value types many tables use.

Strict means the TOML type must be the type the README documents: an integer key refuses "3",
3.0 and true; a boolean refuses 1 and "yes"; a float key takes a float or an integer (TOML
writes 2 for 2.0) but never a bool, a string, nan or inf. Durations and sizes are strings with
a unit by design ("500ms", "64MiB"); their own validators say which shapes they take.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from hinotori.durations import parse_duration

# One or more visible ASCII characters: no space, no control character (CR, LF, NUL, …), no
# non-ASCII. What may go into an HTTP request line or header as written.
VISIBLE = r"[!-~]+"


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"durations are strings with a unit, e.g. \"10s\" (got {value!r})")
    return parse_duration(value)


def check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if (not sep or not re.fullmatch(VISIBLE, host) or not port.isascii() or not port.isdigit()
            or not 0 <= int(port) <= 65535):
        raise ValueError(f"write an address as HOST:PORT, e.g. \"127.0.0.1:8080\" (got {value!r})")
    return value


def _url_path(value: str) -> str:
    if not re.fullmatch("/" + VISIBLE.replace("+", "*"), value):
        raise ValueError(f"a path starts with '/' and has only visible ASCII characters (no "
                         f"spaces or control characters; percent-encode the rest): {value!r}")
    return value


def _host_name(value: str) -> str:
    if not re.fullmatch(VISIBLE, value):
        raise ValueError(f"a Host header value has only visible ASCII characters (no spaces "
                         f"or control characters; punycode for other names): {value!r}")
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
Address = Annotated[str, AfterValidator(check_address)]
UrlPath = Annotated[str, AfterValidator(_url_path)]
HostName = Annotated[str, AfterValidator(_host_name)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
