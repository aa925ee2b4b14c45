"""The controller's loops under guard (hinotori/controller/tasks.py), a heal that fails in an
unexpected way, and the private engine's pid check: with a real Store, no controller."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hinotori.controller.burning import private_engine_pid, stop_private_engine
from hinotori.controller.healing import HEAL_BACKOFF, Healing
from hinotori.controller.tasks import Tasks, every
from hinotori.deploy.locks import ServiceLocks
from hinotori.model import ReleaseConfig
from hinotori.processes import pid_alive
from hinotori.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def tasks_for(store: Store, **backoff: float) -> Tasks:
    return Tasks(lambda action, subject, detail: store.record("controller", action, subject,
                                                              detail), **backoff)


def failed(store: Store, action: str = "controller.loop-failed") -> list[dict[str, Any]]:
    return [e.detail for e in store.events(action=action)]


def test_a_failing_loop_restarts_with_backoff_and_another_keeps_running(store: Store) -> None:
    async def scenario() -> tuple[int, int]:
        tasks = tasks_for(store, backoff_min=0.001, backoff_max=0.004, healthy_after=60.0)
        attempts, steady = [0], [0]
        fifth = asyncio.Event()
        at_first_failure: list[int] = []

        async def flaky() -> None:
            attempts[0] += 1
            if attempts[0] == 5:
                fifth.set()
                await asyncio.Event().wait()  # healthy from now on
            if attempts[0] == 1:
                at_first_failure.append(steady[0])
            raise RuntimeError(f"boom {attempts[0]}")

        async def once() -> None:
            steady[0] += 1

        tasks.loop("flaky", flaky)
        tasks.loop("steady", every(0, once))
        await asyncio.wait_for(fifth.wait(), 10)
        await asyncio.sleep(0.01)
        assert not tasks.loops["steady"].done() and not tasks.loops["flaky"].done()
        await tasks.stop()
        assert tasks.loops == {}
        return at_first_failure[0], steady[0]

    before, after = asyncio.run(scenario())
    assert after > before  # the steady loop ran on while the other failed four times
    events = failed(store)
    assert [e["loop"] for e in events] == ["flaky"] * 4
    assert [e["error"] for e in events] == [repr(RuntimeError(f"boom {i}")) for i in range(1, 5)]
    # Doubling from backoff_min, capped at backoff_max.
    assert [e["restart_in_s"] for e in events] == [0.001, 0.002, 0.004, 0.004]
    assert store.events(action="controller.loop-failed")[0].subject == "controller/flaky"


def test_backoff_starts_afresh_after_a_healthy_spell(store: Store) -> None:
    async def scenario() -> None:
        # healthy_after=0: every run counts as a healthy spell before it failed.
        tasks = tasks_for(store, backoff_min=0.001, backoff_max=1.0, healthy_after=0.0)
        runs = [0]
        done = asyncio.Event()

        async def body() -> None:
            runs[0] += 1
            if runs[0] == 4:
                done.set()
                return  # a body that returns ends its loop, without an event
            raise ValueError("again")

        task = tasks.loop("l", body)
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert [e["restart_in_s"] for e in failed(store)] == [0.001, 0.001, 0.001]


def test_a_spawned_task_that_fails_is_recorded_and_cancellation_is_not(store: Store) -> None:
    async def scenario() -> None:
        tasks = tasks_for(store)

        async def broken() -> None:
            raise KeyError("missing")

        async def fine() -> int:
            return 1

        async def slow() -> None:
            await asyncio.sleep(60)

        bad = tasks.spawn(broken(), "heal web")
        good = tasks.spawn(fine(), "fine")
        await asyncio.gather(bad, good, return_exceptions=True)
        tasks.spawn(slow(), "slow")
        await asyncio.sleep(0)
        await tasks.stop()

    asyncio.run(scenario())
    assert failed(store, "controller.task-failed") == [
        {"task": "heal web", "error": repr(KeyError("missing"))}]


def test_stop_keeps_the_named_loops_for_later(store: Store) -> None:
    async def scenario() -> None:
        tasks = tasks_for(store)
        forever = asyncio.Event()
        kept = tasks.loop("logs", forever.wait)
        other = tasks.loop("monitor", forever.wait)
        await tasks.stop(keep=("logs",))
        assert other.cancelled() and not kept.done()
        await tasks.cancel("logs")
        assert kept.cancelled()

    asyncio.run(scenario())
    assert failed(store) == []


def test_stop_ends_a_loop_whose_cancellation_was_lost(store: Store,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancellation swallowed on its way (as Python 3.11's wait_for can when the awaited
    thing completes at that moment) must not leave the stop waiting for ever."""
    monkeypatch.setattr("hinotori.controller.tasks.CANCEL_AGAIN_AFTER", 0.01)
    swallowed: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(0.001)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(1)  # the first cancellation is lost; the loop carries on

    async def scenario() -> asyncio.Task[None]:
        tasks = tasks_for(store)
        loop = tasks.loop("monitor", stubborn)
        await asyncio.sleep(0.01)
        async with asyncio.timeout(30):  # a guard against hanging the suite, not a figure
            await tasks.stop()
        return loop

    assert asyncio.run(scenario()).cancelled()
    assert swallowed == [1]


def _release(store: Store) -> int:
    config = ReleaseConfig(command=("true",))
    return store.create_release("web", "sha256:x", config, actor="t", reason="t").number


def test_a_heal_that_fails_unexpectedly_is_recorded_and_backs_off(store: Store) -> None:
    number = _release(store)

    async def boot_healthy(*_: Any) -> None:
        raise ZeroDivisionError("a bug")

    fleet = SimpleNamespace(store=store, boot_healthy=boot_healthy)
    healing = Healing(fleet, ServiceLocks(), spawn=lambda c, n: None)  # type: ignore[arg-type]

    async def twice() -> None:
        await healing.heal("web", number, 1)
        await healing.heal("web", number, 1)

    asyncio.run(twice())
    events = failed(store, "service.heal-failed")
    assert [e["error"] for e in events] == [repr(ZeroDivisionError("a bug"))] * 2
    assert [e["retry_in_s"] for e in events] == [HEAL_BACKOFF, 2 * HEAL_BACKOFF]
    assert healing._heal_after["web"] > 0


def test_teardown_stops_only_the_engine_this_project_started(tmp_path: Path,
                                                             store: Store) -> None:
    """A real process stands in for `podman system service`: it carries the socket's URL in
    its argv, as the real one does; a process without it is never ours to stop."""
    sock = tmp_path / "podman.sock"
    code = "import time; time.sleep(60)"
    ours = subprocess.Popen([sys.executable, "-c", code, f"unix://{sock}"])
    stranger = subprocess.Popen([sys.executable, "-c", code])
    try:
        (tmp_path / "podman.pid").write_text(f"{stranger.pid}\n")
        assert private_engine_pid(tmp_path) is None
        asyncio.run(stop_private_engine(tmp_path, store))
        assert pid_alive(stranger.pid) and not (tmp_path / "podman.pid").exists()

        (tmp_path / "podman.pid").write_text(f"{ours.pid}\n")
        assert private_engine_pid(tmp_path) == ours.pid
        asyncio.run(stop_private_engine(tmp_path, store))
        assert ours.wait(timeout=30) is not None
        assert not (tmp_path / "podman.pid").exists()
        assert [e.detail["pid"] for e in store.events(action="engine.stopped")] == [ours.pid]
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait()
