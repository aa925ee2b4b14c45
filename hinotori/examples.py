"""Where the bundled examples live: inside the wheel, or in the source tree when run from it."""

from __future__ import annotations

from pathlib import Path

from hinotori.errors import HinotoriError


def example_dir(name: str = "hello") -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_examples" / name, here.parent / "examples" / name):
        if (candidate / "hinotori.toml").is_file():
            return candidate
    raise HinotoriError(f"the bundled example {name!r} is missing from this installation",
                        hint="reinstall hinotori")
