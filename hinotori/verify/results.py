"""What a verification found: one CheckResult per check, gathered in a Report.

Plain frozen values (no I/O), so reporters, the CLI and the fleet's verify gate read the same
thing. A result keeps every matcher it evaluated with what was expected and what was got; the
``expected`` and ``got`` of a failed check summarise only its failed matchers, which is what a
person needs to read first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MatcherResult:
    matcher: str  # "mode", "status", "stdout", …
    expected: str
    got: str
    ok: bool


@dataclass(frozen=True)
class CheckResult:
    description: str  # "file app.py", "http GET /healthz", "testinfra test_app.py::test_x"
    ok: bool
    matchers: tuple[MatcherResult, ...] = ()
    duration: float = 0.0  # seconds of its last attempt
    attempts: int = 1
    error: str | None = None  # could not be evaluated at all (bad $VAR, crash, …)
    source: str = "check"  # "check", "health" or "testinfra"

    def _shown(self) -> tuple[MatcherResult, ...]:
        failed = tuple(m for m in self.matchers if not m.ok)
        return failed if failed else self.matchers

    @property
    def expected(self) -> str:
        return "; ".join(f"{m.matcher} {m.expected}" for m in self._shown())

    @property
    def got(self) -> str:
        if self.error:
            return self.error
        return "; ".join(f"{m.matcher} {m.got}" for m in self._shown())

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "ok": self.ok, "expected": self.expected,
                "got": self.got, "duration": round(self.duration, 6), "attempts": self.attempts,
                "source": self.source, "error": self.error,
                "matchers": [m.__dict__ for m in self.matchers]}


# repr=False: a Report's repr is its summary and failures, not a thousand results. asyncio.run
# (3.11) formats the repr of its finished main task, result included, when it puts the SIGINT
# handler back (signal._int_to_enum), so a coroutine returning a Report of 1,000 checks paid
# 30-140 ms for a string nobody reads.
@dataclass(frozen=True, repr=False)
class Report:
    host: str  # the host's id
    results: tuple[CheckResult, ...] = ()
    duration: float = 0.0  # wall time of the whole verification
    meta: dict[str, Any] = field(default_factory=dict)  # service, release, … for reporters

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> int:
        return self.total - self.passed

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def __repr__(self) -> str:
        failed = ", ".join(repr(r.description) for r in self.failures()[:5])
        return (f"Report(host={self.host!r}, total={self.total}, failed={self.failed}"
                f"{f' [{failed}]' if failed else ''}, duration={self.duration:.3f})")

    def summary(self) -> str:
        return (f"{self.total} checks, {self.passed} passed, {self.failed} failed "
                f"in {self.duration:.3f}s")

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "ok": self.ok, "total": self.total, "passed": self.passed,
                "failed": self.failed, "duration": round(self.duration, 6), **self.meta,
                "results": [r.to_dict() for r in self.results]}
