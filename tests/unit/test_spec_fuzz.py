"""Fuzzing the spec loader: whatever the file holds, loading ends in a Spec or a SpecError that
names the file, never in another exception. Bounded (300 examples a strategy) so it runs in the
default suite."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from hinotori.errors import SpecError
from hinotori.spec import load_spec
from hinotori.spec.schema import Spec
from hinotori.verify.checks import RESOURCES

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# A spec using most tables, so mutations reach deep into the schema.
BASE: dict[str, Any] = {
    "project": {"name": "fuzz"},
    "controller": {"listen": "127.0.0.1:0"},
    "router": {"kind": "builtin", "listen": "127.0.0.1:8080", "workers": 1},
    "notify": {"webhooks": ["http://127.0.0.1:9/x"], "timeout": "2s"},
    "logs": {"retention": "7d", "max_size": "64MiB",
             "forward": [{"kind": "syslog", "address": "127.0.0.1:514"}]},
    "metrics": {"interval": "10s"},
    "services": {"web": {
        "command": ["python3", "app.py"], "replicas": 2, "env": {"A": "1"},
        "hosts": ["a.example"], "path_prefix": "/",
        "health": {"path": "/healthz", "status": 200, "interval": "500ms", "healthy": 2},
        "strategy": {"kind": "canary", "steps": [5, 50, 100], "pause": "1s",
                     "analysis": {"max_error_rate": 0.01, "max_p99_ratio": 1.5}},
        "hooks": {"pre_deploy": ["true"], "timeout": "5s"},
        "chaos": {"days": ["mon"], "hours": [9, 17]},
        "image": {"context": ".", "steps": [{"run": "echo hi"},
                                            {"copy": "app.py", "to": "app.py", "mode": "0644"}]},
        "checks": [{"http": "/healthz", "status": 200}, {"file": "app.py", "mode": "0444"},
                   {"port": "$PORT"}, {"command": "true", "exit_status": 0}],
    }},
}


def _field_names(model: type[BaseModel], seen: set[type]) -> set[str]:
    """Every key any table of the schema has (so mutations use real keys, wrongly typed)."""
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for arg in re.findall(r"[A-Za-z]+Spec|[A-Za-z]+Check", repr(field.annotation)):
            sub = _MODELS.get(arg)
            if sub is not None:
                names |= _field_names(sub, seen)
    return names


def _models() -> dict[str, type[BaseModel]]:
    from hinotori.spec import base, image, observe, schema

    found = {m.__name__: m for m in RESOURCES.values()}
    for module in (schema, image, observe, base):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel):
                found[value.__name__] = value
    return found


_MODELS = _models()
KEYS = sorted(_field_names(Spec, set()) | {r for r in RESOURCES} | {"wat", "ÿ", "a b", ""})


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of ``node`` that leads to a table (where a key can be set)."""
    out = [prefix] if isinstance(node, dict) else []
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else []
    for k, v in items:
        if isinstance(v, dict | list):
            out += _paths(v, (*prefix, k))
    return out


TABLES = _paths(BASE)

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 100, 65536]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=30),
    st.sampled_from(["3", "200", "true", "10s", "500ms", "0644", "64MiB", "/healthz",
                     "/a\r\nb", "../..", "/", "$PORT", "127.0.0.1:0", "0.0.0.0:1", "canary",
                     "rolling", "blue-green", "haproxy", "container", "\0", "\uff11\uff10s",
                     "\u0663"]),
    st.dates(), st.datetimes(), st.times(),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)  # escapes ", \\ and controls as TOML does
    return out.replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
                if math.isinf(value) else repr(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_text(data: dict[str, Any]) -> str:
    """Top-level scalars, then one [table] per top-level table with inline values."""
    lines = [f"{_toml_key(k)} = {toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{_toml_key(k)}]")
            lines += [f"{_toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def mutate(data: Any, path: tuple, key: str, value: Any, delete: bool) -> None:
    node = data
    for part in path:
        node = node[part]
    if delete and node:
        node.pop(key if key in node else next(iter(node)))
    else:
        node[key] = value


def check_loads(content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hinotori.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        try:
            loaded = load_spec(path)
        except SpecError as e:
            assert e.file == str(path) and str(e).startswith(str(path)), str(e)
            return
        assert isinstance(loaded.spec, Spec)


def test_the_base_spec_loads() -> None:
    check_loads(toml_text(BASE))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "hinotori.toml").write_text(toml_text(BASE))
        assert load_spec(tmp).spec.services["web"].replicas == 2


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(TABLES), st.sampled_from(KEYS), values,
                          st.booleans()), min_size=1, max_size=5))
def test_schema_keys_with_any_value(mutations: list[tuple]) -> None:
    data = json.loads(json.dumps(BASE))
    for path, key, value, delete in mutations:
        try:
            mutate(data, path, key, value, delete)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier mutation replaced a table on this path
    check_loads(toml_text(data))


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(raw: bytes) -> None:
    check_loads(raw)


@FUZZ
@given(st.text(max_size=2000))
def test_random_text(text: str) -> None:
    check_loads(text)


@FUZZ
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["[", "{ a = ", "a.", "[[a"]),
       st.booleans(), st.sampled_from(["", "x = 1\n", toml_text(BASE)]))
def test_deep_nesting(depth: int, opener: str, closed: bool, around: str) -> None:
    closer = {"[": "]", "{ a = ": " }", "a.": "", "[[a": "]]"}[opener]
    body = opener * depth + "1" + (closer * depth if closed else "")
    if opener == "a.":
        body = body + " = 1"
    check_loads(around + f"\nkey = {body}\n" if opener != "a." else around + body + "\n")


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("[]{}\"'#.=\\\n ,a1")), max_size=3000))
def test_toml_punctuation_soup(text: str) -> None:
    check_loads(text)
