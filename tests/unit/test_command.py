"""hinotori.command: one runner for exec, hooks, Serf events and bake steps. Whatever ends a
call (the command exits, times out, the caller is cancelled), its whole process group is gone
afterwards, grandchildren included."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

from hinotori import command
from hinotori.bake.osimage.base import BaseSpec, bootstrap
from hinotori.bake.runsteps import RunStep
from hinotori.bake.stepbase import StepContext
from hinotori.deploy.hooks import run_hook
from hinotori.errors import BakeError
from hinotori.processes import CommandResult, log_tail, pid_alive, tail

# The shell records its own pid and its background child's; both sleep far past the test.
FAMILY = "sleep 30 & echo $! > {dir}/child; echo $$ > {dir}/main; wait"


def family(tmp_path: Path) -> list[str]:
    return ["sh", "-c", FAMILY.format(dir=tmp_path)]


async def pids_written(tmp_path: Path) -> list[int]:
    files = [tmp_path / "main", tmp_path / "child"]
    for _ in range(400):
        if all(f.exists() and f.read_text().strip() for f in files):
            return [int(f.read_text()) for f in files]
        await asyncio.sleep(0.025)
    raise AssertionError("the command never wrote its pids")


def test_cancelling_the_caller_kills_the_command_and_its_grandchild(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        task = asyncio.create_task(
            command.run(family(tmp_path), cwd=tmp_path, env=os.environ, output="combined"))
        pids = await pids_written(tmp_path)
        assert all(pid_alive(p) for p in pids)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids

    pids = asyncio.run(scenario())
    assert [p for p in pids if pid_alive(p)] == []


def test_a_timeout_kills_the_group_and_answers_124(tmp_path: Path) -> None:
    async def scenario() -> tuple[CommandResult, list[int]]:
        task = asyncio.create_task(command.run(
            ["sh", "-c", "echo started; " + FAMILY.format(dir=tmp_path)], cwd=tmp_path,
            env=os.environ, timeout=1, output="combined"))
        pids = await pids_written(tmp_path)
        return await task, pids

    result, pids = asyncio.run(scenario())
    assert result.timed_out and result.rc == command.TIMEOUT_RC and not result.succeeded
    assert result.tail() == ["started"]  # what it wrote before it was killed is kept
    assert [p for p in pids if pid_alive(p)] == []


def test_what_a_command_leaves_in_the_background_dies_when_it_exits(tmp_path: Path) -> None:
    # The main process exits at once; its child would hold stdout open for 30 s.
    result = asyncio.run(command.run(
        ["sh", "-c", f"sleep 30 & echo $! > {tmp_path}/child; echo done"], cwd=tmp_path,
        env=os.environ))
    assert result.succeeded and result.stdout == "done\n" and not result.timed_out
    assert not pid_alive(int((tmp_path / "child").read_text()))


def test_stdin_and_separate_streams(tmp_path: Path) -> None:
    script = "import sys; d = sys.stdin.read(); print(d.upper()); print('oops', file=sys.stderr)"
    result = asyncio.run(command.run([sys.executable, "-c", script], cwd=tmp_path,
                                     env=os.environ, stdin=b"hello"))
    assert (result.rc, result.stdout, result.stderr) == (0, "HELLO\n", "oops\n")
    assert result.tail(5) == ["HELLO", "oops"] and result.log is None
    big = b"x" * (1 << 20)  # more than a pipe holds: written while the output is read
    echoed = asyncio.run(command.run(["cat"], cwd=tmp_path, env=os.environ, stdin=big))
    assert echoed.stdout.encode() == big


def test_output_streams_to_a_file_and_the_sync_entry_shares_the_path(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    seen: list[CommandResult] = []
    # From a worker thread, as the controller bakes: a fresh loop there.
    worker = threading.Thread(target=lambda: seen.append(command.run_sync(
        ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; echo bad >&2; exit 3"],
        cwd=tmp_path, env=os.environ, output=log)))
    worker.start()
    worker.join()
    [result] = seen
    assert result.rc == 3 and result.log == log and result.stdout == result.stderr == ""
    assert log.read_text().splitlines()[-1] == "bad"
    assert result.tail(2) == ["line 5", "bad"]


def test_a_command_that_cannot_start_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        asyncio.run(command.run(["/nonexistent/program"], cwd=tmp_path, env=os.environ))


def test_one_tail_for_bytes_text_and_files(tmp_path: Path) -> None:
    assert tail(b"a\nb\n\nc\n", 2) == ["", "c"]
    assert tail("a\nb\n\nc\n", 2, skip_blank=True) == ["b", "c"]
    log = tmp_path / "log"
    log.write_bytes(b"old run\n" + b"\xff broken\n\nnew\n")
    assert tail(log, 5, offset=len(b"old run\n")) == ["\ufffd broken", "", "new"]
    assert log_tail(log, 8, empty="nothing") == "\ufffd broken | new"
    assert log_tail(log, log.stat().st_size, empty="nothing") == "nothing"
    assert log_tail(tmp_path / "missing", 0) == "(no log)"
    # A long log: only its end is read, and the partial first line is dropped.
    log.write_bytes(b"".join(b"%08d\n" % i for i in range(20000)))
    assert tail(log, 2) == ["00019998", "00019999"]
    assert all(len(line) == 8 for line in tail(log, 10**6))


def test_a_hook_keeps_its_messages(tmp_path: Path) -> None:
    slow = asyncio.run(run_hook("post_deploy", ["sh", "-c", "echo working; sleep 30"],
                                env={"X": "1"}, cwd=tmp_path, timeout=0.5))
    assert slow.rc == 124 and slow.output == "working\n(killed after 0.5s)"
    missing = asyncio.run(run_hook("pre_deploy", ["/nonexistent/hook"], env={}, cwd=tmp_path,
                                   timeout=5))
    assert missing.rc == 127 and "cannot run '/nonexistent/hook'" in missing.output
    failed = asyncio.run(run_hook("on_join", ["sh", "-c", "echo $X; echo err >&2; exit 4"],
                                  env={"X": "from-env"}, cwd=tmp_path, timeout=5))
    assert (failed.rc, failed.ok, failed.output) == (4, False, "from-env\nerr")


def test_a_cancelled_hook_leaves_nothing_running(tmp_path: Path) -> None:
    # `hinotori down` cancels the controller's tasks: an on_join hook still running must die.
    async def scenario() -> list[int]:
        task = asyncio.create_task(run_hook("on_join", family(tmp_path), env={}, cwd=tmp_path,
                                            timeout=60))
        pids = await pids_written(tmp_path)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids

    assert [p for p in asyncio.run(scenario()) if pid_alive(p)] == []


def test_a_failed_bake_step_shows_the_tail_of_its_log(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "logs").mkdir()
    ctx = StepContext(build_dir=tmp_path / "build", env=dict(os.environ), log_dir=tmp_path / "logs",
                      index=3)
    step = RunStep(run=f"seq 1 30; sleep 30 & echo $! > {tmp_path}/child; exit 5")
    with pytest.raises(BakeError) as failed:
        step.execute(ctx)
    message = failed.value.message
    assert message.startswith("step 3 (run: seq 1 30; sleep 30") and "exit code 5" in message
    assert "last 20 lines of output:\n  | 11\n" in message and message.endswith("  | 30")
    assert (tmp_path / "logs" / "step-3.log").read_text().count("\n") == 30
    assert not pid_alive(int((tmp_path / "child").read_text()))
    with pytest.raises(BakeError, match="could not start"):
        RunStep(run=("/nonexistent/tool",)).execute(ctx)


def test_a_failed_mmdebstrap_shows_the_tail_of_its_log(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "mmdebstrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"E: cannot reach $7\" >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    said: list[str] = []
    with pytest.raises(BakeError) as failed:
        bootstrap(BaseSpec(mirror="http://127.0.0.1:9/debian", arch="amd64"),
                  tmp_path / "base.tar", said.append)
    assert failed.value.message == (
        "mmdebstrap bookworm failed with exit code 2; last 1 lines of output:\n"
        "  | E: cannot reach http://127.0.0.1:9/debian")
