"""Whole plain messages recognised in one read, without the parser's per-header callbacks.

Most requests a router sees are a bodiless HTTP/1.1 head that arrives in one read, and most
responses a small HTTP/1.1 one with a ``Content-Length`` body that arrives whole in one read.
httptools costs a Python call per header, per status text, per body piece (about 2,000
instructions each); these regular expressions answer the same questions in C, once per
message, and let the bytes pass unchanged: the backend's response head is forwarded as it came.

Only a strict subset of HTTP/1.1 qualifies: every header line a token, a colon and visible
ASCII (no obs-text, no folding), CRLF line ends, no header that changes how the message is
framed or that the proxy must rewrite. Whatever does not match, byte for byte, goes to httptools
as before, with the parser untouched (these functions only read), so a message either
qualifies whole or is parsed exactly as it would have been. llhttp accepts everything that
qualifies (tests/unit/test_router_whole.py checks the pairs).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hinotori.router.builtin.http1 import routing_host, set_cookie_line

if TYPE_CHECKING:
    from hinotori.router.builtin.exchange import Exchange
    from hinotori.router.builtin.upstream import UpstreamProtocol

REPLAY_LIMIT = 64 * 1024  # exchange.REPLAY_LIMIT (not imported: exchange imports upstream)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELDS = rb"(?:" + _TOKEN + rb":[\t\x20-\x7e]*\r\n)*\r\n"
# origin-form only, RFC 3986 characters (no fragment, no raw space or non-ASCII byte)
_TARGET = rb"/[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]*"

# Bodiless methods, so the head is the whole request (a body would announce itself with a
# Content-Length or Transfer-Encoding header, which sends the request to the parser).
_REQUEST = re.compile(rb"(GET|HEAD|DELETE|OPTIONS) (" + _TARGET + rb") HTTP/1\.1\r\n" + _FIELDS)
# Request headers the router reads or rewrites. Only the first four may appear (each once);
# any other sends the request to the parser (hop-by-hop, framing, X-Forwarded-*, Expect).
_REQUEST_SPECIAL = re.compile(
    rb"\r\n(host|cookie|accept|x-hinotori-release|x-forwarded-for|x-forwarded-proto|"
    rb"x-forwarded-host|connection|proxy-connection|keep-alive|te|trailer|transfer-encoding|"
    rb"upgrade|content-length|expect):[ \t]*([^\r]*?)[ \t]*(?=\r\n)", re.I)
_HOST, _COOKIE, _ACCEPT, _RELEASE = range(4)
Fields = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
_KIND = {b"host": _HOST, b"cookie": _COOKIE, b"accept": _ACCEPT, b"x-hinotori-release": _RELEASE}

# 2xx-5xx with a reason phrase (an empty one is filled in by the parser's path).
_RESPONSE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\x21-\x7e][\t\x20-\x7e]*\r\n" + _FIELDS)
_RESPONSE_SPECIAL = re.compile(
    rb"\r\n(content-length|connection|keep-alive|proxy-connection|te|trailer|"
    rb"transfer-encoding|upgrade):[ \t]*([^\r]*?)[ \t]*(?=\r\n)", re.I)


# What request() and response() made of a head they saw: a client sends the same head again
# and again, a backend mostly the same few. Bounded, like http1's caches: a stream of new
# heads only empties them; only short heads are kept.
_SEEN_REQUESTS: dict[bytes, tuple[bytes, bytes, Fields] | None] = {}
_SEEN_RESPONSES: dict[bytes, tuple[int, int] | None] = {}
_SEEN_MAX = 256
_SEEN_HEAD_MAX = 2048


def request(data: bytes) -> tuple[bytes, bytes, Fields] | None:
    """``data`` is exactly one bodiless plain request head: (method, target, [Host, Cookie,
    Accept, X-Hinotori-Release] values, None where absent). None: let the parser have it."""
    try:
        return _SEEN_REQUESTS[data]
    except KeyError:
        pass
    found = _request(data)
    if len(data) <= _SEEN_HEAD_MAX:
        if len(_SEEN_REQUESTS) >= _SEEN_MAX:
            _SEEN_REQUESTS.clear()
        _SEEN_REQUESTS[data] = found
    return found


def _request(data: bytes) -> tuple[bytes, bytes, Fields] | None:
    m = _REQUEST.fullmatch(data)
    if m is None:
        return None
    found: list[bytes | None] = [None, None, None, None]
    for name, value in _REQUEST_SPECIAL.findall(data):
        kind = _KIND.get(name.lower())
        if kind is None or found[kind] is not None:
            return None
        found[kind] = value
    return m.group(1), m.group(2), tuple(found)


def response(data: bytes) -> tuple[int, int] | None:
    """``data`` is exactly one plain response with a ``Content-Length`` body, whole: (status,
    length of the head). None: let the parser have it."""
    end = data.find(b"\r\n\r\n", 0, _SEEN_HEAD_MAX) + 4
    if end < 4:
        return None  # no end of head in sight: a long head is the parser's
    head = data[:end]
    try:
        found = _SEEN_RESPONSES[head]
    except KeyError:
        if len(_SEEN_RESPONSES) >= _SEEN_MAX:
            _SEEN_RESPONSES.clear()
        found = _SEEN_RESPONSES[head] = _response(head)
    if found is None or end + found[1] != len(data):
        return None  # the body is not all here (or more than this response is)
    return found[0], end


def _response(head: bytes) -> tuple[int, int] | None:
    """(status, body length) of a plain response head with a Content-Length, else None."""
    m = _RESPONSE.fullmatch(head)
    if m is None:
        return None
    special = _RESPONSE_SPECIAL.findall(head)
    if len(special) != 1:
        return None  # no length (a body up to the close), hop-by-hop headers, or two lengths
    name, value = special[0]
    status = int(m.group(1))
    if not value.isdigit() or name.lower() != b"content-length" or status in (204, 304):
        return None  # 204 and 304 have no body whatever the headers say: the parser knows
    return status, int(value)


def prepare(ex: Exchange, method: bytes, url: bytes, found: Fields,
            data: bytes) -> None:
    """``ex`` is the request ``request(data)`` recognised, complete: its head passes as it
    came, with the X-Forwarded-* lines (and a Host when it had none) added before the blank
    line (what ``http1.request_head`` makes of the same request, header for header)."""
    ex.method = method
    ex.url = url
    q = url.find(b"?")
    ex.path = url if q < 0 else url[:q]
    host, ex.cookie, ex.accept, ex.release_hint = found
    client = ex.client
    if host is None:
        data = b"%bHost: %b\r\nX-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\n\r\n" % (
            data[:-2], ex.worker.listen_bytes, client.peer, client.scheme)
    else:
        ex.host = routing_host(host) if host else b""
        data = b"%bX-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b" \
               b"\r\n\r\n" % (data[:-2], client.peer, client.scheme, host)
    ex.pending.append(data)
    ex.pending_size = ex.replay_size = len(data)
    if len(data) <= REPLAY_LIMIT:  # every method that qualifies is idempotent
        ex.replay = [data]
    ex.request_complete = True


def relay(ex: Exchange, conn: UpstreamProtocol, status: int, data: bytes, head_end: int) -> None:
    """``data`` is the whole response ``response(data)`` recognised: to the client as it came,
    with the router's own header lines (Set-Cookie, Connection) before the blank line when
    there are any."""
    close = not ex.keep_alive or ex.client.closing or not ex.request_complete
    if close or ex.set_cookie or not ex.http11:
        cookie = set_cookie_line(ex.route.cookie, ex.target.release) \
            if ex.set_cookie else b""  # type: ignore[union-attr]
        data = b"%b%b%b%b" % (data[:head_end - 2], cookie, b"Connection: close\r\n" if close
                              else b"" if ex.http11 else b"Connection: keep-alive\r\n",
                              data[head_end - 2:])
    ex.close_after = close
    ex.status = status
    ex.response_started = True
    ex.client.transport.write(data)  # type: ignore[union-attr]
    ex.complete(conn, True)
