"""The mask relay between a process host with secrets and its output.log (run as a script).

``python -I maskpipe.py FD``: reads the secret values (a JSON list) from file descriptor FD, then
copies stdin (the host's stdout and stderr) to stdout (output.log, opened for appending) with
every occurrence of a value replaced by ``***``, so a value a host prints is never written under
.hinotori/. It runs in a session of its own and outlives the controller, as the host does, and
ends at EOF: when every process of the host has closed its output.

Lines are written as they complete; a line longer than ``LIMIT`` bytes is written in pieces cut
so that no occurrence of a value is ever split between two pieces. Standard library only: it is
started by path, with the interpreter isolated (``-I``).
"""

from __future__ import annotations

import json
import os
import re
import sys

LIMIT = 1 << 16
MASK = b"***"


def pattern(values: list[str]) -> re.Pattern[bytes] | None:
    alts = sorted({v.encode() for v in values if v}, key=len, reverse=True)
    return re.compile(b"|".join(map(re.escape, alts))) if alts else None


def cut(buf: bytes, found: re.Pattern[bytes] | None, longest: int, final: bool) -> int:
    """How many bytes of ``buf`` may be masked and written now."""
    if final:
        return len(buf)
    nl = buf.rfind(b"\n")
    if nl >= 0:
        return nl + 1
    if len(buf) < LIMIT:
        return 0
    at = len(buf) - max(longest - 1, 0)  # a value ending past the buffer starts after `at`
    for m in found.finditer(buf) if found else ():
        if m.start() < at < m.end():
            return m.start()  # never split an occurrence
    return at


def relay(src: int, dst: int, found: re.Pattern[bytes] | None, longest: int,
          values: tuple[bytes, ...] = ()) -> None:
    buf = b""
    while True:
        data = os.read(src, LIMIT)
        buf += data
        n = cut(buf, found, longest, final=not data)
        if n:
            out = buf[:n]
            if found and any(v in out for v in values):  # a plain search first: 4-10x faster
                out = found.sub(MASK, out)
            view = memoryview(out)
            while view:
                view = view[os.write(dst, view):]
            buf = buf[n:]
        if not data:
            return


def main() -> None:
    fd = int(sys.argv[1])
    with os.fdopen(fd, "rb") as f:
        values = json.loads(f.read() or b"[]")
    relay(0, 1, pattern(values), max((len(v.encode()) for v in values), default=0),
          tuple(v.encode() for v in values if v))


if __name__ == "__main__":
    main()
