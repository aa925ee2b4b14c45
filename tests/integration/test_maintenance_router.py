"""Maintenance mode in both data planes, with real sockets: once ``apply`` returns, every
request of the service gets the router's 503 (Retry-After always; JSON, or HTML for a
browser), the hosts get nothing, and other services are untouched; off again, the hosts answer.
Under load, every answer is the service's or a proper 503: no request fails otherwise.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from hinotori.loadgen import LoadGenerator
from hinotori.model import Backend, Maintenance, RoutingTable, ServiceRoute
from hinotori.router.base import Router
from hinotori.router.builtin import BuiltinRouter
from hinotori.router.haproxy import HaproxyRouter, runtime
from hinotori.router.haproxy.process import find_binary
from tests.support import fetch, free_port, require

pytestmark = pytest.mark.integration

MESSAGE = 'Upgrading the "db"; back <soon> & sorry \\ d\u00e9j\u00e0 vu\nline two'


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET


@pytest.fixture(scope="module")
def app() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    server.hits = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _have_haproxy() -> bool:
    try:
        find_binary("haproxy")
    except Exception:
        return False
    return True


@pytest.fixture(params=["builtin", "haproxy"])
def router(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Router]:
    listen = f"127.0.0.1:{free_port()}"
    if request.param == "haproxy":
        require(_have_haproxy(), "haproxy is not installed (apt-get install haproxy)")
        r: Router = HaproxyRouter(tmp_path / "router", listen)
    else:
        r = BuiltinRouter(tmp_path / "router", listen)
    asyncio.run(r.start())
    r.listen = listen  # type: ignore[attr-defined]
    yield r
    asyncio.run(r.stop())


def table(version: int, address: str, maintenance: Maintenance | None = None) -> RoutingTable:
    web = ServiceRoute("web", (Backend("web-1", address, 1),), maintenance=maintenance,
                       sticky=True)  # its cookie rule too (HAProxy has it for sticky routes)
    api = ServiceRoute("api", (Backend("api-1", address, 1),), hosts=("api.test",))
    return RoutingTable(version, (web, api))


def get(router: Router, *, accept: str | None = None, host: str | None = None,
        method: str = "GET", headers: dict[str, str] | None = None
        ) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(f"http://{router.listen}/x", method=method,  # type: ignore[attr-defined]
                                     headers=headers or {})
    if accept:
        request.add_header("Accept", accept)
    if host:
        request.add_header("Host", host)
    return fetch(request)


def test_maintenance_answers_for_the_service_and_off_restores_it(router: Router, app) -> None:  # type: ignore[no-untyped-def]
    address = f"127.0.0.1:{app.server_address[1]}"
    asyncio.run(router.apply(table(1, address)))
    assert get(router)[0] == 200
    worker = haproxy_worker(router)

    asyncio.run(router.apply(table(2, address, Maintenance(MESSAGE, 300))))
    hits = app.hits
    # JSON by default (curl, API clients), right after apply returned: no waiting.
    status, headers, body = get(router)
    assert status == 503 and headers["Retry-After"] == "300"
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    assert json.loads(body) == {"error": "maintenance", "service": "web", "message": MESSAGE,
                                "retry_after": 300}
    status, headers, body = get(router, accept="application/json")
    assert status == 503 and json.loads(body)["message"] == MESSAGE
    # HTML for a browser, the message escaped.
    status, headers, body = get(router, accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert status == 503 and headers["Retry-After"] == "300"
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "Down for maintenance" in page
    assert ("Upgrading the &quot;db&quot;; back &lt;soon&gt; &amp; sorry \\ d&#233;j&#224; vu "
            "line two") in page
    assert "<soon>" not in page
    status, headers, body = get(router, accept="application/json, text/html;q=0.5")
    assert status == 503 and headers["Content-Type"].startswith("application/json")
    status, headers, body = get(router, method="HEAD")
    assert status == 503 and headers["Retry-After"] == "300" and body == b""
    # Asking for a release (header, sticky cookie) does not get past maintenance either.
    for asking in ({"X-Hinotori-Release": "stable"}, {"X-Hinotori-Release": "v1"},
                   {"Cookie": "hinotori-web=v1"}):
        status, headers, body = get(router, headers=asking)
        assert status == 503 and json.loads(body)["message"] == MESSAGE, asking
    assert app.hits == hits  # the host got none of them
    assert get(router, host="api.test")[0] == 200  # another service serves on

    # A new message and Retry-After replace the old ones in place.
    asyncio.run(router.apply(table(3, address, Maintenance("still at it", 60))))
    status, headers, body = get(router)
    assert status == 503 and headers["Retry-After"] == "60"
    assert json.loads(body)["message"] == "still at it"

    asyncio.run(router.apply(table(4, address)))
    status, headers, body = get(router)
    assert status == 200 and body == b"hello" and "Retry-After" not in headers
    assert get(router, headers={"X-Hinotori-Release": "stable"})[0] == 200
    current = asyncio.run(router.current())
    assert current is not None and current.route("web").maintenance is None  # type: ignore[union-attr]
    assert haproxy_worker(router) == worker  # HAProxy: runtime maps only, never a reload


def haproxy_worker(router: Router) -> str | None:
    """The pid of HAProxy's serving worker (None for the built-in router)."""
    if not isinstance(router, HaproxyRouter):
        return None
    (info,) = asyncio.run(runtime.run(router.stats_socket, ["show info"]))
    return runtime.parse_info(info)["Pid"]


def test_every_answer_under_load_is_the_service_or_a_proper_503(router: Router, app) -> None:  # type: ignore[no-untyped-def]
    address = f"127.0.0.1:{app.server_address[1]}"
    asyncio.run(router.apply(table(1, address)))

    async def run():  # type: ignore[no-untyped-def]
        async with LoadGenerator(router.listen, clients=8,  # type: ignore[attr-defined]
                                 record_header="retry-after") as load:
            version = 2
            for _ in range(4):
                await asyncio.sleep(0.25)
                await router.apply(table(version, address, Maintenance("back soon", 120)))
                # `on` has returned: a new request gets the 503 at once
                first.append((await asyncio.to_thread(get, router))[0])
                await asyncio.sleep(0.25)
                await router.apply(table(version + 1, address))
                first.append((await asyncio.to_thread(get, router))[0])
                version += 2
            await asyncio.sleep(0.25)
        return load.stats()

    first: list[int] = []
    stats = asyncio.run(run())
    assert first == [503, 200] * 4
    assert stats.total > 200, stats
    assert stats.statuses[200] > 0 and stats.statuses[503] > 0, stats.statuses
    assert set(stats.statuses) == {200, 503}, stats.statuses
    # Every failure counted is one of the intended 503s, and each carried Retry-After.
    assert stats.failed == stats.statuses[503], stats.failure_kinds
    assert stats.by_header == {"120": stats.statuses[503]}, stats.by_header
