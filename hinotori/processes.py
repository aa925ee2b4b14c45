"""Small process helpers shared by the data planes' supervisors, the CLI, the engine helper and
hinotori.command: what a command left behind (CommandResult) and the one output tail. No asyncio
here: the CLI imports this at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 64 * 1024  # a tail needs only the end of a log, however long it grew


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (kill(0) still finds a zombie; it is dead for
    our purposes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rfind(")") + 2:][:1] != "Z"
    except OSError:
        return True


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies do not count). A SIGKILLed process
    lingers for a moment before it is gone; the command runner waits for this to turn False."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat[stat.rfind(")") + 2:].split()  # state, ppid, pgrp, …
        if fields[2] == str(pgid) and fields[0] not in "ZX":
            return True
    return False


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()  # fields[0] is field 3; utime, stime 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CommandResult:
    """What a command left behind. With ``output="combined"`` stdout holds both streams;
    with ``output=Path`` both are in ``log`` and stdout/stderr are empty."""

    rc: int  # negative: killed by that signal; 124: timed out
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    duration: float = 0.0
    log: Path | None = None

    @property
    def succeeded(self) -> bool:
        return self.rc == 0

    def tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of output (stdout, then stderr, or the log file)."""
        if self.log is not None:
            try:
                return tail(self.log, lines)
            except OSError:
                return []
        sep = "\n" if self.stdout and self.stderr and not self.stdout.endswith("\n") else ""
        return tail(self.stdout + sep + self.stderr, lines)


def tail(source: bytes | str | Path, lines: int = 20, *, offset: int = 0,
         skip_blank: bool = False) -> list[str]:
    """The last ``lines`` lines of some output: bytes, text, or a file (only what was written
    past ``offset``, and only its last TAIL_BYTES). A file that cannot be read raises OSError."""
    if isinstance(source, Path):
        with open(source, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            start = max(offset, end - TAIL_BYTES)
            f.seek(start)
            source = f.read()
        if start > offset:  # began mid-file: the first line is a fragment
            source = source.partition(b"\n")[2]
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    found = text.splitlines()
    if skip_blank:
        found = [line for line in found if line.strip()]
    return found[-lines:] if lines > 0 else []


def log_tail(path: Path, offset: int, lines: int = 8, *, empty: str = "(nothing written)") -> str:
    """The last ``lines`` non-blank lines written to ``path`` since ``offset`` (this start
    only), joined with " | " for an error message."""
    try:
        found = tail(path, lines, offset=offset, skip_blank=True)
    except OSError:
        return "(no log)"
    return " | ".join(found) if found else empty
