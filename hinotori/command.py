"""One way to run a command: hosts' ``exec``, deployment and membership hooks (Serf events
included) and bake run steps all come through :func:`run`.

A command runs in its own session (so in its own process group) with exactly the environment
it is given, never through a shell unless its argv says so. It ends when its main process
exits, and however the call ends (the command exited, timed out, the calling task was
cancelled, an exception) the WHOLE process group is then killed with SIGKILL, and the call
returns (or raises) only once no process of the group runs: nothing a command started in the
background outlives it or keeps writing after it was measured. A command that must leave a
process running has to start it in a session of its own (``setsid``).

Output is captured in memory (``"separate"``: stdout and stderr apart; ``"combined"``:
together, as a terminal shows them) or streamed to a file as it is written (``output=Path``):
a bake step's log is read only for its tail when the step fails.

A command that runs past its timeout gets rc 124 (as coreutils' ``timeout`` does) and
``timed_out``; a command that cannot be started raises the OSError from exec for the caller
to put in its own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, cast

# Defined beside the other process helpers, which the CLI imports without asyncio.
from hinotori.processes import CommandResult as CommandResult
from hinotori.processes import group_alive
from hinotori.processes import tail as tail

TIMEOUT_RC = 124
_GONE_WAIT = 5.0  # how long SIGKILLed members may take to die (they cannot resist it)
_PIPE_GRACE = 2.0  # after the group is killed, how long a pipe may stay open (held by a
# process that moved to a session of its own) before its output is given up

Output = Literal["separate", "combined"] | Path


async def run(argv: Sequence[str], *, cwd: str | Path | None, env: Mapping[str, str],
              stdin: bytes | None = None, timeout: float | None = None,
              output: Output = "separate") -> CommandResult:
    """Run ``argv`` as described in the module docstring, in ``cwd`` (None: ours).
    ``stdin=None`` gives the command /dev/null; bytes are written to a pipe that is then
    closed."""
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    with contextlib.ExitStack() as files:
        sink = files.enter_context(open(output, "wb")) if isinstance(output, Path) else None
        spawning = asyncio.ensure_future(loop.subprocess_exec(
            lambda: _Collector(loop), *argv, cwd=cwd, env=dict(env),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=sink if sink is not None else subprocess.PIPE,
            stderr=subprocess.PIPE if output == "separate" else subprocess.STDOUT,
            start_new_session=True))
        try:
            transport, proto = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # Cancelled while asyncio still connected the pipes: the command (and whatever it
            # started) already runs. asyncio would kill only its main process.
            with contextlib.suppress(Exception):
                transport, proto = await spawning
                kill_group(transport.get_pid())
                await _reap(transport, proto, transport.get_pid())
            raise
    pid = transport.get_pid()
    timed_out = False
    try:
        if stdin is not None:
            pipe = transport.get_pipe_transport(0)
            if pipe is not None:
                pipe.write(stdin)
                pipe.close()  # flushes, then closes: the command sees EOF
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(proto.exited)
        except TimeoutError:
            timed_out = True
    finally:
        # Exited, timed out, cancelled or failed: nothing of the command outlives the call.
        kill_group(pid)
        await _reap(transport, proto, pid)
    rc = transport.get_returncode()
    return CommandResult(
        rc=TIMEOUT_RC if timed_out else (rc if rc is not None else -signal.SIGKILL),
        stdout=bytes(proto.output[1]).decode("utf-8", "replace"),
        stderr=bytes(proto.output[2]).decode("utf-8", "replace"),
        timed_out=timed_out, duration=time.monotonic() - began,
        log=output if isinstance(output, Path) else None)


def run_sync(argv: Sequence[str], *, cwd: str | Path | None, env: Mapping[str, str],
             stdin: bytes | None = None, timeout: float | None = None,
             output: Output = "separate") -> CommandResult:
    """:func:`run` for synchronous code (bake steps, in the CLI or a worker thread): the same
    coroutine in a fresh event loop. Ctrl-C cancels it, which kills the group."""
    return asyncio.run(run(argv, cwd=cwd, env=env, stdin=stdin, timeout=timeout,
                           output=output))


def kill_group(pgid: int) -> None:
    """SIGKILL every process in group ``pgid``; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _reap(transport: asyncio.SubprocessTransport, proto: _Collector, pgid: int) -> None:
    try:
        await proto.exited  # SIGKILLed above: at once
        for _ in range(int(_GONE_WAIT / 0.01)):  # the rest of the group dies a moment later
            if not group_alive(pgid):
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_PIPE_GRACE):
                await proto.closed
    finally:
        transport.close()


class _Collector(asyncio.SubprocessProtocol):
    """Keeps the output in memory and says when the main process exited (asyncio's own
    ``Process.wait()`` also waits for every pipe to close, which a background process holding
    stdout would delay until it ended)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.output = {1: bytearray(), 2: bytearray()}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # every output pipe closed
        self._open: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A SubprocessTransport, though uvloop's (the controller's loop) is not a subclass.
        process = cast(asyncio.SubprocessTransport, transport)
        self._open = {fd for fd in (1, 2) if process.get_pipe_transport(fd) is not None}
        self._check_closed()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        self.output[fd] += data

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        self._check_closed()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def _check_closed(self) -> None:
        if not self._open and not self.closed.done():
            self.closed.set_result(None)
