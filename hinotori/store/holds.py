"""Held deployments in state.db (`deploy --hold`): a deployment's ``hold`` column holds what
`deployments`, `deployment N` and the dashboard show about it (release, preview address,
header, held_at, expires_at), and its state is ``held`` while it waits for promote or abort.
"""

from __future__ import annotations

import json
from typing import Any

HELD = "held"


class HoldsMixin:
    """Store methods for held deployments (mixed into store.sqlite.Store)."""

    def hold_deployment(self, number: int, info: dict[str, Any], *, actor: str) -> None:
        """The deployment is held: state ``held``, ``info`` kept, event ``deploy.held``."""
        with self.transaction() as db:  # type: ignore[attr-defined]
            row = db.execute("SELECT service FROM deployments WHERE id = ?",
                             (number,)).fetchone()
            db.execute("UPDATE deployments SET state = ?, hold = ? WHERE id = ?",
                       (HELD, json.dumps(info), number))
            self._event(db, actor, "deploy.held",  # type: ignore[attr-defined]
                        f"{row['service']}/deployment/{number}", info)

    def unhold_deployment(self, number: int, *, actor: str, why: str) -> None:
        """Held no more (promoted or aborted): back to ``running`` until it finishes; the
        hold's record stays."""
        with self.transaction() as db:  # type: ignore[attr-defined]
            row = db.execute("SELECT service FROM deployments WHERE id = ?",
                             (number,)).fetchone()
            db.execute("UPDATE deployments SET state = 'running' WHERE id = ? AND state = ?",
                       (number, HELD))
            self._event(db, actor, "deploy.unheld",  # type: ignore[attr-defined]
                        f"{row['service']}/deployment/{number}", {"why": why})


def decode_hold(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None
