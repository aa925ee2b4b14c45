"""pydantic's validation errors, said in TOML's terms: where (the key path as written in the
file) and what (the expected TOML type and the one found, e.g. "expected an integer, got a
string ("3"): write it without quotes")."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

# pydantic error type -> the TOML type it expected
_EXPECTED = {
    "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "list_type": "an array", "tuple_type": "an array",
    "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
}
_UNION_TAGS = ("str", "list", "int", "float", "bool")


def toml_path(loc: Sequence[str | int], data: object) -> list[str | int]:
    """The TOML key path of a pydantic error location: drop what pydantic adds that the file
    does not say: union-branch tags ("str", "list[str]", "function-after[…]") and the
    discriminator of a tagged union (the value of its `kind` key, e.g. "canary")."""
    path: list[str | int] = []
    node = data
    for part in loc:
        written = isinstance(node, dict) and part in node
        if not written and isinstance(part, str) and ("[" in part or part in _UNION_TAGS):
            continue
        if not written and isinstance(node, dict) and node.get("kind") == part:
            continue
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return path


def toml_type(value: object) -> str:
    """What a TOML value is, with the value itself when it is short."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})" if abs(value) < 10**15 else "an integer"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({_quoted(shown)})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dt.datetime):
        return "a date-time"
    if isinstance(value, dt.date):
        return "a date"
    if isinstance(value, dt.time):
        return "a time"
    return type(value).__name__


def _quoted(text: str) -> str:
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def problem_text(errors: list[dict]) -> str:
    """One message for the errors pydantic reported at one key."""
    expected = [_EXPECTED[e["type"]] for e in errors if e["type"] in _EXPECTED]
    if expected and len(expected) == len(errors):
        wanted = " or ".join(dict.fromkeys(expected))
        value = errors[0].get("input")
        text = f"expected {wanted}, got {toml_type(value)}"
        if isinstance(value, str) and _looks_like(value, expected):
            text += ": write it without quotes"
        return text
    # Otherwise the most specific error: a type mismatch of one union branch says less than
    # the constraint another branch broke (e.g. "greater than or equal to 1").
    err = next((e for e in errors if e["type"] not in _EXPECTED), errors[0])
    return _message(err)


def _looks_like(text: str, expected: list[str]) -> bool:
    if "true or false" in expected and text.strip() in ("true", "false"):
        return True
    if "an integer" in expected or "a number" in expected:
        try:
            if not math.isfinite(float(text.replace("_", ""))):
                return False
        except ValueError:
            return False
        return "an integer" not in expected or text.strip().lstrip("+-").isdigit()
    return False


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling; see the spec reference in the README)"
    if kind == "missing":
        return "required key is missing"
    return str(err["msg"]).removeprefix("Value error, ")
