"""Scheduled jobs: each run of a [jobs.NAME] is a disposable host of its own, never a crontab.

A run boots a fresh host from the service's CURRENT release through the same request a serving
host is booted with (Fleet.boot_request: image, env, volumes, whatever else a boot gets), with
the job's command as its main process and state JOB, which nothing that serves, heals, rotates,
kills or routes ever looks at. Its exit ends the run: the exit status decides the result, the
host is burned (its output flushed to the central log store first, as every destroy does) and
the run is recorded in ``job_runs`` with an event; a failed, timed-out or lost run is also a
notification. A run that outlives its timeout is destroyed: SIGTERM, the service's stop_grace,
SIGKILL.

The schedule loop wakes at the next due moment (at most ``TICK`` apart while jobs are
declared) and when a reloaded spec changes them; with none, it sleeps until one comes. Each
job's last due moment is kept in the store (``job_cursors``), so a controller that starts
again knows whether a run came due while none was running (``missed``: run once now, or skip).
Running job hosts outlive the controller like any host; the next one adopts them (``resume``):
still running, it watches them on; ended, it records their exit status (when the provider can
still tell) and burns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from hinotori.controller.notify import Notifier
from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import Fleet
from hinotori.errors import HinotoriError, LockedError, MachineUnreachable, NotFound
from hinotori.model import Host, HostState, Release
from hinotori.providers.base import ExitStatus
from hinotori.spec.jobs import JobSpec
from hinotori.spec.schema import Spec
from hinotori.store.jobs import RUNNING, JobRuns

log = logging.getLogger("hinotori.jobs")

TICK = 0.25  # longest sleep between two looks at the schedules
WATCH = 0.2  # seconds between two looks at a running job host
FAILURES = ("failed", "timed-out", "lost")

Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]


@dataclass
class _Active:
    job: str
    host: Host | None = None
    replaced: asyncio.Event = field(default_factory=asyncio.Event)


class Jobs:
    def __init__(self, fleet: Fleet, notifier: Notifier, spawn: Spawn) -> None:
        self.fleet = fleet
        self.store = fleet.store
        self.runs = JobRuns(fleet.store)
        self.notifier = notifier
        self.spawn = spawn
        self.active: dict[int, _Active] = {}  # run id -> the run under way
        self._clock: dict[str, tuple[JobSpec, float]] = {}  # job -> (as scheduled, next due)
        self._changed = asyncio.Event()  # a reloaded spec changed [jobs]: look at it now

    def spec(self, name: str) -> JobSpec:
        try:
            return self.fleet.spec.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.fleet.spec.jobs)) or "none"
            raise NotFound(f"no job {name!r} in the spec (jobs: {known})",
                           hint="declare it as [jobs.NAME] in hinotori.toml") from None

    # -- starting: adopt what the last controller left, catch up what it missed ----------
    async def resume(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        watched = set()
        for row in self.runs.running():
            host = self._host(row["host"])
            if host is not None and host.state == HostState.JOB and await self._alive(host):
                watched.add(host.id)
                job = self.fleet.spec.jobs.get(row["job"])
                deadline = row["started_at"] + (job.timeout if job else 0.0)
                self._start(row["id"], _Active(row["job"], host),
                            self._watch(row["id"], host, deadline))
                continue
            code = await self._exit_status(host) if host is not None else None
            if host is not None and host.state.alive:
                await self.fleet.destroy([host], why=f"job run {row['id']} ended while the "
                                                     "controller was down")
            self._finish(row["id"], _result(code), code,
                         None if code is not None else "it ended while no controller watched "
                         "it: its exit status is unknown")
        # A job host no run names (booted just before its controller died): burned.
        strays = [h for h in self.fleet.store.hosts(states=[HostState.JOB])
                  if h.id not in watched]
        if strays:
            await self.fleet.destroy(strays, why="job host of no recorded run")
        for name, job in self.fleet.spec.jobs.items():
            cursor = self.runs.cursor(name)
            due = job.next_due(cursor) if cursor is not None else None
            if due is not None and due <= now:
                self.runs.set_cursor(name, now)
                if job.missed == "run-once":
                    await self.trigger(name, "missed", due=due, quiet=True)
                else:
                    self.store.record(ACTOR, "job.skipped", name, {
                        "why": "due while the controller was down (missed = \"skip\")",
                        "due": due})
            self._clock[name] = (job, job.next_due(now))

    def _host(self, host_id: str | None) -> Host | None:
        if host_id is None:
            return None
        try:
            return self.store.host(host_id)
        except NotFound:
            return None

    async def _alive(self, host: Host) -> bool:
        if host.provider not in self.fleet.providers:
            return False
        try:
            return await self.fleet.provider(host).adopt(host)
        except MachineUnreachable:
            return True  # its machine is away: the run's timeout still holds

    async def _exit_status(self, host: Host) -> int | None:
        provider = self.fleet.providers.get(host.provider)
        if not isinstance(provider, ExitStatus):
            return None
        with contextlib.suppress(HinotoriError):
            return await provider.exit_status(host)
        return None

    # -- the schedule ----------------------------------------------------------------------
    async def tick(self, now: float | None = None) -> None:
        """Start every run that came due (the "jobs" loop calls this when it wakes)."""
        now = time.time() if now is None else now
        jobs = self.fleet.spec.jobs
        for name in [n for n in self._clock if n not in jobs]:
            del self._clock[name]  # gone from the spec
        for name, job in jobs.items():
            known, due = self._clock.get(name, (None, 0.0))
            if known != job:  # new or changed in the spec: its clock starts now
                self._clock[name] = (job, job.next_due(now))
                continue
            if due > now:
                continue
            following = job.next_due(due)
            self._clock[name] = (job, following if following > now else job.next_due(now))
            self.runs.set_cursor(name, due)
            await self.trigger(name, "schedule", due=due, quiet=True)

    def spec_changed(self) -> None:
        """The controller reloaded a spec whose [jobs] differ: the loop looks at it at once."""
        self._changed.set()

    async def run(self) -> None:
        """The "jobs" loop: wakes at the next due moment, so a run starts within milliseconds
        of its time (at most TICK apart while jobs are declared: due moments are wall-clock
        times, and a step of the clock must not delay a run), or when the spec's jobs change.
        A controller without jobs sleeps until a reload brings some."""
        while True:
            if self._clock or self.fleet.spec.jobs:
                soonest = min((due for _, due in self._clock.values()), default=math.inf)
                wait: float | None = min(TICK, max(0.0, soonest - time.time()))
            else:
                wait = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            self._changed.clear()
            await self.tick()

    def next_due(self, name: str) -> float | None:
        entry = self._clock.get(name)
        return entry[1] if entry else None

    async def trigger(self, name: str, trigger: str, *, due: float | None = None,
                      quiet: bool = False, actor: str = ACTOR) -> int | None:
        """Start one run of ``name`` now; its run id. A run that must not start (no release
        yet, concurrency = "forbid" and one still running) is an event ``job.skipped``, and
        also an error unless ``quiet`` (a scheduled run)."""
        job = self.spec(name)
        current, _ = self.store.service_releases(job.service)
        if current is None:
            why = f"service {job.service} has no release deployed"
            self.store.record(actor, "job.skipped", name, {"why": why, "trigger": trigger})
            if quiet:
                return None
            raise NotFound(f"job {name} cannot run: {why}",
                           hint=f"deploy it first: `hinotori deploy {job.service}`")
        going = [run for run, a in self.active.items() if a.job == name]
        if going and job.concurrency == "forbid":
            why = f"run {going[0]} is still running (concurrency = \"forbid\")"
            self.store.record(actor, "job.skipped", name, {"why": why, "trigger": trigger})
            if quiet:
                return None
            raise LockedError(f"job {name} not started: {why}",
                              hint="wait for it (`hinotori jobs NAME`), or set concurrency = "
                                   "\"allow\" or \"replace\"")
        if job.concurrency == "replace":
            for run in going:
                self.active[run].replaced.set()
        release = self.store.release(job.service, current)
        run = self.runs.start(name, job.service, release.number, trigger=trigger, due=due,
                              actor=actor)
        active = _Active(name)
        self._start(run, active, self._boot_and_watch(run, active, job, release))
        return run

    def _start(self, run: int, active: _Active, work: Coroutine[Any, Any, None]) -> None:
        self.active[run] = active

        async def guarded() -> None:
            try:
                await work
            finally:
                self.active.pop(run, None)

        self.spawn(guarded(), f"job-{active.job}-{run}")

    # -- one run ---------------------------------------------------------------------------
    async def _boot_and_watch(self, run: int, active: _Active, job: JobSpec,
                              release: Release) -> None:
        started = time.time()
        try:
            host = await self.fleet.boot_job(job.service, release, active.job,
                                             tuple(job.command))
        except HinotoriError as e:
            self._finish(run, "failed", None, f"its host did not boot: {e.message}")
            return
        active.host = host
        self.runs.set_host(run, host.id)
        await self._watch(run, host, started + job.timeout)

    async def _watch(self, run: int, host: Host, deadline: float) -> None:
        """Wait for the host's command to exit (or the deadline, or a replacing run), then
        burn the host and record the run. Cancelled (the controller stops): the host runs on,
        and the next controller adopts it."""
        active = self.active[run]
        code, error = None, None
        while True:
            if active.replaced.is_set():
                state, error = "replaced", "a newer run replaced it (concurrency = \"replace\")"
                break
            if time.time() >= deadline:
                state = "timed-out"
                error = "it ran longer than its timeout: stopped (SIGTERM, then SIGKILL)"
                break
            if not await self._alive(host):
                code = await self._exit_status(host)
                state = _result(code)
                if code is None:
                    error = "its host is gone and its exit status unknown"
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.replaced.wait(), WATCH)
        await self.fleet.destroy([host], why=f"job run {run} {state}")
        self._finish(run, state, code, error)

    def _finish(self, run: int, state: str, code: int | None, error: str | None) -> None:
        row = self.runs.finish(run, state, actor=ACTOR, exit_code=code, error=error)
        if state in FAILURES:
            self.notifier.emit("job_failed", job=row["job"], run=run, result=state,
                               exit_code=code, host=row["host"], error=error,
                               duration_s=row["duration_s"])
        log.info("job %s run %d %s (exit %s)", row["job"], run, state, code)

    def torn_down(self) -> None:
        """`hinotori down` destroyed every host, job hosts included: their runs end here (no
        notification: the operator stopped them)."""
        for row in self.runs.running():
            self.runs.finish(row["id"], "lost", actor=ACTOR,
                             error="stopped by `hinotori down` before it ended")

    # -- what `hinotori jobs` shows ----------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        return job_rows(self.fleet.spec, self.runs, next_due=self.next_due)


def _result(code: int | None) -> str:
    if code is None:
        return "lost"
    return "succeeded" if code == 0 else "failed"


def job_rows(spec: Spec, runs: JobRuns, now: float | None = None,
             next_due: Callable[[str], float | None] | None = None) -> list[dict[str, Any]]:
    """Per job: its schedule, its last run and its next one. The next run is the controller's
    own (``next_due``) when it answers, else computed from the spec and the store."""
    now = time.time() if now is None else now
    rows = []
    for name, job in sorted(spec.jobs.items()):
        last = runs.runs(name, limit=1)
        nxt = next_due(name) if next_due else None
        if nxt is None:
            cursor = runs.cursor(name)
            nxt = job.next_due(cursor if cursor is not None else now)
            nxt = nxt if nxt > now else now  # missed: runs as a controller starts
        rows.append({"job": name, "service": job.service, "schedule": job.schedule,
                     "timezone": job.timezone, "every_s": job.every, "when": job.when,
                     "command": list(job.command), "timeout_s": job.timeout,
                     "concurrency": job.concurrency, "missed": job.missed,
                     "running": sum(1 for r in runs.running() if r["job"] == name),
                     "last_run": last[0] if last else None, "next_run": nxt})
    return rows


__all__ = ["RUNNING", "Jobs", "job_rows"]
