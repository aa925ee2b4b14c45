"""Reading whole lines from an offset of an append-only file.

Only complete lines are read from a live source: a line without its newline may still be
being written, and storing half of it would, with the (stream, offset) dedup, keep the wrong
half forever. At the end of a host's life (``final``) the partial tail is read too: nobody
will finish it. A line longer than one read is cut at the read size so a runaway writer can
never stall its stream.
"""

from __future__ import annotations

from typing import BinaryIO

from hinotori.observe.logs.store import Row

READ_SIZE = 1 << 20


def read_lines(fh: BinaryIO, offset: int, *, stream: int, ts: float, final: bool = False,
               size: int = READ_SIZE) -> tuple[list[Row], int]:
    """Rows (stream, offset, ts, text) of the lines starting at ``offset``, read with one
    read of at most ``size`` bytes, and the offset after the last byte consumed."""
    fh.seek(offset)
    data = fh.read(size)
    if not data:
        return [], offset
    end = data.rfind(b"\n") + 1
    at_eof = len(data) < size  # a short read of a regular file: nothing more is there now
    if (final and at_eof) or (end == 0 and not at_eof):
        end = len(data)  # the partial tail of a finished file, or one overlong line, cut
    if end == 0:
        return [], offset
    chunk = data[:end]
    parts = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        parts.pop()  # split() leaves an empty string after the last newline
    rows: list[Row] = []
    append = rows.append
    pos = offset
    for raw in parts:
        text = raw.decode("utf-8", "replace")
        append((stream, pos, ts, text[:-1] if text.endswith("\r") else text))
        pos += len(raw) + 1
    return rows, offset + end
