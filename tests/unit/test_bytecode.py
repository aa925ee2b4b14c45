"""tests/conftest.py compiles hinotori before the suite runs: every module has a .pyc that the
import system takes (its header names the source's mtime and size), so the thousands of
``python -m hinotori`` processes the tests start do not compile the sources again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import hinotori


def test_every_module_has_a_current_pyc() -> None:
    stale = []
    for source in Path(hinotori.__file__).parent.rglob("*.py"):
        pyc = Path(importlib.util.cache_from_source(str(source)))
        header = pyc.read_bytes()[:16] if pyc.exists() else b""
        stat = source.stat()
        # A timestamp .pyc: flags 0, then the source's mtime and size (importlib's check).
        if (len(header) < 16 or int.from_bytes(header[8:12], "little") != int(stat.st_mtime)
                & 0xFFFFFFFF or int.from_bytes(header[12:16], "little") != stat.st_size
                & 0xFFFFFFFF):
            stale.append(str(source))
    assert stale == []
