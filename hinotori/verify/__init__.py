"""Verify: serverspec-style checks run against a host before any traffic reaches it.

    checks.py     the check spec ([[services.NAME.checks]]): one pydantic model per resource
    evaluator.py  the in-host evaluator (standard library only, shipped as source): every
                  check in parallel, goss-style retries, expected versus got
    runner.py     verify_host(): plan + evaluator through Provider.exec, one JSON back; the
                  fleet's verify gate
    testinfra.py  pytest-testinfra files run inside the host, folded into the same Report
    survey.py     starter checks from what a running host has (`hinotori checks generate`)
    results.py    Report, CheckResult, MatcherResult
    report.py     Rich table, JSON, JUnit XML, TAP

The spec schema imports ``checks``; nothing in this package imports ``hinotori.spec`` (that
would be a cycle). The names below load their submodule on first use (PEP 562): the schema
needs only ``checks``, and every command that loads a spec would otherwise import the runner
(asyncio, the providers) too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hinotori.lazynames import lazy_names

if TYPE_CHECKING:
    from hinotori.verify.checks import Check, CheckBase, parse_checks
    from hinotori.verify.results import CheckResult, MatcherResult, Report
    from hinotori.verify.runner import VerifyPlan, fleet_verifier, verify_host

# submodule -> the names it gives this package
_EXPORTS = {"checks": ("Check", "CheckBase", "parse_checks"),
            "results": ("CheckResult", "MatcherResult", "Report"),
            "runner": ("VerifyPlan", "fleet_verifier", "verify_host")}

__all__ = ["Check", "CheckBase", "CheckResult", "MatcherResult", "Report", "VerifyPlan",
           "fleet_verifier", "parse_checks", "verify_host"]


__getattr__ = lazy_names(__name__, _EXPORTS)
