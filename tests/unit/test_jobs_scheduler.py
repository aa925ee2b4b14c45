"""The controller's jobs on the fakes (in-memory provider and router, a real SQLite store): the
schedule, the overlap policies, a run's end, and what a starting controller adopts or catches
up. Moments are handed in (``now``), so nothing here waits for a clock; the integration tests
run the same code against real process hosts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hinotori.controller.jobs import Jobs, job_rows
from hinotori.deploy.base import Control, StrategyRun
from hinotori.deploy.strategies import STRATEGIES
from hinotori.errors import LockedError, NotFound
from hinotori.model import HostState
from hinotori.spec import parse_spec
from hinotori.store.jobs import JobRuns
from tests.support_fakes import SPEC, World, world

JOBS = """
[jobs.report]
service = "web"
command = ["python3", "report.py", "--all"]
every = "60s"
{extra}
"""


class Notes:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, **detail: Any) -> None:
        self.sent.append((event, detail))


def setup(tmp_path: Path, extra: str = "", *, release: bool = True
          ) -> tuple[World, Jobs, Notes]:
    w = world(tmp_path, replicas=1)
    w.fleet.spec = parse_spec(SPEC.format(replicas=1) + JOBS.format(extra=extra))
    if release:
        deploy_v1(w)
    notes = Notes()

    def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro, name=name)

    return w, Jobs(w.fleet, notes, spawn), notes  # type: ignore[arg-type]


def deploy_v1(w: World) -> None:
    v1 = w.release()
    w.store.set_service_releases("web", v1.number, None, actor="test", why="deployed")


async def until(ok: Callable[[], bool]) -> None:
    for _ in range(2000):
        if ok():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


def actions(w: World, prefix: str) -> list[Any]:
    return w.store.events(action=prefix, limit=1000)


def run_host(jobs: Jobs, run: int) -> str:
    return jobs.runs.run(run)["host"]


def test_a_due_run_boots_its_own_job_host_and_burns_it_when_it_exits(tmp_path: Path) -> None:
    w, jobs, notes = setup(tmp_path)

    async def scenario() -> None:
        await jobs.resume(now=1000.0)
        assert jobs.next_due("report") == 1060.0
        await jobs.tick(now=1059.0)
        assert jobs.runs.runs() == []  # not due yet
        await jobs.tick(now=1060.0)
        (run,) = jobs.runs.runs()
        assert (run["trigger"], run["due"], run["release"]) == ("schedule", 1060.0, 1)
        await until(lambda: run_host(jobs, run["id"]) is not None)
        host = w.store.host(run_host(jobs, run["id"]))
        assert host.state == HostState.JOB and host.data["job"] == "report"
        request = w.provider.requests[host.id]
        assert request.argv == ("python3", "report.py", "--all")  # the job's, not the app's
        assert (request.job, request.release.number) == ("report", 1)
        assert jobs.next_due("report") == 1120.0  # start-to-start
        w.provider.die(host.id, 0)
        await until(lambda: jobs.runs.run(run["id"])["state"] != "running")
        done = jobs.runs.run(run["id"])
        assert (done["state"], done["exit_code"]) == ("succeeded", 0)
        assert w.store.host(host.id).state == HostState.DESTROYED
        assert ("destroy", host.id) in w.provider.calls
        assert notes.sent == []  # only failures are notified
        assert [e.subject for e in actions(w, "job.succeeded")] == [f"report/{run['id']}"]

    asyncio.run(scenario())


def test_a_job_host_is_never_routed(tmp_path: Path) -> None:
    w, jobs, _ = setup(tmp_path)

    async def scenario() -> None:
        await STRATEGIES["blue-green"]().run(StrategyRun(
            fleet=w.fleet, release=w.store.release("web", 1), progress=w.progress, spec=None,
            control=Control()))
        (serving,) = w.fleet.hosts("web", HostState.SERVING)
        run = await jobs.trigger("report", "manual")
        assert run is not None
        await until(lambda: run_host(jobs, run) is not None)
        await w.fleet.sync_router()
        (route,) = w.fleet.routing_table(99).routes
        assert [b.host_id for b in route.backends] == [serving.id]  # the job host: never
        assert list(w.router.serving("web")) == [serving.id]
        assert w.fleet.place("web", w.store.release("web", 1), 1) == [None]
        w.provider.die(run_host(jobs, run), 1)
        await until(lambda: not jobs.active)

    asyncio.run(scenario())


def test_no_release_skips_with_an_event(tmp_path: Path) -> None:
    w, jobs, _ = setup(tmp_path, release=False)

    async def scenario() -> None:
        await jobs.resume(now=1000.0)
        await jobs.tick(now=1060.0)
        assert jobs.runs.runs() == [] and w.provider.calls == []
        (skipped,) = actions(w, "job.skipped")
        assert "no release" in skipped.detail["why"]
        with pytest.raises(NotFound, match="no release"):
            await jobs.trigger("report", "manual")
        with pytest.raises(NotFound, match="no job 'nope'"):
            await jobs.trigger("nope", "manual")

    asyncio.run(scenario())


@pytest.mark.parametrize("policy", ["forbid", "allow", "replace"])
def test_overlap_policies(tmp_path: Path, policy: str) -> None:
    w, jobs, _ = setup(tmp_path, f'concurrency = "{policy}"')

    async def scenario() -> None:
        first = await jobs.trigger("report", "schedule", quiet=True)
        await until(lambda: run_host(jobs, first) is not None)  # type: ignore[arg-type]
        second = await jobs.trigger("report", "schedule", quiet=True)
        if policy == "forbid":
            assert second is None and len(jobs.active) == 1
            assert "still running" in actions(w, "job.skipped")[0].detail["why"]
            with pytest.raises(LockedError, match="concurrency"):
                await jobs.trigger("report", "manual")
        elif policy == "allow":
            assert second is not None
            await until(lambda: run_host(jobs, second) is not None)
            assert {h.state for h in w.store.hosts("web")} == {HostState.JOB}
            assert len(w.store.hosts("web")) == 2  # side by side
        else:
            assert second is not None
            await until(lambda: jobs.runs.run(first)["state"] != "running")  # type: ignore[arg-type]
            assert jobs.runs.run(first)["state"] == "replaced"  # type: ignore[arg-type]
            assert jobs.runs.run(second)["state"] == "running"
        for host in w.provider.live():
            w.provider.die(host.id, 0)
        await until(lambda: not jobs.active)

    asyncio.run(scenario())


def test_a_failing_run_is_an_event_and_a_notification(tmp_path: Path) -> None:
    w, jobs, notes = setup(tmp_path)

    async def scenario() -> None:
        run = await jobs.trigger("report", "manual", actor="token")
        await until(lambda: run_host(jobs, run) is not None)  # type: ignore[arg-type]
        w.provider.die(run_host(jobs, run), 2)  # type: ignore[arg-type]
        await until(lambda: not jobs.active)
        assert jobs.runs.run(run)["state"] == "failed"  # type: ignore[arg-type]
        (failed,) = actions(w, "job.failed")
        assert failed.detail["exit_code"] == 2 and failed.detail["result"] == "failed"
        assert [e.actor for e in actions(w, "job.started")] == ["token"]
        ((event, detail),) = notes.sent
        assert event == "job_failed" and detail["job"] == "report" and detail["exit_code"] == 2

    asyncio.run(scenario())


def test_a_host_that_cannot_boot_fails_the_run(tmp_path: Path) -> None:
    w, jobs, notes = setup(tmp_path)
    w.provider.boot_failures_left = 1

    async def scenario() -> None:
        run = await jobs.trigger("report", "manual")
        await until(lambda: not jobs.active)
        row = jobs.runs.run(run)  # type: ignore[arg-type]
        assert row["state"] == "failed" and "did not boot" in row["error"]
        assert notes.sent[0][0] == "job_failed"

    asyncio.run(scenario())


@pytest.mark.parametrize(("missed", "runs_once"), [("run-once", True), ("skip", False)])
def test_a_run_missed_while_no_controller_ran(tmp_path: Path, missed: str,
                                              runs_once: bool) -> None:
    w, jobs, _ = setup(tmp_path, f'missed = "{missed}"')
    JobRuns(w.store).set_cursor("report", 100.0)  # last due at 100; down until 1000

    async def scenario() -> None:
        await jobs.resume(now=1000.0)
        rows = jobs.runs.runs()
        if runs_once:
            assert [(r["trigger"], r["due"]) for r in rows] == [("missed", 160.0)]  # once
        else:
            assert rows == []
            assert "controller was down" in actions(w, "job.skipped")[0].detail["why"]
        assert jobs.next_due("report") == 1060.0
        assert jobs.runs.cursor("report") == 1000.0
        await until(lambda: bool(w.provider.live()) == runs_once)
        for host in w.provider.live():
            w.provider.die(host.id, 0)
        await until(lambda: not jobs.active)

    asyncio.run(scenario())


def test_a_starting_controller_adopts_running_job_hosts_and_records_ended_ones(
        tmp_path: Path) -> None:
    w, jobs, _ = setup(tmp_path)

    async def scenario() -> None:
        still = await jobs.trigger("report", "manual")
        await until(lambda: run_host(jobs, still) is not None)  # type: ignore[arg-type]
        # The controller dies: its tasks with it, the hosts and the rows stay.
        for task in [t for t in asyncio.all_tasks() if t.get_name().startswith("job-")]:
            task.cancel()
        await until(lambda: not jobs.active)
        ended = w.store.hosts("web", [HostState.JOB])[0]
        w.provider.die(ended.id, 7)
        still_host = run_host(jobs, still)  # type: ignore[arg-type]
        assert still_host == ended.id
        # A second run whose host is still alive when the next controller starts:
        w.fleet.spec = parse_spec(SPEC.format(replicas=1) + JOBS.format(
            extra='concurrency = "allow"'))
        nxt = Jobs(w.fleet, Notes(), jobs.spawn)  # type: ignore[arg-type]
        alive = await nxt.trigger("report", "manual")
        await until(lambda: run_host(nxt, alive) is not None)  # type: ignore[arg-type]
        for task in [t for t in asyncio.all_tasks() if t.get_name().startswith("job-")]:
            task.cancel()
        await until(lambda: not nxt.active)

        restarted = Jobs(w.fleet, Notes(), jobs.spawn)  # type: ignore[arg-type]
        await restarted.resume(now=1000.0)
        gone = restarted.runs.run(still)  # type: ignore[arg-type]
        assert (gone["state"], gone["exit_code"]) == ("failed", 7)  # its status, read back
        assert w.store.host(ended.id).state == HostState.DESTROYED
        assert list(restarted.active) == [alive]  # watched on, not burned
        w.provider.die(run_host(restarted, alive), 0)  # type: ignore[arg-type]
        await until(lambda: not restarted.active)
        assert restarted.runs.run(alive)["state"] == "succeeded"  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_rows_show_the_schedule_the_last_run_and_the_next(tmp_path: Path) -> None:
    w, jobs, _ = setup(tmp_path)
    runs = JobRuns(w.store)
    (row,) = job_rows(w.fleet.spec, runs, now=1000.0)
    assert (row["job"], row["when"], row["last_run"], row["next_run"]) == (
        "report", "every 60s", None, 1060.0)
    runs.set_cursor("report", 990.0)
    assert job_rows(w.fleet.spec, runs, now=1000.0)[0]["next_run"] == 1050.0
    runs.set_cursor("report", 100.0)  # missed: it runs as a controller starts
    assert job_rows(w.fleet.spec, runs, now=1000.0)[0]["next_run"] == 1000.0
    run = runs.start("report", "web", 1, trigger="manual", due=None, actor="test")
    assert job_rows(w.fleet.spec, runs, now=1000.0)[0]["running"] == 1
    runs.finish(run, "succeeded", actor="test", exit_code=0)
    last = job_rows(w.fleet.spec, runs, now=1000.0)[0]["last_run"]
    assert (last["state"], last["exit_code"], last["release_name"]) == ("succeeded", 0, "v1")
    assert jobs.rows()[0]["job"] == "report"


def test_down_ends_the_runs_it_stopped_without_a_notification(tmp_path: Path) -> None:
    w, jobs, notes = setup(tmp_path)

    async def scenario() -> None:
        run = await jobs.trigger("report", "manual")
        await until(lambda: run_host(jobs, run) is not None)  # type: ignore[arg-type]
        for task in [t for t in asyncio.all_tasks() if t.get_name().startswith("job-")]:
            task.cancel()  # the controller's tasks stop first, then its hosts
        await until(lambda: not jobs.active)
        await w.fleet.destroy(w.store.hosts("web", [HostState.JOB]), why="hinotori down")
        jobs.torn_down()
        row = jobs.runs.run(run)  # type: ignore[arg-type]
        assert row["state"] == "lost" and "hinotori down" in row["error"]
        assert notes.sent == []

    asyncio.run(scenario())
