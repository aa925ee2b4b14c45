"""The suite's order (tests/support_order.py): the longest modules are handed out first."""

from __future__ import annotations

import tomllib

from tests.support_order import LONGEST_FIRST, ROOT, longest_first


def test_every_named_module_exists_once() -> None:
    # A renamed or deleted module would silently drop out of the head of the run.
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    missing = [m for m in LONGEST_FIRST if not (ROOT / m).is_file()]
    assert missing == []


def test_named_modules_go_first_in_their_order_and_the_rest_keep_theirs() -> None:
    first, second = LONGEST_FIRST[0], LONGEST_FIRST[1]
    nodeids = ["tests/unit/test_a.py::t1", f"{second}::x[podman]", "tests/unit/test_b.py::t2",
               f"{first}::y", f"{second}::x[docker]", "tests/unit/test_a.py::t3"]
    assert longest_first(nodeids) == [
        f"{first}::y", f"{second}::x[podman]", f"{second}::x[docker]",
        "tests/unit/test_a.py::t1", "tests/unit/test_b.py::t2", "tests/unit/test_a.py::t3"]


def test_xdist_keeps_the_collection_order() -> None:
    # xdist's default reorders modules by their number of tests, undoing the order above.
    with (ROOT / "pyproject.toml").open("rb") as f:
        addopts = tomllib.load(f)["tool"]["pytest"]["ini_options"]["addopts"]
    assert "--dist loadfile" in addopts and "--no-loadscope-reorder" in addopts
