"""Suite-wide hooks: the longest modules are handed to the xdist workers first (see
tests/support_order.py)."""

from __future__ import annotations

import pytest

from tests.support_order import module_rank


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: module_rank(item.nodeid))  # stable: a module keeps its order
