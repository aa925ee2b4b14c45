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
from typing import TYPE_CHECKING, NamedTuple

from hinotori.router.builtin.http1 import routing_host, set_cookie_line

if TYPE_CHECKING:
    from hinotori.router.builtin.exchange import Exchange
    from hinotori.router.builtin.upstream import UpstreamProtocol

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
_KIND = {b"host": _HOST, b"cookie": _COOKIE, b"accept": _ACCEPT, b"x-hinotori-release": _RELEASE}

# 2xx-5xx with a reason phrase (an empty one is filled in by the parser's path).
_RESPONSE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\x21-\x7e][\t\x20-\x7e]*\r\n" + _FIELDS)
_RESPONSE_SPECIAL = re.compile(
    rb"\r\n(content-length|connection|keep-alive|proxy-connection|te|trailer|"
    rb"transfer-encoding|upgrade):[ \t]*([^\r]*?)[ \t]*(?=\r\n)", re.I)



class Plain(NamedTuple):
    """What a plain request's head says, as the exchange needs it."""

    method: bytes
    url: bytes
    path: bytes                 # the URL without its query, for prefix matching
    host: bytes                 # lower-case, no port (b"" when the request had none)
    cookie: bytes | None
    accept: bytes | None
    release: bytes | None       # X-Hinotori-Release
    tail: bytes | None          # what follows X-Forwarded-Proto; None: no Host header


# What request() and response() made of a head they saw: a client sends the same head again
# and again, a backend mostly the same few. Bounded, like http1's caches: a stream of new
# heads only empties them; only short heads are kept.
_SEEN_REQUESTS: dict[bytes, Plain | None] = {}
_SEEN_RESPONSES: dict[bytes, tuple[bytes, int, int, bytes | None] | None] = {}
_SEEN_MAX = 256
SEEN_HEAD_MAX = 2048


def request(data: bytes) -> Plain | None:
    """``data`` is exactly one bodiless plain request head: (method, target, [Host, Cookie,
    Accept, X-Hinotori-Release] values, None where absent). None: let the parser have it."""
    try:
        return _SEEN_REQUESTS[data]
    except KeyError:
        pass
    found = _request(data)
    if len(data) <= SEEN_HEAD_MAX:
        if len(_SEEN_REQUESTS) >= _SEEN_MAX:
            _SEEN_REQUESTS.clear()
        _SEEN_REQUESTS[data] = found
    return found


def _request(data: bytes) -> Plain | None:
    m = _REQUEST.fullmatch(data)
    if m is None:
        return None
    found: list[bytes | None] = [None, None, None, None]
    for name, value in _REQUEST_SPECIAL.findall(data):
        kind = _KIND.get(name.lower())
        if kind is None or found[kind] is not None:
            return None
        found[kind] = value
    url = m.group(2)
    host = found[_HOST]
    return Plain(m.group(1), url, url.partition(b"?")[0], routing_host(host) if host else b"",
                 found[_COOKIE], found[_ACCEPT], found[_RELEASE],
                 None if host is None else b"X-Forwarded-Host: %b\r\n\r\n" % host)


def known(data: bytes) -> tuple[bytes, int, int, bytes | None] | None:
    """``data`` is exactly one plain response with a ``Content-Length`` body, whole: (its head,
    its size, status, the head for the client when it is not the head as it came: without a
    ``Connection: keep-alive`` and ``Keep-Alive`` line, which Node sends by default). None: the
    parser's. The same tuple for the same head (a connection keeps the last one it saw, and
    knows a response with that head and size without looking for the end of its head)."""
    end = data.find(b"\r\n\r\n", 0, SEEN_HEAD_MAX) + 4
    if end < 4:
        return None  # no end of head in sight: a long head is the parser's
    head = data[:end]
    try:
        found = _SEEN_RESPONSES[head]
    except KeyError:
        if len(_SEEN_RESPONSES) >= _SEEN_MAX:
            _SEEN_RESPONSES.clear()
        found = _SEEN_RESPONSES[head] = _response(head)
    if found is None or found[1] != len(data):
        return None  # the body is not all here (or more than this response is)
    return found


def response(data: bytes) -> tuple[int, int, bytes] | None:
    """``known(data)`` as (status, length of the head, the bytes for the client)."""
    found = known(data)
    if found is None:
        return None
    head, _, status, lean = found
    if lean is None:
        return status, len(head), data
    return status, len(lean), lean + data[len(head):]


def closing(data: bytes, head_end: int) -> bytes:
    """A response for a client whose connection closes after it (a worker stopping)."""
    return b"%bConnection: close\r\n%b" % (data[:head_end - 2], data[head_end - 2:])


def _response(head: bytes) -> tuple[bytes, int, int, bytes | None] | None:
    """``known``'s answer for a response with this head (its size: the head and the length
    its Content-Length says), or None when it is not plain."""
    m = _RESPONSE.fullmatch(head)
    if m is None:
        return None
    length: int | None = None
    drop = False
    for name, value in _RESPONSE_SPECIAL.findall(head):
        name = name.lower()
        if name == b"content-length" and length is None and value.isdigit():
            length = int(value)
        elif name == b"keep-alive" or (name == b"connection"
                                       and value.lower() == b"keep-alive"):
            drop = True  # hop-by-hop, and saying what HTTP/1.1 means anyway
        else:
            return None  # no length (a body up to the close), other hop-by-hop headers
    status = int(m.group(1))
    if length is None or status in (204, 304):
        return None  # 204 and 304 have no body whatever the headers say: the parser knows
    if not drop:
        return head, len(head) + length, status, None
    lines = head.split(b"\r\n")
    return head, len(head) + length, status, b"\r\n".join(lines[:1] + [
        line for line in lines[1:]
        if line.partition(b":")[0].lower() not in (b"connection", b"keep-alive")])


def upstream_head(plain: Plain, data: bytes, forwarded: bytes, listen: bytes) -> bytes:
    """The head for the backend: the client's as it came, with ``forwarded`` (the client
    connection's X-Forwarded-For and -Proto lines) and X-Forwarded-Host (or, without a Host
    header, the listen address as Host) before the blank line: what ``http1.request_head``
    makes of the same request, header for header."""
    if plain.tail is None:
        return b"%bHost: %b\r\n%b\r\n" % (data[:-2], listen, forwarded)
    return b"".join((data[:-2], forwarded, plain.tail))


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
