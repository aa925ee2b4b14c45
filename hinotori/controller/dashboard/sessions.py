"""Dashboard sign-in: one-time tickets exchanged for read-only browser sessions.

The API token is the project's master key (it can deploy and burn hosts), so it never goes into
a URL. `hinotori dashboard` asks the controller for a *ticket* (with the master token) and prints
``http://ADDRESS/#ticket=…``. The fragment never leaves the browser (no server log or Referer
sees it); the page redeems the ticket once for a *session* token, drops the fragment from the
address bar and keeps the session in sessionStorage (gone when the tab closes). So a link found
later in scrollback or browser history is already spent, or expired after ``TICKET_TTL``.

A session only reads: the API accepts it for GET requests and refuses it for anything that
changes traffic or hosts, which stays with the CLI. Sessions live in the controller's memory, so
restarting the controller signs every browser out (the page then says how to get a new link).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from hinotori.errors import Unauthorised

TICKET_TTL = 120.0  # seconds a printed link stays redeemable
SESSION_TTL = 12 * 3600.0  # a working day; then `hinotori dashboard` again
MAX_LIVE = 256  # bounded memory whatever a client does; the oldest entries go first
READ_METHODS = frozenset({"GET", "HEAD"})
SIGN_IN_HINT = "run `hinotori dashboard` for a new sign-in link"


class DashboardSessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Keyed by a hash of the secret, so a lookup's timing says nothing about the secret.
        self._tickets: OrderedDict[bytes, float] = OrderedDict()  # ticket -> expires at
        self._sessions: OrderedDict[bytes, float] = OrderedDict()  # session -> expires at

    def issue_ticket(self) -> str:
        ticket = secrets.token_urlsafe(32)
        _put(self._tickets, _key(ticket), self._clock() + TICKET_TTL)
        return ticket

    def redeem(self, ticket: str) -> str:
        """The ticket's session token; a ticket works once, and only before it expires."""
        expires = self._tickets.pop(_key(ticket), None)
        if expires is None or self._clock() >= expires:
            raise Unauthorised("this dashboard link was already used or has expired",
                               hint=SIGN_IN_HINT)
        session = secrets.token_urlsafe(32)
        _put(self._sessions, _key(session), self._clock() + SESSION_TTL)
        return session

    def is_session(self, token: str) -> bool:
        key = _key(token)
        expires = self._sessions.get(key)
        if expires is None:
            return False
        if self._clock() >= expires:
            del self._sessions[key]
            return False
        return True

    def authorise(self, token: str, method: str) -> bool:
        """True if ``token`` is a live session allowed to make this request; a live session
        asking to change something is refused with its own message."""
        if not token or not self.is_session(token):
            return False
        if method.upper() not in READ_METHODS:
            raise Unauthorised("the dashboard's sign-in can only read",
                               hint="deploy, roll back and act on hosts with the CLI")
        return True


def _key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _put(entries: OrderedDict[bytes, float], key: bytes, expires: float) -> None:
    entries[key] = expires
    while len(entries) > MAX_LIVE:
        entries.popitem(last=False)
