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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from hinotori.model import Host
from hinotori.providers.base import STDOUT, SourceFile


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


class ContainerLogSource:
    """Container hosts: the log file the engine writes on this machine (``host.data["log"]``,
    stdout and stderr framed by the engine, unframed here), while the container exists."""

    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        out = host.data.get("log")
        if not out or not Path(out).is_file():
            return []
        return [SourceFile(STDOUT, Path(out), unframe=lambda raw: decode(raw).text)]
