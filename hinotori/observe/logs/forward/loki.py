"""Grafana Loki's push API: ``POST /loki/api/v1/push`` with a JSON body.

Lines are grouped into streams labelled service, release ("v3"), host and source (plus any
static ``labels`` from the spec); each stream's values are ``[nanoseconds, line]`` pairs.
The timestamp is the ingest time in milliseconds with the store rowid (mod 10^6) as its
nanosecond part: distinct for every line, and the same every time a line is sent, so Loki
itself drops the duplicates a resent batch may carry (it ignores an entry identical in
timestamp and content to one it has) and never mistakes two equal lines for one.

2xx is delivered. 429 and 5xx are retried (Loki sheds load that way). Any other 4xx is a
refusal that retrying cannot fix (entry too old, line too long, bad labels): Rejected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from hinotori.observe.logs.errors import ForwardError
from hinotori.observe.logs.forward.base import Rejected
from hinotori.observe.logs.records import LogLine

PUSH_PATH = "/loki/api/v1/push"


def push_url(address: str) -> str:
    base = address.rstrip("/")
    return base if base.endswith(PUSH_PATH) else base + PUSH_PATH


def timestamp_ns(line: LogLine) -> str:
    return str(int(line.ts * 1000) * 1_000_000 + line.id % 1_000_000)


def push_body(lines: Sequence[LogLine], labels: Mapping[str, str] | None = None
              ) -> dict[str, Any]:
    streams: dict[tuple[str, int, str, str], list[list[str]]] = {}
    for line in lines:
        key = (line.service, line.release, line.host, line.source)
        streams.setdefault(key, []).append([timestamp_ns(line), line.line])
    return {"streams": [
        {"stream": {**(labels or {}), "service": s, "release": f"v{r}", "host": h,
                    "source": src}, "values": values}
        for (s, r, h, src), values in streams.items()]}


class LokiSink:
    kind = "loki"

    def __init__(self, address: str, *, tenant: str | None = None,
                 labels: Mapping[str, str] | None = None, timeout: float = 10.0) -> None:
        self.url = push_url(address)
        self.labels = dict(labels or {})
        self.headers = {"Content-Type": "application/json"}
        if tenant:
            self.headers["X-Scope-OrgID"] = tenant
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def send(self, lines: Sequence[LogLine]) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        body = json.dumps(push_body(lines, self.labels), ensure_ascii=False,
                          separators=(",", ":")).encode()
        try:
            response = await self._client.post(self.url, content=body, headers=self.headers)
        except httpx.HTTPError as e:
            raise ForwardError(f"loki at {self.url} unreachable: {e}") from e
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = response.text[:200].strip()
        if status == 429 or status >= 500:
            raise ForwardError(f"loki answered {status}: {detail}")
        raise Rejected(f"loki refused {len(lines)} lines with {status}: {detail}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
