"""Canary: a small, growing share of real traffic goes to the new release; the numbers decide.

    boot N canary hosts (health- and verify-gated, as blue-green)
    for each step weight w < 100:
        route w% to the canary, (100-w)% to stable           (one atomic switch)
        judge canary against stable every `interval` on the same window of traffic,
        for at least `pause`: FAIL -> roll back; INCONCLUSIVE past `deadline` -> fail
        (unless `inconclusive = "pass"`); PASS after `pause` -> next step
    100: promote — all traffic to the canary, stable drained and kept warm

A rollback is one switch back to stable (weights restored), then the canary hosts are drained
and destroyed, and the deployment fails showing the metrics that failed. ``Control`` lets an
operator pause (no further steps; failures still roll back), resume, promote at once, or abort.

Weights are per host: with ns stable and nc canary hosts at w%, each stable host gets
(100-w)*nc and each canary host w*ns, so the split is exact whatever the host counts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from hinotori import faults
from hinotori.deploy import bluegreen
from hinotori.deploy.analysis import Outcome, Thresholds, Verdict, Window, judge
from hinotori.deploy.base import Control, StrategyRun
from hinotori.deploy.fleet import Fleet, Progress
from hinotori.errors import CanaryFailed as CanaryFailed
from hinotori.model import BackendStats, Host, HostState, Release
from hinotori.spec.schema import AnalysisSpec, CanarySpec

STRATEGY = "canary"


class Canary:
    name = STRATEGY
    controllable = True  # pause, resume, promote, abort

    async def run(self, run: StrategyRun) -> dict[str, Any]:
        spec = run.spec if isinstance(run.spec, CanarySpec) else CanarySpec(kind="canary")
        return await deploy(run.fleet, run.release, run.progress, run.control, spec)


def weights(stable: list[Host], canary: list[Host], percent: int) -> dict[str, int]:
    ns, nc = len(stable), len(canary)
    w = {h.id: (100 - percent) * nc for h in stable}
    w.update({h.id: percent * ns for h in canary})
    return w


def _window(stats: dict[str, BackendStats], hosts: list[Host]) -> Window:
    requests = errors = 0
    latency: list[int] = []
    for h in hosts:
        s = stats.get(h.id)
        if s is None:
            continue
        requests += s.requests
        errors += s.statuses.get("5xx", 0)
        latency = [a + b for a, b in zip(latency or [0] * len(s.latency), s.latency,
                                         strict=True)]
    return Window(requests, errors, tuple(latency))


async def deploy(fleet: Fleet, release: Release, progress: Progress, control: Control,
                 strategy: CanarySpec, *, kind: str = "deploy") -> dict[str, Any]:
    service = release.service
    svc = fleet.service(service)
    current, previous = fleet.store.service_releases(service)
    stable = [h for h in fleet.hosts(service, HostState.SERVING) if h.release == current]
    if not stable:
        progress("note", {"text": "nothing serves yet, so there is no stable release to "
                                  "compare with: deploying blue-green"})
        return await bluegreen.deploy(fleet, release, progress, kind=kind)
    started = time.monotonic()
    progress("boot", {"release": release.name, "replicas": svc.replicas})
    canary = await fleet.boot_healthy(service, release, svc.replicas, progress)
    judged: list[dict[str, Any]] = []
    try:
        for percent in strategy.steps:
            if percent >= 100 or control.promote:
                break
            took = await fleet.switch(service, stable + canary, [], why=f"canary at {percent}%",
                                      weights=weights(stable, canary, percent),
                                      canary=release.number)
            switched = time.monotonic()  # the canary takes this step's share from here
            progress("step", {"weight": percent, "switch_ms": round(took * 1000, 2)})
            faults.point("canary.step")
            verdict = await _judge_step(fleet, stable, canary, strategy, control, percent,
                                        release, progress, switched)
            judged.append({"weight": percent, "outcome": str(verdict.outcome),
                           "reasons": verdict.reasons, "metrics": verdict.metrics})
            if verdict.outcome != Outcome.PASS:
                raise CanaryFailed(f"{service} {release.name} failed its canary analysis at "
                                   f"{percent}%: " + "; ".join(verdict.reasons),
                                   hint="traffic is back on the stable release; "
                                        "`hinotori deployment show ID` has the metrics")
    except (CanaryFailed, asyncio.CancelledError, Exception) as e:
        await _roll_back(fleet, service, stable, canary, progress, why=str(e)[:200])
        if isinstance(e, CanaryFailed):
            e.judged = judged  # type: ignore[attr-defined]
        raise
    took = await fleet.switch(service, canary, stable, why=f"canary {release.name} promoted",
                              canary=None)
    progress("promoted", {"release": release.name, "switch_ms": round(took * 1000, 2)})
    faults.point("canary.promoted")
    left = current if current != release.number else previous
    fleet.store.set_service_releases(service, release.number, left, actor=fleet.actor,
                                     why=f"canary {release.name} promoted")
    drain_s = await bluegreen.retire(fleet, service, stable, left, progress)
    return {"release": release.name, "instant": False, "strategy": STRATEGY,
            "steps": judged, "switch_ms": round(took * 1000, 2), "drain_s": round(drain_s, 3),
            "total_s": round(time.monotonic() - started, 3), "hosts": [h.id for h in canary]}


async def _roll_back(fleet: Fleet, service: str, stable: list[Host], canary: list[Host],
                     progress: Progress, why: str) -> None:
    """All traffic back on stable in one switch; canary hosts drained, then burned."""
    started = time.perf_counter()
    await fleet.switch(service, stable, canary, why=f"canary rolled back: {why}", canary=None)
    progress("rolled-back", {"back_ms": round((time.perf_counter() - started) * 1000, 2)})
    await fleet.drain(canary, fleet.service(service).drain)
    await fleet.destroy(canary, why="canary rolled back")


async def _judge_step(fleet: Fleet, stable: list[Host], canary: list[Host],
                      strategy: CanarySpec, control: Control, percent: int, release: Release,
                      progress: Progress, step_started: float) -> Verdict:
    """Judge every ``interval`` counted from ``step_started`` (when the step's switch was
    acknowledged), not from after this step's first stats read and write: a canary that
    fails from its first request is judged one interval after it began to answer."""
    a = strategy.analysis
    thresholds = Thresholds(max_error_rate=a.max_error_rate,
                            max_error_rate_diff=a.max_error_rate_diff,
                            max_p95_ratio=a.max_p95_ratio, max_p99_ratio=a.max_p99_ratio,
                            min_requests=a.min_requests)
    base = await fleet.router.stats()
    base_stable, base_canary = _window(base, stable), _window(base, canary)
    judge_at = step_started + a.interval
    while True:
        control.changed.clear()
        try:
            async with asyncio.timeout(max(0.0, judge_at - time.monotonic())):
                await control.changed.wait()
        except TimeoutError:
            judge_at = max(judge_at + a.interval, time.monotonic())
        if control.abort:
            return Verdict(Outcome.FAIL, ["aborted by an operator"])
        if control.promote:
            return Verdict(Outcome.PASS, ["promoted by an operator"])
        now = await fleet.router.stats()
        verdict = judge(_window(now, stable).minus(base_stable),
                        _window(now, canary).minus(base_canary), thresholds)
        if verdict.outcome != Outcome.FAIL and a.webhook:
            verdict = await _ask_webhook(a, verdict, release, percent)
        elapsed = time.monotonic() - step_started
        progress("analysis", {"weight": percent, "outcome": str(verdict.outcome),
                              "reasons": verdict.reasons, "metrics": verdict.metrics,
                              "elapsed_s": round(elapsed, 2), "paused": control.paused})
        faults.point("canary.judged")
        if verdict.outcome == Outcome.FAIL:
            return verdict
        if control.paused:
            continue
        if verdict.outcome == Outcome.PASS and elapsed >= strategy.pause:
            return verdict
        if verdict.outcome == Outcome.INCONCLUSIVE and elapsed >= max(a.deadline,
                                                                      strategy.pause):
            if a.inconclusive == "pass":
                return Verdict(Outcome.PASS, ["inconclusive at the deadline; configured to "
                                              "pass"], verdict.metrics)
            return Verdict(Outcome.FAIL, [f"inconclusive for {a.deadline:g}s: "
                                          + "; ".join(verdict.reasons)], verdict.metrics)


async def _ask_webhook(a: AnalysisSpec, verdict: Verdict, release: Release,
                       percent: int) -> Verdict:
    """Custom analysis: the endpoint answers {"result": "pass"|"fail"}; an unreachable or
    unclear endpoint makes the step inconclusive, never a pass."""
    body = {"service": release.service, "release": release.name, "weight": percent,
            "metrics": verdict.metrics, "builtin": str(verdict.outcome)}
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = (await client.post(a.webhook or "", json=body)).json()
        result = str(answer.get("result", "")).lower()
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        return Verdict(Outcome.INCONCLUSIVE, [f"analysis webhook: {e.__class__.__name__}"],
                       verdict.metrics)
    if result == "fail":
        return Verdict(Outcome.FAIL, [f"analysis webhook said fail: {answer.get('reason', '')}"
                                      .rstrip(": ")], verdict.metrics)
    if result != "pass":
        return Verdict(Outcome.INCONCLUSIVE, [f"analysis webhook answered {answer!r}"],
                       verdict.metrics)
    return verdict
