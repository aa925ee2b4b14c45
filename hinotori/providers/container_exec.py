"""The container provider's exec plumbing: a command run inside a container through the
Engine API's exec calls, stdin fed and stdout/stderr demultiplexed on the hijacked socket (the
SDK's exec_run cannot feed stdin)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Sequence
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
    from docker.utils.socket import STDERR, frames_iter

    sock = api.exec_start(exec_id, socket=True)
    raw = getattr(sock, "_sock", sock)  # SocketIO over the connection's socket
    out, err = bytearray(), bytearray()
    try:
        if stdin:
            raw.sendall(stdin)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)  # EOF on the command's stdin
        for stream, data in frames_iter(sock, tty=False):
            (err if stream == STDERR else out).extend(data)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        with contextlib.suppress(OSError):
            raw.close()
    return bytes(out), bytes(err)


def kill_exec(api: Any, exec_id: str) -> None:
    """SIGKILL a command run by exec that outlived its timeout. The Engine API has no call for
    it; the engine reports the command's pid on this machine (the engine is local: hosts are
    published on 127.0.0.1 only), so it is signalled directly."""
    with contextlib.suppress(Exception):
        pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
        if pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
