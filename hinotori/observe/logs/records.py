"""The values the log pipeline passes around: a stored line, and a query over stored lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STDOUT = "stdout"  # the source name of a host's captured stdout+stderr


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line in the central store. ``id`` is its rowid: strictly increasing in ingest order,
    never reused, so it is the cursor for `follow` and for every forwarder."""

    id: int
    ts: float  # ingest time (seconds since the epoch); never decreases as ``id`` grows
    service: str
    release: int
    host: str
    source: str  # "stdout" or the declared file, as the host sees it
    offset: int  # byte offset of the line in its source
    line: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LogQuery:
    """Which lines: every field is a filter, None means any.

    ``grep`` finds lines containing the text, case-insensitively. When the text has words, the
    full-text index finds candidates (the text must start at a word boundary: "refused" and
    "n refused" both find "connection refused", "efused" does not) and a LIKE check keeps only
    real substrings; text without any word character ("->", "{}") is a plain LIKE scan."""

    service: str | None = None
    release: int | None = None
    host: str | None = None
    source: str | None = None
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    grep: str | None = None
    limit: int | None = 100  # the newest N matches (returned oldest first); None = all
