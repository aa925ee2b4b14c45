"""What both data planes answer for a service in maintenance: the 503's two bodies.

The built-in router and HAProxy send the same bytes (HAProxy gets them base64-encoded in a
map, router/haproxy/config.py), so a client sees one behaviour whichever data plane runs:
``Retry-After`` always, JSON by default, HTML when its ``Accept`` names ``text/html`` and no
JSON type (a browser navigating).
"""

from __future__ import annotations

import html
import json

from hinotori.model import Maintenance

JSON_TYPE = b"application/json"
HTML_TYPE = b"text/html; charset=utf-8"


# Both bodies are printable ASCII on one line: HAProxy's log-format strings (how its ``return``
# rule sends a body it reads from a map) escape control characters and may escape the rest.


def json_body(service: str, state: Maintenance) -> bytes:
    return json.dumps({"error": "maintenance", "service": service, "message": state.message,
                       "retry_after": state.retry_after}).encode()


def html_body(service: str, state: Maintenance) -> bytes:
    minutes = max(1, round(state.retry_after / 60))
    message = html.escape(" ".join(state.message.split()))  # newlines and tabs: a space
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(service)}: down for maintenance</title></head>"
        "<body style=\"font-family: system-ui, sans-serif; max-width: 36em; margin: 4em auto\">"
        f"<h1>Down for maintenance</h1><p>{message}</p>"
        f"<p>Please try again in about {minutes} minute{'s' if minutes != 1 else ''}.</p>"
        "</body></html>").encode("ascii", "xmlcharrefreplace")
