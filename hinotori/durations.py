"""Durations and sizes as people write them in a spec: "500ms", "10s", "1m30s", "24h", "64MiB"."""

from __future__ import annotations

import re
import time

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
    "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError with the accepted form on anything else."""
    s = str(text).strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(
            f"invalid duration {text!r}: write a number with a unit, e.g. \"500ms\", \"10s\", "
            "\"1m30s\", \"24h\" (units: ms, s, m, h, d)"
        )
    return total


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s".replace(".0s", "s")
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h".replace(".0h", "h")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: write e.g. \"512KiB\", \"64MiB\", \"2GiB\"")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_moment(text: str, now: float | None = None) -> float:
    """A point in time: a duration ago ("10m" = ten minutes before ``now``) or epoch seconds
    (any plain number large enough to be a date: 1764000000). ValueError if neither."""
    try:
        number = float(text)
    except ValueError:
        return (time.time() if now is None else now) - parse_duration(text)
    if number >= 1e9:
        return number
    return (time.time() if now is None else now) - parse_duration(text)
