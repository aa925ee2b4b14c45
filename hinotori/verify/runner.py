"""Run a host's checks: ship the evaluator and the plan in through ``Provider.exec``, read back
one JSON document, turn it into a Report.

One exec per verification, whatever the number of checks: ``python3 -I -S -c LOADER``
(isolated: the app's own modules in the working directory cannot shadow the standard library;
no site-packages: it needs none, and starts faster), and on its stdin the evaluator, as
bytecode for a host running the same CPython as ours and as source for any other, then the
plan. So verify costs one interpreter start in the host plus the checks themselves,
evaluated there in parallel. Testinfra files, when given, run after the checks in a second exec
(``testinfra.py``) and are folded into the same Report.

Nothing here knows a concrete provider: what it needs are facts on the Provider protocol. The
runner tells the evaluator two things about the host: its address (where ``http = "/path"``
goes) and, for hosts that share the controller's process table (``shares_process_table``),
which session is theirs: such a provider starts each host in a session of its own whose id is
the host's pid. Other providers give a host its own process namespace, so every process the
evaluator sees is the host's. The evaluator runs with the provider's ``evaluator_python``.
"""

from __future__ import annotations

import json
import marshal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hinotori.errors import HinotoriError, ProviderError
from hinotori.model import Host
from hinotori.providers.base import Provider
from hinotori.verify.checks import CheckBase, CommandCheck, DnsCheck, HttpCheck
from hinotori.verify.report import failure_text
from hinotori.verify.results import CheckResult, MatcherResult, Report
from hinotori.verify.testinfra import run_testinfra

EXEC_MARGIN = 30.0  # seconds allowed beyond the checks' own timeouts for the exec as a whole


@cache
def evaluator_source() -> str:
    return (Path(__file__).with_name("evaluator.py")).read_text(encoding="utf-8")


# What ``python -c`` runs in the host: it reads the evaluator from stdin, as bytecode when the
# host's Python is the same CPython as ours (its cache_tag), else as source to compile, then
# runs it on the rest of stdin (the plan). Compiling the evaluator's source was a third of its
# start-up (14 of 42 ms of CPU time); a process host runs our own interpreter.
LOADER = ("import sys,marshal\n"
          "b=sys.stdin.buffer\n"
          "t=b.readline().strip().decode()\n"
          "c=b.read(int(b.readline()))\n"
          "s=b.read(int(b.readline()))\n"
          "exec(marshal.loads(c) if t==sys.implementation.cache_tag else "
          "compile(s,'evaluator.py','exec'),{'__name__':'__main__'})\n")


@cache
def _evaluator_code() -> bytes:
    source = evaluator_source().encode("utf-8")
    return marshal.dumps(compile(source, "evaluator.py", "exec", dont_inherit=True))


def evaluator_input(plan: dict[str, Any], *, tag: str | None = None) -> bytes:
    """``LOADER``'s stdin: our cache_tag (``tag`` in tests), the evaluator as bytecode and as
    source, each after its length, then the plan."""
    tag = (sys.implementation.cache_tag or "") if tag is None else tag
    code, source = _evaluator_code(), evaluator_source().encode("utf-8")
    return b"%s\n%d\n%s%d\n%s%s" % (tag.encode(), len(code), code, len(source), source,
                                     json.dumps(plan).encode())


def build_plan(provider: Provider, host: Host, checks: Sequence[CheckBase], *,
               mode: str = "evaluate", retry_timeout: float = 0.0, sleep: float = 1.0,
               workers: int = 8, **extra: Any) -> dict[str, Any]:
    return {"mode": mode, "checks": [c.plan() for c in checks], "retry_timeout": retry_timeout,
            "sleep": sleep, "workers": workers, "address": host.address,
            "session": host.pid if provider.shares_process_table else None, "os_root": "/",
            **extra}


async def run_evaluator(provider: Provider, host: Host, plan: dict[str, Any], *,
                        python: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Run the evaluator in ``host`` on ``plan`` and return its JSON document (with
    ``python``, else the provider's ``evaluator_python``)."""
    python = python or provider.evaluator_python
    argv = [python, "-I", "-S", "-c", LOADER]
    done = await provider.exec(host, argv, stdin=evaluator_input(plan), timeout=timeout)
    try:
        doc = json.loads(done.stdout) if done.succeeded else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        tail = (done.stderr.strip() or done.stdout.strip())[-600:]
        raise ProviderError(f"the check evaluator failed in host {host.id} (exit {done.rc}): "
                            f"{tail or 'no output'}",
                            hint=f"the host needs Python 3.9+ as {python!r} on its PATH")
    return doc


def _timeout(checks: Sequence[CheckBase], retry_timeout: float) -> float:
    slowest = max((c.timeout for c in checks if isinstance(c, CommandCheck | HttpCheck | DnsCheck)),
                  default=0.0)
    return retry_timeout + slowest + EXEC_MARGIN


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _result(check: CheckBase, raw: dict[str, Any]) -> CheckResult:
    error = raw.get("error")
    matchers = tuple(MatcherResult(m["matcher"], m["expected"], m["got"], m["ok"])
                     for m in raw.get("matchers", ()))
    if error and not matchers:  # nothing was evaluated: still say what was expected
        matchers = tuple(MatcherResult(name, _text(value), error, False)
                         for name, value in check.matchers().items()
                         if name not in ("timeout", "method", "protocol"))
    return CheckResult(description=check.describe(), ok=bool(raw.get("ok")), matchers=matchers,
                       duration=float(raw.get("duration", 0.0)),
                       attempts=int(raw.get("attempts", 1)), error=error)


async def verify_host(provider: Provider, host: Host, checks: Sequence[CheckBase], *,
                      retry_timeout: float = 0.0, sleep: float = 1.0,
                      testinfra: Sequence[Path] = (), python: str | None = None,
                      workers: int = 8) -> Report:
    """Evaluate ``checks`` inside ``host`` (all at once, in parallel; failing ones retried every
    ``sleep`` s until ``retry_timeout``), then its ``testinfra`` files; one Report of both.

    Raises ProviderError when the host cannot run the evaluator at all (no such interpreter,
    host gone): that is not a failed check but a verification that did not happen.
    """
    start = time.perf_counter()
    python = python or provider.evaluator_python
    results: list[CheckResult] = []
    if checks:
        plan = build_plan(provider, host, checks, retry_timeout=retry_timeout, sleep=sleep,
                          workers=workers)
        doc = await run_evaluator(provider, host, plan, python=python,
                                  timeout=_timeout(checks, retry_timeout))
        raw = doc.get("results", [])
        if len(raw) != len(checks):
            raise ProviderError(f"the check evaluator in host {host.id} answered {len(raw)} "
                                f"results for {len(checks)} checks")
        results += [_result(c, r) for c, r in zip(checks, raw, strict=True)]
    if testinfra:
        results += await run_testinfra(provider, host, testinfra, python=python)
    return Report(host=host.id, results=tuple(results), duration=time.perf_counter() - start)


@dataclass(frozen=True)
class VerifyPlan:
    """What to verify on every new host of one service (from its spec)."""

    checks: tuple[CheckBase, ...] = ()
    testinfra: tuple[Path, ...] = ()
    retry_timeout: float = 0.0
    sleep: float = 1.0
    python: str | None = None  # None: the host's provider's evaluator_python


def fleet_verifier(providers: Mapping[str, Provider],
                   plan_of: Callable[[str], VerifyPlan | None]
                   ) -> Callable[[Host], Awaitable[str | None]]:
    """The Fleet's verify gate (``deploy.fleet.Verifier``): None when the host passed every
    check of its service, else what failed, expected versus got."""
    async def verify(host: Host) -> str | None:
        plan = plan_of(host.service)
        if plan is None or not (plan.checks or plan.testinfra):
            return None
        try:
            report = await verify_host(providers[host.provider], host, plan.checks,
                                       retry_timeout=plan.retry_timeout, sleep=plan.sleep,
                                       testinfra=plan.testinfra, python=plan.python)
        except HinotoriError as e:
            return str(e)
        return None if report.ok else failure_text(report)

    return verify
