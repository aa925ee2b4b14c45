"""Maintenance mode's pieces without sockets: the routing table's wire form, the built-in
router's 503 bytes and choice of body, HAProxy's maps, the store's state and its events, and
what the controller refuses to promise."""

from __future__ import annotations

import base64
import json

import pytest

from hinotori.controller.maintenance import check
from hinotori.errors import MaintenanceError
from hinotori.model import Backend, Maintenance, RoutingTable, ServiceRoute
from hinotori.router import maintenance as bodies
from hinotori.router.builtin import http1
from hinotori.router.builtin.table import Counters, compile_table
from hinotori.router.haproxy import config
from hinotori.store import Store

M = Maintenance("Back at <10:00> & \"soon\"", 120)


def routes(state: Maintenance | None) -> RoutingTable:
    return RoutingTable(3, (ServiceRoute("web", (Backend("w1", "127.0.0.1:9000", 1),),
                                         maintenance=state),
                            ServiceRoute("api", (), path_prefix="/api")))


def test_the_wire_form_carries_maintenance_only_when_on() -> None:
    on = routes(M)
    assert RoutingTable.from_dict(json.loads(json.dumps(on.to_dict()))) == on
    off = routes(None).to_dict()
    assert all("maintenance" not in r for r in off["routes"])  # as older data planes read it
    assert RoutingTable.from_dict(off) == routes(None)


def test_the_builtin_router_answers_json_or_html_with_retry_after() -> None:
    compiled = compile_table(routes(M), lambda a: None, lambda h: Counters())  # type: ignore[arg-type,return-value]
    web = compiled.match(b"", b"/")
    assert web is not None and web.maintenance is not None
    assert compiled.match(b"", b"/api/x").maintenance is None  # type: ignore[union-attr]
    raw = http1.maintenance_response(web.maintenance, b"application/json", close=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 120\r\n" in head and b"Cache-Control: no-store" in head
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "maintenance", "service": "web",
                                "message": M.message, "retry_after": 120}
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    page = http1.maintenance_response(web.maintenance, b"text/html,*/*;q=0.8", close=True)
    assert b"Content-Type: text/html" in page and b"Connection: close" in page
    assert b"Back at &lt;10:00&gt; &amp; &quot;soon&quot;" in page
    assert not http1.wants_html(b"application/json, text/html;q=0.5")  # JSON named: JSON
    assert not http1.wants_html(b"*/*") and not http1.wants_html(None)
    head_only = http1.maintenance_response(web.maintenance, None, close=False, head=True)
    assert head_only.endswith(b"\r\n\r\n")  # HEAD: the length announced, no body sent


def test_bodies_are_one_line_of_ascii_whatever_the_message() -> None:
    odd = Maintenance("d\u00e9j\u00e0 vu\nsecond\tline \u2603", 0)
    for body in (bodies.json_body("web", odd), bodies.html_body("web", odd)):
        assert body.isascii() and b"\n" not in body and b"\t" not in body
    assert "d\u00e9j\u00e0 vu\nsecond" in json.loads(bodies.json_body("web", odd))["message"]
    assert b"d&#233;j&#224; vu second line &#9731;" in bodies.html_body("web", odd)


def test_haproxy_gets_the_same_bodies_through_three_maps() -> None:
    maps = config.plan(routes(M), {}).maintenance
    assert maps["maintenance"] == {"web": "120"}
    assert base64.b64decode(maps["maintenance-json"]["web"]) == bodies.json_body("web", M)
    assert base64.b64decode(maps["maintenance-html"]["web"]) == bodies.html_body("web", M)
    for entries in maps.values():  # one token each: the Runtime API splits on spaces
        assert all(" " not in v and ";" not in v for v in entries.values())
    assert config.plan(routes(None), {}).maintenance == {n: {} for n in config.MAINTENANCE_MAPS}
    with pytest.raises(ValueError, match="retry_after"):
        config.plan(routes(Maintenance("x", -1)), {})


def test_the_store_keeps_it_across_opens_and_logs_who(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "state.db")
    assert store.maintenance("web") is None
    store.set_maintenance("web", M, actor="dashboard:abc", why="db move")
    store.set_maintenance("web", Maintenance("later", 60), actor="token", why="")
    store.close()
    again = Store(tmp_path / "state.db")
    assert again.maintenance("web") == Maintenance("later", 60)
    assert again.maintenance_all()["web"]["actor"] == "token"
    again.set_maintenance("web", None, actor="token", why="done")
    assert again.maintenance("web") is None and again.maintenance_all() == {}
    events = again.events(subject="web", action="service.maintenance")
    assert [(e.action, e.actor) for e in events] == [
        ("service.maintenance-on", "dashboard:abc"), ("service.maintenance-on", "token"),
        ("service.maintenance-off", "token")]
    assert events[0].detail["why"] == "db move" and events[0].detail["retry_after"] == 120


@pytest.mark.parametrize("message, retry, error", [
    ("x" * 501, 300, "at most 500"),
    ("ok", -1, "between 0s"),
    ("ok", 8 * 86400, "between 0s"),
    ("bell\x07", 300, "control characters"),
])
def test_what_maintenance_will_not_promise(message: str, retry: int, error: str) -> None:
    with pytest.raises(MaintenanceError, match=error):
        check(message, retry)
    check("two\nlines\tfine", 0)
