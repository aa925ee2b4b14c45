"""`hinotori status` answered by a running controller before the CLI has loaded: one of the
quick paths of hinotori.cli.quick (read it for which controller is trusted).

GET /v1/status costs the controller a few milliseconds at a thousand hosts; the full command
spends ~0.5 s of CPU importing itself first. Anything but a plain 200 from a trusted controller
(none running, a stale controller.json, a refused token, a timeout) returns None, and the full
command (hinotori.cli.statuscmd) runs: it says what is wrong, or shows the store's view. Like
the controller's answer, this path does not validate the spec file on disk (the controller
checks it at `up` and at each reload).
"""

from __future__ import annotations

import json

from hinotori.cli import quick

STATUS_TIMEOUT = 5.0  # as the full command's ControllerClient


def quick_status(argv: list[str], environ: dict[str, str]) -> int | None:
    """The exit code of `hinotori status <argv>` shown from this project's controller, or None
    when the full command must run (nothing printed then)."""
    parsed = quick.parse(argv, environ, ("--json",))
    if parsed is None or parsed[0]:
        return None
    _, spec, environment, given = parsed
    target = quick.controller(spec, environment)
    if target is None:
        return None
    address, token = target
    sent = quick.send(address, "GET", "/v1/status", token, timeout=STATUS_TIMEOUT)
    if sent is None:
        return None
    with sent:
        status, payload = quick.receive(sent)
    if status != 200:
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    from hinotori.cli.statusview import show_status

    data["controller"] = "running"
    show_status(data, "--json" in given)
    return 0
