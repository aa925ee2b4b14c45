"""HTTP/1.1 message pieces the proxy needs: hop-by-hop filtering, request and response heads,
canned router responses, chunk framing. Pure functions over bytes; no I/O.

Everything stays in ``bytes`` because that is what httptools hands us and what the transports
take; decoding header names and values to ``str`` on the hot path would only cost time.
"""

from __future__ import annotations

from http import HTTPStatus

from hinotori.router.maintenance import HTML_TYPE, JSON_TYPE

# Headers that describe one connection, not the message (RFC 9110 section 7.6.1). A proxy must not
# forward them; any header named in ``Connection`` is hop-by-hop as well.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
# Request headers the router sets itself (the client's values are replaced or appended to).
_SET_BY_ROUTER = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class BadRequest(Exception):
    """A request the router refuses: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty: that would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _connection_tokens(values: list[bytes]) -> set[bytes]:
    return {t.strip().lower() for v in values for t in v.split(b",") if t.strip()}


def split_host(host: bytes) -> bytes:
    """Host header value -> lower-case host without port (``[::1]:80`` -> ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    return host.partition(b":")[0]


# Host header value -> split_host(value): a client sends the same few values again and again.
# Bounded, so that a client sending a new Host with every request cannot grow it.
_HOSTS: dict[bytes, bytes] = {}
_HOSTS_MAX = 256


def routing_host(value: bytes) -> bytes:
    """``split_host``, remembered for the last few values seen."""
    host = _HOSTS.get(value)
    if host is None:
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        host = _HOSTS[value] = split_host(value)
    return host


class RequestHead:
    """A client request, analysed: the bytes to send upstream and what routing needs."""

    __slots__ = ("accept", "chunked", "connection", "cookie", "data", "expect_continue", "host",
                 "path", "release")

    def __init__(self, data: bytes, host: bytes, path: bytes, chunked: bool,
                 expect_continue: bool, release: bytes | None, cookie: bytes | None,
                 accept: bytes | None = None, connection: bool = False) -> None:
        self.data = data          # request line + headers, ready to write upstream
        self.host = host          # lower-case, no port; b"" when the request had none
        self.path = path          # path without query, for prefix matching
        self.chunked = chunked    # body arrives (and leaves) chunked
        self.expect_continue = expect_continue
        self.release = release    # X-Hinotori-Release, if sent
        self.cookie = cookie      # Cookie header(s), if sent (for sticky routes)
        self.accept = accept      # Accept, if sent (a maintenance answer's format)
        self.connection = connection  # the request had a Connection/Proxy-Connection header


# How build_request_head treats a request header, by lower-case name; any other is forwarded.
_DROP, _CONNECTION, _TE, _HOST, _COOKIE, _RELEASE, _ACCEPT, _XFF, _EXPECT = range(9)
_REQUEST_KIND: dict[bytes, int] = {
    **dict.fromkeys(HOP_BY_HOP, _DROP), **dict.fromkeys(_SET_BY_ROUTER, _DROP),
    b"connection": _CONNECTION, b"proxy-connection": _CONNECTION, b"transfer-encoding": _TE,
    b"host": _HOST, b"cookie": _COOKIE, b"x-hinotori-release": _RELEASE, b"accept": _ACCEPT,
    b"x-forwarded-for": _XFF, b"expect": _EXPECT,
}


def build_request_head(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
                       client_ip: bytes, default_host: bytes,
                       proto: bytes = b"http") -> RequestHead:
    """The head to send to a backend: HTTP/1.1, hop-by-hop headers removed, X-Forwarded-* set.

    The client's ``Host`` is kept (backends route on it); an absolute-form URL is turned into
    origin-form. ``Transfer-Encoding`` is re-emitted because the proxy re-chunks the body it
    decoded; ``Content-Length`` passes as is. Two ``Host`` headers that differ are refused
    (BadRequest 400: the router would route on one and a backend might read the other); a
    repeated identical one is forwarded once (as HAProxy does).
    """
    return RequestHead(*request_head(method, url, headers, client_ip, default_host, proto))


def request_head(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
                 client_ip: bytes, default_host: bytes, proto: bytes = b"http"
                 ) -> tuple[bytes, bytes, bytes, bool, bool, bytes | None, bytes | None,
                            bytes | None, bool]:
    """``build_request_head`` for the hot path: the same fields as a plain tuple (data, host,
    path, chunked, expect_continue, release, cookie, accept, connection).

    One pass: each header costs a ``lower()`` and a dict lookup, and a forwarded one goes
    straight into the output as 4 pieces (name, ": ", value, CRLF), so the rare rewrites
    (absolute-form URL, headers named in Connection) edit those groups afterwards.
    """
    host: bytes | None = None
    xff: bytes | None = None
    te: bytes | None = None
    expect_continue = False
    release: bytes | None = None
    cookie: bytes | None = None
    accept: bytes | None = None
    conn_values: list[bytes] | None = None
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    host_at = 0  # index of the forwarded Host's group in ``out``
    kind_of = _REQUEST_KIND.get
    for name, value in headers:
        kind = kind_of(name.lower())
        if kind is None:
            out += (name, b": ", value, b"\r\n")
            continue
        if kind == _HOST:
            if host is not None:
                if value.strip().lower() != host.strip().lower():
                    raise BadRequest(400, "more than one Host header")
                continue
            host = value
            host_at = len(out)
        elif kind == _DROP:
            continue
        elif kind == _CONNECTION:
            if conn_values is None:
                conn_values = []
            conn_values.append(value)
            continue
        elif kind == _TE:
            te = value
            continue
        elif kind == _XFF:
            xff = value if xff is None else xff + b", " + value
            continue
        elif kind == _EXPECT:
            # The router answers "100 Continue" itself; the backend gets the body regardless.
            expect_continue = value.strip().lower() == b"100-continue"
            continue
        elif kind == _COOKIE:
            cookie = value if cookie is None else cookie + b"; " + value
        elif kind == _RELEASE:
            release = value
        else:  # _ACCEPT
            accept = value if accept is None else accept + b", " + value
        out += (name, b": ", value, b"\r\n")

    if not url.startswith(b"/"):
        url, url_host = _origin_form(url)
        out[2] = url
        if url_host:
            if host is not None:
                del out[host_at:host_at + 4]
            host = url_host
            out += (b"Host", b": ", url_host, b"\r\n")
    q = url.find(b"?")
    path = url if q < 0 else url[:q]

    if conn_values is not None:
        extra = _connection_tokens(conn_values) - HOP_BY_HOP
        if extra:  # headers the client named hop-by-hop: not forwarded either
            out[4:] = [piece for i in range(4, len(out), 4) if out[i].lower() not in extra
                       for piece in out[i:i + 4]]
    if host is None:
        out += (b"Host: ", default_host, b"\r\n")
    out += (b"X-Forwarded-For: ", xff + b", " + client_ip if xff else client_ip,
            b"\r\nX-Forwarded-Proto: ", proto, b"\r\n")
    if host is not None:
        out += (b"X-Forwarded-Host: ", host, b"\r\n")
    if te is not None:
        out += (b"Transfer-Encoding: ", te, b"\r\n")
    out.append(b"\r\n")
    return (b"".join(out), routing_host(host) if host else b"", path, te is not None,
            expect_continue, release, cookie, accept, conn_values is not None)


def cookie_value(header: bytes | None, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie header, if present."""
    if not header or name not in header:
        return None
    for part in header.split(b";"):
        key, eq, value = part.strip().partition(b"=")
        if eq and key == name:
            return value.strip().strip(b'"')
    return None


def set_cookie_line(name: bytes, release: int) -> bytes:
    return b"Set-Cookie: %b=v%d; Path=/; HttpOnly; SameSite=Lax\r\n" % (name, release)


def _origin_form(url: bytes) -> tuple[bytes, bytes]:
    """``http://host:port/p?q`` -> (``/p?q``, ``host:port``); ``*`` and oddities -> (``/``, b"")."""
    scheme_end = url.find(b"://")
    if scheme_end < 0:
        return b"/", b""  # "*" (OPTIONS *) or an authority-form we do not proxy
    rest = url[scheme_end + 3:]
    slash = rest.find(b"/")
    if slash < 0:
        return b"/", rest
    return rest[slash:], rest[:slash]


class ResponseHead:
    """A backend response's headers with hop-by-hop ones removed, and how its body is framed."""

    __slots__ = ("chunked", "has_length", "lines")

    def __init__(self, lines: list[bytes], has_length: bool, chunked: bytes | None) -> None:
        self.lines = lines            # "Name: value\r\n" pieces to forward
        self.has_length = has_length  # Content-Length present (and no Transfer-Encoding)
        self.chunked = chunked        # the Transfer-Encoding value when the body is chunked


def filter_response_headers(headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    """The headers of a whole response head, as the upstream parser's callbacks collect them
    (``add_response_header`` per header, ``finish_response_head`` at the end)."""
    pieces: list[bytes] = []
    hop: list[tuple[bytes, bytes]] = []
    has_length = False
    for name, value in headers:
        has_length = add_response_header(pieces, hop, name, value) or has_length
    has_length, chunked = finish_response_head(pieces, hop, has_length)
    return ResponseHead([b"".join(pieces[i:i + 4]) for i in range(0, len(pieces), 4)],
                        has_length, chunked)


def add_response_header(pieces: list[bytes], hop: list[tuple[bytes, bytes]], name: bytes,
                        value: bytes) -> bool:
    """One response header: forwarded (4 pieces onto ``pieces``) or, if hop-by-hop, kept aside
    in ``hop`` as (lower-case name, value). True if it was Content-Length. (The upstream
    protocol's ``on_header`` does this inline; this is its reference.)"""
    lname = name.lower()
    if lname in HOP_BY_HOP:
        hop.append((lname, value))
        return False
    pieces += (name, b": ", value, b"\r\n")
    return lname == b"content-length"


def finish_response_head(pieces: list[bytes], hop: list[tuple[bytes, bytes]],
                         has_length: bool, start: int = 0) -> tuple[bool, bytes | None]:
    """After the last header: drop from ``pieces`` (groups of 4 from ``start``) the headers
    the Connection header names, and Content-Length when the body is chunked. Returns
    (has_length, the Transfer-Encoding value or None)."""
    te: bytes | None = None
    conn_values: list[bytes] = []
    for lname, value in hop:
        if lname == b"connection" or lname == b"proxy-connection":
            conn_values.append(value)
        elif lname == b"transfer-encoding":
            te = value
    extra = _connection_tokens(conn_values) - HOP_BY_HOP if conn_values else set()
    if te is not None:
        extra.add(b"content-length")
    if extra:
        pieces[start:] = [piece for i in range(start, len(pieces), 4)
                          if pieces[i].lower() not in extra for piece in pieces[i:i + 4]]
    return has_length and te is None, te


# (status, reason) -> status line; a backend uses a handful. Bounded like _HOSTS.
STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    line = STATUS_LINES.get((status, reason))
    if line is None:
        if len(STATUS_LINES) >= 256:
            STATUS_LINES.clear()
        line = STATUS_LINES[status, reason] = \
            b"HTTP/1.1 %d %b\r\n" % (status, reason or _reason(status))
    return line


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def frame_body(head: list[bytes], status: int, has_length: bool, chunked: bytes | None,
               http11: bool) -> tuple[bool, bool, bool]:
    """How a backend's response body (not a HEAD's) reaches the client: (close the connection
    after it, re-chunk it, it ends at the backend's EOF). ``head`` gets the Transfer-Encoding
    line that takes."""
    if status == 204 or status == 304 or (has_length and chunked is None):
        return False, False, False  # as it came (204 and 304: no body, whatever is said)
    to_eof = chunked is None
    if not http11:
        return True, False, to_eof  # HTTP/1.0: the body ends when the connection does
    head.append(b"Transfer-Encoding: %b\r\n" % (chunked or b"chunked"))
    return False, True, to_eof


def connection_header(close: bool, http11: bool) -> bytes:
    """What a response says of the connection: closed, or kept (said aloud only to an
    HTTP/1.0 client, for which closing is the default)."""
    if close:
        return b"Connection: close\r\n"
    return b"" if http11 else b"Connection: keep-alive\r\n"


def router_response(status: int, text: str, *, close: bool, http11: bool = True,
                    head: bool = False) -> bytes:
    """A short plain-text response generated by the router itself (404, 502, ...).

    ``head``: the request was HEAD, so the body is announced but not sent (sending it would be
    read as the start of the next response on a keep-alive connection).
    """
    body = text.encode() + b"\n"
    conn = connection_header(close, http11)
    return b"%bContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%b" \
           b"Server: hinotori\r\n\r\n%b" % (status_line(status, b""), len(body), conn,
                                               b"" if head else body)


def wants_html(accept: bytes | None) -> bool:
    """A maintenance answer is HTML when the client's Accept names text/html and no JSON type
    (a browser navigating), JSON otherwise (API clients, scripts, curl's */*); HAProxy
    decides the same way (router/haproxy/config.py)."""
    if accept is None:
        return False
    accept = accept.lower()
    return b"text/html" in accept and b"json" not in accept


def maintenance_response(answer: tuple[bytes, bytes, bytes], accept: bytes | None, *,
                         close: bool, http11: bool = True, head: bool = False) -> bytes:
    """The router's own 503 for a service in maintenance. ``answer``: (Retry-After, JSON body,
    HTML body). ``Retry-After`` always; never cached (the service comes back); ``Vary:
    Accept`` because the body's format depends on it."""
    retry_after, json_body, html_body = answer
    html = wants_html(accept)
    body = html_body if html else json_body
    conn = connection_header(close, http11)
    return (b"%bRetry-After: %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\nVary: Accept\r\n%bServer: hinotori\r\n\r\n%b"
            % (status_line(503, b""), retry_after, HTML_TYPE if html else JSON_TYPE,
               len(body), conn, b"" if head else body))


def redirect_response(host: bytes, url: bytes, tls_port: int, *, close: bool,
                      http11: bool = True, head: bool = False) -> bytes:
    """308 to the same host and URL on the TLS listener (``[router] redirect_http``)."""
    authority = host or b"localhost"
    if tls_port != 443:
        authority += b":%d" % tls_port
    location = b"https://" + authority + (url if url.startswith(b"/") else b"/")
    body = b"redirecting to HTTPS\n"
    conn = connection_header(close, http11)
    return (status_line(308, b"") + b"Location: " + location + b"\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%bServer: "
            b"hinotori\r\n\r\n%b" % (len(body), conn, b"" if head else body))
