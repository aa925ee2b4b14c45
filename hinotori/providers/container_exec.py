"""The container provider's exec plumbing: a command run inside a container through the
Engine API's exec calls, stdin fed and stdout/stderr demultiplexed on the hijacked socket (the
SDK's exec_run cannot feed stdin)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from hinotori.errors import ProviderError
from hinotori.model import Host


def exec_create(api: Any, cid: str, argv: Sequence[str], host: Host) -> str:
    import docker.errors

    try:
        return api.exec_create(cid, list(argv), stdin=True, stdout=True, stderr=True)["Id"]
    except docker.errors.APIError as e:
        raise ProviderError(f"cannot run {argv[0]!r} in host {host.id}: "
                            f"{e.explanation or e}",
                            hint="the program must exist in the host's image or on its "
                                 "PATH") from None


def exec_io(api: Any, exec_id: str, stdin: bytes) -> tuple[bytes, bytes]:
    """Start the exec on a hijacked socket: write ``stdin``, half-close, and read the
    multiplexed stdout/stderr frames until the command closes them."""
    sock = api.exec_start(exec_id, socket=True)
    raw = getattr(sock, "_sock", sock)  # SocketIO over the connection's socket
    out, err = bytearray(), bytearray()
    try:
        if stdin:
            raw.sendall(stdin)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)  # EOF on the command's stdin
        for stream, data in frames(_reader(sock)):
            (err if stream == STDERR else out).extend(data)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        with contextlib.suppress(OSError):
            raw.close()
    return bytes(out), bytes(err)


STDERR = 2


def _reader(sock: Any) -> Any:
    """What to read the exec's output from: the HTTP response's buffered reader, not the
    socket under it. Reading the response's head, http.client fills that buffer with up to
    8 KiB, and a command that answers at once has its first output in it (or all of it): the
    SDK reads the bare socket and loses those bytes (docker-py#3332; a CI run saw an exec
    answer rc 0 with no output at all). The buffered reader hands out what it holds first."""
    response = getattr(sock, "_response", None)
    buffered = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
    return buffered if buffered is not None and getattr(buffered, "raw", None) is sock else sock


def frames(reader: Any) -> Iterator[tuple[int, bytes]]:
    """(stream, data) per frame of the Engine API's multiplexed stream (no tty): an 8-byte
    head (stream 1 stdout or 2 stderr, three zero bytes, a big-endian length), then data."""
    while True:
        head = _read(reader, 8)
        if len(head) < 8:
            return  # the command closed its output (a cut head: the connection ended)
        size = int.from_bytes(head[4:8], "big")
        data = _read(reader, size)
        yield head[0], data
        if len(data) < size:
            return


def _read(reader: Any, n: int) -> bytes:
    """``n`` bytes, fewer only at the end (a raw socket's read may return fewer at any time)."""
    got = bytearray()
    while len(got) < n:
        chunk = reader.read(n - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def kill_exec(api: Any, exec_id: str) -> None:
    """SIGKILL a command run by exec that outlived its timeout. The Engine API has no call for
    it; the engine reports the command's pid on this machine (the engine is local: hosts are
    published on 127.0.0.1 only), so it is signalled directly."""
    with contextlib.suppress(Exception):
        pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
        if pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
