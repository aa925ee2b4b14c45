"""One error tree: every HinotoriError is defined in hinotori.errors, drawn in its docstring
where its base class is, and comes back from the controller's API as the same class."""

from __future__ import annotations

import importlib
import pkgutil
import re

import httpx
import pytest

import hinotori
from hinotori import errors
from hinotori.controller.client import _error_from
from hinotori.errors import HinotoriError, SpecError


def every_error_class() -> list[type[HinotoriError]]:
    """Every subclass of HinotoriError defined anywhere in hinotori (every module imported)."""
    for found in pkgutil.walk_packages(hinotori.__path__, "hinotori."):
        if not found.name.endswith("__main__"):  # running it is not importing it
            importlib.import_module(found.name)

    def family(cls: type[HinotoriError]) -> list[type[HinotoriError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in family(sub))]

    return family(HinotoriError)


def drawn_tree() -> dict[str, str | None]:
    """Each class name drawn in hinotori.errors' docstring -> the name it hangs under."""
    doc = (errors.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(doc) if line.strip().startswith("HinotoriError "))
    lines = [doc[start]]
    for line in doc[start + 1:]:
        if "── " not in line:
            break
        lines.append(line)
    root = lines[0].index("HinotoriError")
    parents: dict[str, str | None] = {"HinotoriError": None}
    path = ["HinotoriError"]
    for line in lines[1:]:
        m = re.search(r"[├└]── (\w+)", line)
        assert m, f"not a tree line: {line!r}"
        depth = (m.start(1) - root) // 4
        path[depth:] = [m.group(1)]
        parents[m.group(1)] = path[depth - 1]
    return parents


def test_every_error_is_defined_in_errors_and_drawn_under_its_base() -> None:
    classes = every_error_class()
    assert len(classes) >= 20  # the walk found the whole family, not just the base
    assert [c.__name__ for c in classes if c.__module__ != "hinotori.errors"] == []
    assert len({c.__name__ for c in classes}) == len(classes)  # a name picks one class
    tree = drawn_tree()
    assert set(tree) == {c.__name__ for c in classes}
    for cls in classes[1:]:
        assert tree[cls.__name__] == cls.__bases__[0].__name__, cls


def test_old_import_paths_still_work() -> None:
    from hinotori.deploy.canary import CanaryFailed
    from hinotori.engine import EngineError
    from hinotori.observe.logs import ForwardError, LogsError
    from hinotori.observe.logs.forward import Rejected
    from hinotori.observe.metrics.store import BadQuery, MetricsError
    from hinotori.router.haproxy.runtime import RuntimeApiError

    assert {c.__module__ for c in (CanaryFailed, EngineError, ForwardError, LogsError, Rejected,
                                   BadQuery, MetricsError, RuntimeApiError)} == {
        "hinotori.errors"}


def sample(cls: type[HinotoriError]) -> HinotoriError:
    if cls is SpecError:
        return SpecError("expected a list", file="hinotori.toml", line=12,
                         key="services.web.hooks", hint="write [\"cmd\"]")
    return cls(f"{cls.__name__} happened", hint="do this")


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.__name__)
def test_every_error_comes_back_from_the_api_as_itself(cls: type[HinotoriError]) -> None:
    sent = sample(cls)
    back = _error_from(httpx.Response(400, json=sent.to_wire()))
    assert type(back) is cls
    assert (str(back), back.message, back.hint, back.exit_code) == (
        str(sent), sent.message, sent.hint, sent.exit_code)
    if isinstance(sent, SpecError):
        assert isinstance(back, SpecError)
        assert (back.file, back.line, back.key) == ("hinotori.toml", 12, "services.web.hooks")
    # What the API sent before it sent a SpecError's fields: the message is still not
    # decorated twice.
    plain = {"error": sent.message, "hint": sent.hint, "type": cls.__name__}
    assert str(_error_from(httpx.Response(400, json=plain))) == str(sent)


def test_what_is_not_a_hinotori_error_comes_back_as_a_controller_error() -> None:
    for body in ({"error": "boom", "type": "ValueError"}, {"error": "boom", "type": "errors"},
                 {"error": "boom"}):
        back = _error_from(httpx.Response(500, json=body))
        assert type(back) is errors.ControllerError and back.message == "boom"
    assert type(_error_from(httpx.Response(502, text="<html>"))) is errors.ControllerError
