"""The web dashboard: static HTML, CSS and JS modules served by the controller.

No build step, no npm, nothing loaded from the internet: the page is plain ES modules under
``static/`` that poll the same JSON API the CLI uses. The files themselves are public (they hold
no data); every ``/v1`` call the page makes carries a bearer token, a read-only session obtained
through ``sessions.py`` (read-only, or operating: then the page shows action buttons, each
behind a confirmation, and sends the session's CSRF token with every change). ``/`` serves the
page, ``/ui/NAME`` its assets (looked up by exact name
in a fixed table, so no path can reach outside ``static/``).

The page's Content-Security-Policy allows scripts, styles and fetches from this origin only:
log lines and event details are data from hosts, and a line that looks like HTML must stay
text even if a rendering bug slipped through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from hinotori.controller.dashboard.sessions import PRINCIPAL, TICKET_TTL, DashboardSessions
from hinotori.errors import Forbidden

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
ASSETS = {p.name: (p, _TYPES[p.suffix]) for p in sorted(STATIC.iterdir()) if p.suffix in _TYPES}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a newer controller's page, not a stale one
}


class RedeemBody(BaseModel):
    ticket: str = Field(min_length=1, max_length=200)


class TicketBody(BaseModel):
    operate: bool = False  # the session may act, not only read


def mount(app: FastAPI, api: APIRouter, sessions: DashboardSessions) -> None:
    """Add the page and its sign-in to ``app``; ``api`` is the token-protected router."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return _asset("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        return _asset(name)

    @app.post("/ui/session")
    async def redeem(body: RedeemBody) -> dict[str, Any]:
        """Exchange a one-time sign-in ticket (from `hinotori dashboard`) for a session token,
        sent by the page as its bearer token; an operating one comes with its CSRF token."""
        token = sessions.redeem(body.ticket)
        found = sessions.session(token)
        operate = bool(found and found.operate)
        return {"token": token, "operate": operate, "csrf": found.csrf if found else ""}

    @api.post("/v1/dashboard/ticket")
    async def ticket(request: Request, body: TicketBody | None = None) -> dict[str, Any]:
        """A one-time ticket for the dashboard's sign-in link (needs the API token: a
        session never mints another, which would outlive it)."""
        if request.scope.get(PRINCIPAL) != "token":
            raise Forbidden("only the API token issues dashboard sign-in links",
                            hint="run `hinotori dashboard` in the project directory")
        operate = body.operate if body else False
        return {"ticket": sessions.issue_ticket(operate), "expires_in": TICKET_TTL,
                "operate": operate}


def _asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, "no such dashboard file; the dashboard lives at /")
    path, media_type = ASSETS[name]
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)
