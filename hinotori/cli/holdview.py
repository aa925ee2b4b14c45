"""How the CLI shows a held deployment (`deploy --hold`): the `--hold [DURATION]` option, the
held and preview steps, the hold in `deployments` / `deployment N`, and what promote and abort
answered."""

from __future__ import annotations

import time
from typing import Any

from hinotori.cli import render
from hinotori.cli.options import duration

HOLD = "--hold"
MAX_HOLD = 30 * 24 * 3600.0  # as the API's bound


def hold_value(text: Any) -> float:
    """``--hold`` alone (rewritten to an empty value by ``optional_value``): 0, held until
    promoted or aborted; ``--hold 30m``: aborted when it expires."""
    if text in ("", None):
        return 0.0
    seconds = duration(text)
    if seconds <= 0:
        raise ValueError(f"{text!r} would expire at once: give a duration such as 30m, or "
                         "--hold alone to hold until promoted or aborted")
    if seconds > MAX_HOLD:
        raise ValueError(f"{text!r} is longer than 30d")
    return seconds


def optional_value(argv: list[str], option: str) -> list[str]:
    """``option`` written without a value (last, or before another option) gets an empty one,
    which click cannot express for an option that also takes a value."""
    out = []
    for i, arg in enumerate(argv):
        if arg == option and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(f"{option}=")
        else:
            out.append(arg)
    return out


def left(expires_at: float | None) -> str:
    if expires_at is None:
        return "until promoted or aborted"
    return f"until {time.strftime('%H:%M:%S', time.localtime(expires_at))} " \
           f"({render.seconds(max(0.0, expires_at - time.time()))} left)"


def where(hold: dict[str, Any]) -> str:
    """The preview's addresses: the preview listener, and the header on the main one."""
    header = f"{hold['header']} on http://{hold['router']}"
    return f"{hold['preview']} (or {header})" if hold.get("preview") else header


def held_lines(service: str, dep: dict[str, Any]) -> list[str]:
    hold = dep["hold"] or {}
    return [f"[bold yellow]{service} {hold.get('release')} is held[/] (deployment {dep['id']}); "
            f"live traffic stays on {_v(dep['from_release'])}",
            f"  preview: {where(hold)}",
            f"  held {left(hold.get('expires_at'))}: `hinotori promote {service}` switches to "
            f"it, `hinotori abort {service}` burns it"]


def state_text(dep: dict[str, Any]) -> str:
    """A deployment's state for the `deployments` table (a held one says for how long)."""
    if dep["state"] == "held" and dep.get("hold"):
        expires = dep["hold"].get("expires_at")
        return "held" if expires is None else \
            f"held ({render.seconds(max(0.0, expires - time.time()))} left)"
    return str(dep["state"])


def steered(answer: dict[str, Any], done_line: str) -> bool:
    """What promote or abort of a held deployment answered (once it ended); False if it
    failed."""
    if answer["state"] == "succeeded":
        render.console.print(done_line)
        return True
    render.console.print(f"deployment {answer['id']} {answer['state']}: "
                         f"{render.escape(answer['error'] or '')}", highlight=False)
    return answer["state"] == "aborted"


STEPS = {
    "preview": lambda s: f"{s['release']} routed for preview only (switch {s['switch_ms']} ms)",
    "held": lambda s: f"held: preview {where(s)}, {left(s.get('expires_at'))}",
}


def _v(n: int | None) -> str:
    return f"v{n}" if n is not None else "-"
