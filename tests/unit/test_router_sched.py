"""router/sched.py: HAProxy's scheduling hint, on real processes and threads.

The hint is a shorter EEVDF time slice (Linux 6.12+, shown as ``se.slice`` in
/proc/<tid>/sched); where this kernel does not show it the tests are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.router import sched

ROOT = Path(__file__).resolve().parents[2]


def shown() -> bool:
    return sched.slice_of(os.getpid()) is not None


pytestmark = pytest.mark.skipif(not shown(), reason="this kernel shows no se.slice")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def tids(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def test_every_thread_gets_the_slice_and_keeps_its_nice_value(
        sleeper: subprocess.Popen[bytes]) -> None:
    os.setpriority(os.PRIO_PROCESS, sleeper.pid, 5)
    before = sched.slice_of(sleeper.pid)
    assert before != sched.SLICE_NS  # (the kernel's default is longer)
    assert sched.hint(sleeper.pid)
    assert all(sched.slice_of(t) == sched.SLICE_NS for t in tids(sleeper.pid))
    assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 5  # no more CPU than before
    assert os.sched_getscheduler(sleeper.pid) == os.SCHED_OTHER


def test_a_policy_the_operator_chose_is_left_alone(sleeper: subprocess.Popen[bytes]) -> None:
    os.sched_setscheduler(sleeper.pid, os.SCHED_IDLE, os.sched_param(0))
    before = sched.slice_of(sleeper.pid)
    assert not sched.hint(sleeper.pid)
    assert os.sched_getscheduler(sleeper.pid) == os.SCHED_IDLE
    assert sched.slice_of(sleeper.pid) == before


def test_a_process_that_is_gone_is_no_error(sleeper: subprocess.Popen[bytes]) -> None:
    sleeper.kill()
    sleeper.wait()
    assert not sched.hint(sleeper.pid)
    assert sched.slice_of(sleeper.pid) is None
    assert not sched.hint()


def test_threads_and_processes_started_after_the_hint_inherit_it() -> None:
    # The hint first, threads and forks (a reload's HAProxy worker) later.
    code = (
        "import os, threading\n"
        "from hinotori.router import sched\n"
        "assert sched.hint(os.getpid())\n"
        "seen = []\n"
        "def look():\n"
        "    seen.append(sched.slice_of(threading.get_native_id()))\n"
        "t = threading.Thread(target=look)\n"
        "t.start(); t.join()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if sched.slice_of(os.getpid()) == sched.SLICE_NS else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(seen[0], os.waitstatus_to_exitcode(status))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.split() == [str(sched.SLICE_NS), "0"]
