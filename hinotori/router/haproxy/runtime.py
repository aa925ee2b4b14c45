"""HAProxy's Runtime API, over its Unix sockets: the worker's stats socket and the master's.

Worker socket: all the commands of one call go down one connection in interactive ("prompt")
mode, so they run in order and each answer comes back separately (split on the prompt); that is
one round trip for a whole batch, and an error can be pinned on the command that caused it.

Master socket (master-worker mode): one command per connection; the master only answers once
it sees the end of the input, hence the write shutdown.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

from hinotori.errors import RuntimeApiError as RuntimeApiError

CALL_TIMEOUT = 10.0

_SESSION = re.compile(r"^(0x[0-9a-f]+): .* be=(\S+) srv=(\S+) .* scb=\[(\d+),")
_ESTABLISHED = 8  # SC_ST_EST: the stream's server-side connection is up (its request went)

# What HAProxy answers when a command worked; anything else is an error message.
_QUIET_OK = ("", "New server registered.", "Server deleted.")
# What ``set server <s> addr <ip> port <port>`` answers when it worked: it says what changed
# ("IP changed from ..."; only the port: "no need to change the addr, port changed from ...").
_ADDR_OK = ("IP changed from ", "no need to change the addr")


async def _connect(path: Path, timeout: float
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.open_unix_connection(str(path))
    except (TimeoutError, OSError) as exc:
        raise RuntimeApiError(f"HAProxy's runtime socket {path} does not answer: {exc}",
                              hint="is HAProxy running? `hinotori up` starts it") from None


async def _exchange(path: Path, payload: bytes, timeout: float) -> str:
    reader, writer = await _connect(path, timeout)
    try:
        writer.write(payload)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(timeout):
            data = await reader.read()
    except (TimeoutError, OSError) as exc:
        raise RuntimeApiError(f"HAProxy's runtime socket {path} failed mid-call: {exc!r}",
                              hint="retry; if it persists, restart the router") from None
    finally:
        writer.close()
    return data.decode("utf-8", "replace")


CHUNK = 100  # commands written before their answers are read (HAProxy's buffers are 16 kB)


async def run(path: Path, commands: list[str], timeout: float = CALL_TIMEOUT) -> list[str]:
    """Run ``commands`` in order on the worker socket; their answers, one string each.

    In chunks of CHUNK on one connection, each chunk's answers read before the next is
    written: a whole batch written at once (thousands of servers) fills both directions'
    buffers, and HAProxy drops the connection."""
    if not commands:
        return []
    refuse_separators(commands)
    if len(commands) <= CHUNK:
        payload = ("prompt\n" + "".join(c + "\n" for c in commands) + "quit\n").encode()
        text = await _exchange(path, payload, timeout)
    else:
        text = await _chunked(path, commands, timeout)
    # Every answer is followed by the prompt "\n> "; the first one answers "prompt" itself.
    parts = text.split("\n> ")
    answers = [p.strip("\n") for p in parts[1:1 + len(commands)]]
    if len(answers) != len(commands):
        raise RuntimeApiError(
            f"HAProxy answered {len(answers)} of {len(commands)} runtime commands: {text[-300:]!r}",
            hint="the worker may have been reloading; apply again")
    return answers


def refuse_separators(commands: Sequence[str]) -> None:
    for c in commands:
        if "\n" in c or ";" in c:
            raise RuntimeApiError(f"refusing a runtime command with a separator in it: {c!r}")


async def read_prompts(reader: asyncio.StreamReader, received: list[bytes], prompts: int,
                       want: int) -> int:
    """Read into ``received`` until ``want`` prompts (an answer's end) were seen in all; the
    count seen (fewer if the connection closed)."""
    while prompts < want:
        data = await reader.read(65536)
        if not data:
            break
        tail = received[-1][-2:] if received else b""
        prompts += (tail + data).count(b"\n> ")
        received.append(data)
    return prompts


async def _chunked(path: Path, commands: list[str], timeout: float) -> str:
    reader, writer = await _connect(path, timeout)
    received: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            prompts, sent = 0, 0
            writer.write(b"prompt\n")
            while sent < len(commands):
                chunk = commands[sent:sent + CHUNK]
                sent += len(chunk)
                writer.write("".join(c + "\n" for c in chunk).encode())
                await writer.drain()
                # The answers of everything sent so far (and of "prompt" itself).
                prompts = await read_prompts(reader, received, prompts, 1 + sent)
                if prompts < 1 + sent:
                    break  # closed early: run() reports the answers missing
            writer.write(b"quit\n")
            await writer.drain()
            received.append(await reader.read())
    except (TimeoutError, OSError) as exc:
        raise RuntimeApiError(f"HAProxy's runtime socket {path} failed mid-call: {exc!r}",
                              hint="retry; if it persists, restart the router") from None
    finally:
        writer.close()
    return b"".join(received).decode("utf-8", "replace")


async def run_payload(path: Path, command: str, payload: str, *, then: Sequence[str] = (),
                      timeout: float = CALL_TIMEOUT) -> list[str]:
    """``command <<`` with a multi-line ``payload`` (ended by an empty line), then the commands
    of ``then``, on one connection; the answers, one string each (``set ssl cert``)."""
    body = "\n".join(line for line in payload.splitlines() if line.strip())
    for c in (command, *then):
        if "\n" in c or ";" in c:
            raise RuntimeApiError(f"refusing a runtime command with a separator in it: {c!r}")
    text = await _exchange(path, (f"prompt\n{command} <<\n{body}\n\n"
                                  + "".join(c + "\n" for c in then) + "quit\n").encode(), timeout)
    answers = [p.strip("\n") for p in text.split("\n> ")[1:2 + len(then)]]
    if len(answers) != 1 + len(then):
        raise RuntimeApiError(f"HAProxy answered {len(answers)} of {1 + len(then)} runtime "
                              f"commands: {text[-300:]!r}", hint="retry")
    return answers


async def run_checked(path: Path, commands: list[str], timeout: float = CALL_TIMEOUT) -> None:
    """Run commands that answer nothing (or a fixed "done") when they work; raise on any other
    answer, naming the command."""
    check(commands, await run(path, commands, timeout))


def check(commands: list[str], answers: list[str]) -> None:
    """Raise, naming the commands, unless every answer says its command worked."""
    failed = [f"`{c}`: {a}" for c, a in zip(commands, answers, strict=True)
              if a.strip() not in _QUIET_OK and not a.strip().startswith(_ADDR_OK)]
    if failed:
        raise RuntimeApiError("HAProxy refused runtime commands: " + "; ".join(failed[:5]),
                              hint="the router state may be partly applied; apply again")


async def master(path: Path, command: str, timeout: float = CALL_TIMEOUT) -> str:
    """One command on the master CLI (``show proc``, ``reload``, ``@!<pid> show stat``...)."""
    return await _exchange(path, (command + "\n").encode(), timeout)


def parse_info(text: str) -> dict[str, str]:
    """``show info`` -> {"Pid": "123", "Uptime_sec": "5", ...}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_proc(text: str) -> tuple[int | None, list[int], list[int]]:
    """``show proc`` on the master -> (master pid, current worker pids, old worker pids)."""
    master_pid: int | None = None
    current: list[int] = []
    old: list[int] = []
    section = "master"
    for line in text.splitlines():
        if line.startswith("# workers"):
            section = "current"
            continue
        if line.startswith("# old workers"):
            section = "old"
            continue
        if line.startswith("# programs"):
            section = "programs"
            continue
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue
        pid = int(fields[0])
        if section == "master" and len(fields) > 1 and fields[1] == "master":
            master_pid = pid
        elif section == "current" and fields[1:2] == ["worker"]:
            current.append(pid)
        elif section == "old" and fields[1:2] == ["worker"]:
            old.append(pid)
    return master_pid, current, old


def established_sessions(text: str, servers: set[str]) -> list[str]:
    """``show sess`` -> the ids of the streams on ``servers`` (``backend/server``) whose
    connection to it is established. A stream still connecting is left alone: killing it
    closes its client connection unanswered, while its connect timeout would redispatch it."""
    out = []
    for line in text.splitlines():
        m = _SESSION.match(line)
        if m and f"{m[2]}/{m[3]}" in servers and int(m[4]) == _ESTABLISHED:
            out.append(m[1])
    return out
