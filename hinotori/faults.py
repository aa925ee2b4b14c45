"""Fault injection for crash-safety tests: kill this process at a named point.

`HINOTORI_FAULT=<point>` in the controller's environment makes it SIGKILL itself when it
reaches that point (a step boundary of a deployment). Tests use it to prove that a controller
killed anywhere is restarted into a consistent state. Without the variable this is one dict
lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("HINOTORI_FAULT")


def point(name: str) -> None:
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
