"""No import cycles anywhere in hinotori, counting imports inside functions (a lazy import is
still a dependency) but not ``if TYPE_CHECKING:`` ones (they never run)."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest


def cycles(package: str) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan, iterative)."""
    graph = grimp.build_graph(package, include_external_packages=False,
                              exclude_type_checking_imports=True, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if i < len(targets):
                work.append((node, i + 1))
                nxt = targets[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_hinotori_has_no_import_cycle() -> None:
    assert cycles("hinotori") == []


def test_the_finder_sees_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from cyc import b\n")  # inside a function
    (pkg / "b.py").write_text("from cyc import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from cyc import d\n")
    (pkg / "d.py").write_text("from cyc import c\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles("cyc") == [["cyc.a", "cyc.b"]]
