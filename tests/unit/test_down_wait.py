"""`hinotori down` waits for the controller as long as it keeps stopping hosts: at a thousand
hosts that takes minutes, and a CLI that gave up at a fixed bound told the user to kill a
controller that was still working (and a killed one leaves the router running)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from hinotori.cli.controlcmds import wait_stopped
from hinotori.errors import ControllerError


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for a controller that takes a while to stop."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_waits_past_the_quiet_bound_while_hosts_keep_stopping(
        busy: subprocess.Popen[bytes]) -> None:
    left = iter(range(1000, 0, -1))

    def live_hosts() -> int:
        n = next(left)
        if n == 996:  # the bound passed 3 times, a host stopped each time: now it exits
            busy.terminate()
        return n

    wait_stopped(busy.pid, live_hosts, quiet=0.2)  # returns when it exits
    assert busy.poll() is not None


def test_gives_up_when_no_host_stopped_for_the_quiet_bound(
        busy: subprocess.Popen[bytes]) -> None:
    with pytest.raises(ControllerError, match=r"no host stopped in the last 0.2s \(7 still"):
        wait_stopped(busy.pid, lambda: 7, quiet=0.2)
    assert busy.poll() is None  # it was still running: the error says so, and how to kill it
