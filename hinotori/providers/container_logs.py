"""A container host's output as the engine writes it on this machine, line by line.

The container provider asks the engine for the ``json-file`` log driver, so a host's stdout and
stderr are in a file (``host.data["log"]``) that outlives a dead controller and can be shipped
like a process host's ``output.log``. Each engine frames the lines its own way, and Podman
reports ``json-file`` while writing its k8s-file format, so ``decode`` tells them apart by the
line itself (a JSON object, or a timestamp, a stream name and a flag):

    k8s-file   (Podman)  ``2026-11-25T10:20:51.226499416+00:00 stderr F the text``
               F is a full line; P a piece of a longer one (over conmon's 8 KiB buffer) or a
               last line without its newline.
    json-file  (Docker)  ``{"log":"the text\\n","stream":"stdout","time":"2026-…Z"}``
               a log value without the trailing newline is likewise a piece.

``decode`` turns one framed line into (stream, text, complete). Pieces are returned as they
are, each as a line of its own: joining them would tie a stored line to several file offsets,
and the shipper stores each line once by (stream, offset).

A host on another machine of the fleet has no log file here: its output is read through the
engine's log API (``engine_lines``: ``GET /containers/{id}/logs`` with timestamps, since a
time), as a ``SourceFeed`` the shipper positions by the engine's stamps (observe/logs/feeds).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from hinotori.model import Host
from hinotori.providers.base import STDOUT, SourceFeed, SourceFile

if TYPE_CHECKING:
    import docker


class EngineLine(NamedTuple):
    stream: str  # "stdout" or "stderr"
    text: str
    complete: bool  # False: a piece of a longer line, or a last line without its newline


def decode(raw: str) -> EngineLine:
    """One line of an engine's log file; a line in no known framing is kept whole as stdout
    (never dropped: a log line lost is worse than one with its framing left on)."""
    if raw.startswith("{"):
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("log"), str):
            text = doc["log"]
            stream = doc.get("stream") if doc.get("stream") in ("stdout", "stderr") else "stdout"
            complete = text.endswith("\n")
            return EngineLine(str(stream), text.removesuffix("\n").removesuffix("\r"), complete)
    parts = raw.split(" ", 3)
    if len(parts) >= 3 and parts[1] in ("stdout", "stderr") and parts[2] in ("F", "P") \
            and parts[0][:1].isdigit():
        return EngineLine(parts[1], parts[3] if len(parts) == 4 else "", parts[2] == "F")
    return EngineLine("stdout", raw, True)


FETCH_TIMEOUT = 10.0  # seconds for one log request: a machine cut off must not hold a pass


def stamp_ns(text: str) -> int:
    """An engine's RFC 3339 time with nanoseconds ("…T10:20:51.226499416Z" or "…+00:00") as
    unix nanoseconds, exactly (a float would lose the last digits)."""
    head, _, frac = text.partition(".")
    digits = "".join(c for c in frac[:9] if c.isdigit())
    zone = frac[len(digits):] if frac else head[19:]
    whole = datetime.fromisoformat(head[:19] + (zone.replace("Z", "+00:00") or "+00:00"))
    return int(whole.timestamp()) * 1_000_000_000 + int(digits.ljust(9, "0") or 0)


def _frames(body: bytes) -> list[bytes]:
    """The payloads of the engine's multiplexed stream (8-byte headers: stream, 0, 0, 0, size);
    a body not in that framing (a tty container) is one payload."""
    out, at = [], 0
    while at + 8 <= len(body) and body[at] in (0, 1, 2) and body[at + 1:at + 4] == b"\0\0\0":
        (size,) = struct.unpack(">I", body[at + 4:at + 8])
        out.append(body[at + 8:at + 8 + size])
        at += 8 + size
    return out if at == len(body) else [body]


def parse_logs(body: bytes) -> list[tuple[int, str]]:
    """A log API answer (timestamps on) as (stamp ns, text) lines, in the engine's order. A
    message without its newline (a piece of a long line) is a line of its own, as in decode."""
    lines = []
    for payload in filter(None, _frames(body)):
        # Split on newlines only, as a file is read (str.splitlines would also cut at \r,
        # \f and the other Unicode line breaks a host may print inside a line).
        for raw in payload.decode("utf-8", "replace").removesuffix("\n").split("\n"):
            stamp, _, text = raw.partition(" ")
            try:
                lines.append((stamp_ns(stamp), text))
            except ValueError:  # no stamp: keep the line at the previous one's time
                lines.append((lines[-1][0] if lines else 0, raw))
    return lines


def engine_lines(client: docker.DockerClient, container: str, since_ns: int
                 ) -> list[tuple[int, str]]:
    """Stdout and stderr of ``container`` stamped at or after ``since_ns``, oldest first."""
    import docker.errors

    api: Any = client.api
    params = {"stdout": 1, "stderr": 1, "timestamps": 1,
              "since": f"{since_ns // 1_000_000_000}.{since_ns % 1_000_000_000:09d}"}
    res = api._get(api._url("/containers/{0}/logs", container), params=params,
                   timeout=FETCH_TIMEOUT)
    try:
        api._raise_for_status(res)
    except docker.errors.NotFound:  # removed: what it wrote was shipped before, or is lost
        return []
    return parse_logs(res.content)


Engine = Callable[[Host], "docker.DockerClient"]


class ContainerLogSource:
    """Container hosts: the log file the engine writes on this machine (``host.data["log"]``,
    stdout and stderr framed by the engine, unframed here), while the container exists; for a
    host on another machine, its engine's log API through ``engine`` (the provider's client
    of the host's machine), which only a provider instance can give."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine

    def feeds(self, host: Host) -> list[SourceFeed]:
        cid = host.data.get("container")
        if self.engine is None or host.data.get("machine") is None or not cid:
            return []
        engine = self.engine
        return [SourceFeed(STDOUT, str(cid),
                           lambda since: engine_lines(engine(host), str(cid), since))]

    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        out = host.data.get("log")
        if not out or not Path(out).is_file():
            return []
        return [SourceFile(STDOUT, Path(out), unframe=lambda raw: decode(raw).text)]
