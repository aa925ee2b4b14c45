"""Dashboard sign-in: one-time tickets exchanged for browser sessions, read-only or operating.

The API token is the project's master key (it can deploy and burn hosts), so it never goes into
a URL. `hinotori dashboard` asks the controller for a *ticket* (with the master token) and prints
``http://ADDRESS/#ticket=…``. The fragment never leaves the browser (no server log or Referer
sees it); the page redeems the ticket once for a *session* token, drops the fragment from the
address bar and keeps the session in sessionStorage (gone when the tab closes). So a link found
later in scrollback or browser history is already spent, or expired after ``TICKET_TTL``.

A session only reads, unless its link came from `hinotori dashboard --operate`: the API accepts
a read-only session for GET requests and refuses it (403) for anything that changes traffic or
hosts. An operating session may also act (deploy, roll back, steer a canary or a held
deployment, maintenance on/off, burn a host), each change guarded against cross-site requests
twice: the request must come from the page's own origin (``Origin``, else ``Referer``, checked
by guard.py), and carry the session's CSRF token (``X-Hinotori-CSRF``), a second secret issued
with the session. The session is a bearer token the page keeps in sessionStorage, never a
cookie, so a browser never attaches it to another site's request on its own; the two checks
hold even if it leaked. Sessions live in the controller's memory, so restarting the
controller signs every browser out (the page then says how to get a new link).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hinotori.errors import Forbidden, Unauthorised

TICKET_TTL = 120.0  # seconds a printed link stays redeemable
SESSION_TTL = 12 * 3600.0  # a working day; then `hinotori dashboard` again
MAX_LIVE = 256  # bounded memory whatever a client does; the oldest entries go first
READ_METHODS = frozenset({"GET", "HEAD"})
SIGN_IN_HINT = "run `hinotori dashboard` for a new sign-in link"
CSRF_HEADER = "x-hinotori-csrf"
PRINCIPAL = "hinotori.principal"  # the scope key routes read what the credentials proved from


@dataclass(frozen=True)
class Session:
    expires: float
    operate: bool = False  # may change things (from `hinotori dashboard --operate`)
    csrf: str = ""         # the second secret every change must carry


@dataclass(frozen=True)
class Ticket:
    expires: float
    operate: bool = False


class DashboardSessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Keyed by a hash of the secret, so a lookup's timing says nothing about the secret.
        self._tickets: OrderedDict[bytes, Ticket] = OrderedDict()
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def issue_ticket(self, operate: bool = False) -> str:
        ticket = secrets.token_urlsafe(32)
        _put(self._tickets, _key(ticket), Ticket(self._clock() + TICKET_TTL, operate))
        return ticket

    def redeem(self, ticket: str) -> str:
        """The ticket's session token; a ticket works once, and only before it expires."""
        found = self._tickets.pop(_key(ticket), None)
        if found is None or self._clock() >= found.expires:
            raise Unauthorised("this dashboard link was already used or has expired",
                               hint=SIGN_IN_HINT)
        session = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32) if found.operate else ""
        _put(self._sessions, _key(session),
             Session(self._clock() + SESSION_TTL, found.operate, csrf))
        return session

    def session(self, token: str) -> Session | None:
        """The live session ``token`` names, if any."""
        key = _key(token)
        found = self._sessions.get(key)
        if found is None:
            return None
        if self._clock() >= found.expires:
            del self._sessions[key]
            return None
        return found

    def is_session(self, token: str) -> bool:
        return self.session(token) is not None

    def authorise(self, token: str, method: str, *, csrf: str | None = None,
                  same_origin: bool = False) -> bool:
        """True if ``token`` is a live session allowed to make this request; False if it is
        no session. A session asking to change something without the right to, or without
        proof that the request comes from its own page, is refused (Forbidden)."""
        found = self.session(token) if token else None
        if found is None:
            return False
        if method.upper() in READ_METHODS:
            return True
        if not found.operate:
            raise Forbidden("the dashboard's sign-in can only read",
                            hint="`hinotori dashboard --operate` prints a link that may act; "
                                 "or use the CLI")
        if not same_origin:
            raise Forbidden("a dashboard action must come from the dashboard's own page "
                            "(Origin or Referer of another site, or none)",
                            hint="act from the dashboard page itself")
        if not csrf or not secrets.compare_digest(csrf.encode("latin-1", "replace"),
                                                  found.csrf.encode()):
            raise Forbidden("a dashboard action needs the session's CSRF token",
                            hint=f"the page sends it as {CSRF_HEADER}; reload the page")
        return True


def _key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _put(entries: OrderedDict[bytes, Any], key: bytes, value: Any) -> None:
    entries[key] = value
    while len(entries) > MAX_LIVE:
        entries.popitem(last=False)
