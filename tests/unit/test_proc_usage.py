"""One /proc scan for many process hosts gives each the same usage as its own scan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hinotori.providers.proc_usage import proc_stat, session_usage, session_usages

# A session leader that starts a child (both sleep): the session's usage counts both.
TREE = "import subprocess, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"


def _session() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)


def _members(sid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                raw = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            n += int(raw[raw.rfind(b")") + 2:].split()[3]) == sid
    return n


def test_one_scan_matches_each_hosts_own_scan_and_skips_the_dead() -> None:
    a, b = _session(), _session()
    try:
        for p in (a, b):  # wait for each leader's child to exist
            for _ in range(200):
                if _members(p.pid) >= 2:
                    break
                subprocess.run(["sleep", "0.02"])
            assert _members(p.pid) >= 2
        gone = subprocess.Popen(["true"], start_new_session=True)
        gone.wait()
        both = session_usages([a.pid, b.pid, gone.pid])
        assert set(both) == {a.pid, b.pid}  # a session with no process left is absent
        for p in (a, b):
            alone = session_usage(p.pid)
            assert alone is not None
            # Resident memory of two live processes (python + sleep): more than python alone.
            assert both[p.pid].memory_bytes > 0
            assert abs(both[p.pid].memory_bytes - alone.memory_bytes) <= alone.memory_bytes // 4
            assert alone.cpu_seconds >= both[p.pid].cpu_seconds >= 0
        assert session_usage(gone.pid) is None
        assert session_usages([]) == {}
    finally:
        for p in (a, b):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_proc_stat_tells_running_zombie_and_gone_apart() -> None:
    """What the process provider's liveness reads: a running process and its start ticks
    (the same for the process's life, as /proc's own field 22), a zombie's "Z", then None."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        state, ticks = proc_stat(child.pid) or ("", -1)
        raw = Path(f"/proc/{child.pid}/stat").read_text()
        assert state in "RSD" and ticks == int(raw[raw.rindex(")") + 2:].split()[19])
        child.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped yet
        assert proc_stat(child.pid) == ("Z", ticks)
    finally:
        child.kill()
        child.wait()
    assert proc_stat(child.pid) is None
    assert proc_stat(os.getpid()) is not None
