"""Wire formats: RFC 5424 + octet counting, the Loki push body, Fluentd PackedForward."""

from __future__ import annotations

import json
import re

import msgpack

from hinotori.observe.logs import LogLine
from hinotori.observe.logs.forward.fluentd import messages
from hinotori.observe.logs.forward.loki import push_body, push_url, timestamp_ns
from hinotori.observe.logs.forward.receivers import FluentdReceiver, _ext
from hinotori.observe.logs.forward.syslog import Formatter

LINE = LogLine(id=42, ts=1714564800.123456, service="web", release=3, host="web-1a2b",
               source="stdout", offset=1234, line="GET / 200 ünïcode")

RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) "
    r"(?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) (?P<sd>\[.*?[^\\]\]|-) (?P<msg>.*)$", re.S)


def test_rfc5424_header_fields() -> None:
    msg = Formatter(facility=16).message(LINE).decode()
    m = RFC5424.match(msg)
    assert m, msg
    assert m["pri"] == str(16 * 8 + 6)  # local0.info
    assert m["ts"] == "2024-05-01T12:00:00.123456Z"
    assert (m["host"], m["app"], m["procid"], m["msgid"]) == ("web-1a2b", "web", "v3", "stdout")
    assert m["sd"] == '[hinotori@32473 source="stdout" offset="1234" id="42"]'
    assert m["msg"] == "GET / 200 ünïcode"


def test_structured_data_values_are_escaped_and_header_fields_printable() -> None:
    line = LogLine(id=1, ts=0.0, service="web app", release=1, host="h\tx",
                   source='logs/a"b].log', offset=0, line="x")
    m = RFC5424.match(Formatter().message(line).decode())
    assert m and m["host"] == "h_x" and m["app"] == "web_app" and m["msgid"] == "file"
    assert 'source="logs/a\\"b\\].log"' in m["sd"]


def test_octet_counting_frames_by_byte_length() -> None:
    data = Formatter().frames([LINE, LINE])
    first_len, rest = data.split(b" ", 1)
    n = int(first_len)
    assert rest[:n].decode().endswith("ünïcode")
    second_len, second = rest[n:].split(b" ", 1)
    assert int(second_len) == len(second) == n


def test_loki_body_groups_streams_and_labels_them() -> None:
    other = LogLine(**{**LINE.to_dict(), "id": 43, "host": "web-9z", "line": "b"})
    body = push_body([LINE, other, LINE], {"env": "prod"})
    json.dumps(body)
    labels = [s["stream"] for s in body["streams"]]
    assert labels[0] == {"env": "prod", "service": "web", "release": "v3", "host": "web-1a2b",
                         "source": "stdout"}
    assert [len(s["values"]) for s in body["streams"]] == [2, 1]
    assert push_url("http://loki:3100/") == "http://loki:3100/loki/api/v1/push"
    assert push_url("http://loki:3100/loki/api/v1/push") == "http://loki:3100/loki/api/v1/push"


def test_loki_timestamps_are_distinct_per_line_and_stable() -> None:
    a, b = LINE, LogLine(**{**LINE.to_dict(), "id": 43})
    assert timestamp_ns(a) != timestamp_ns(b)
    assert timestamp_ns(a) == timestamp_ns(a)
    assert int(timestamp_ns(a)) // 1_000_000 == 1714564800123  # milliseconds of ingest


def test_fluentd_packed_forward_one_chunk_per_tag() -> None:
    db = LogLine(**{**LINE.to_dict(), "id": 44, "service": "db"})
    sent = messages([LINE, db, LINE], "hinotori")
    assert len(sent) == 2
    decoded = [msgpack.unpackb(m, raw=False, ext_hook=_ext) for _, m in sent]
    tag, entries, option = decoded[0]
    assert tag == "hinotori.web" and option["size"] == 2 and option["chunk"] == sent[0][0]
    events = list(msgpack.Unpacker(__import__("io").BytesIO(entries), raw=False,
                                   ext_hook=_ext))
    (t, rec), _ = events
    assert abs(t - LINE.ts) < 1e-6
    assert rec == {"log": LINE.line, "service": "web", "release": 3, "host": "web-1a2b",
                   "source": "stdout", "offset": 1234}
    receiver = FluentdReceiver()  # the reference receiver reads all modes back
    for message in decoded:
        receiver._take(message)
    receiver._take(["tag.msg", 1.5, {"log": "message mode"}])
    receiver._take(["tag.fwd", [[2.5, {"log": "forward mode"}]], {}])
    assert [e[0] for e in receiver.events] == ["hinotori.web", "hinotori.web", "hinotori.db",
                                               "tag.msg", "tag.fwd"]


def test_a_receiver_listens_below_the_ephemeral_range_and_comes_back_on_its_port() -> None:
    """It is started again on its port after an outage: an outgoing connection can take a
    port from the kernel's ephemeral range meanwhile (a CI run lost one so), never one below."""
    import asyncio
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])

    async def scenario() -> tuple[int, int]:
        receiver = FluentdReceiver()
        await receiver.start()
        first = receiver.port
        await receiver.stop()
        await receiver.start()
        again = receiver.port
        await receiver.stop()
        return first, again

    first, again = asyncio.run(scenario())
    assert 10_000 <= first < low and again == first
