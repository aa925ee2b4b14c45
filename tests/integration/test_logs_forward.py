"""Forwarders to Loki and Fluentd, against receivers on 127.0.0.1, through a receiver outage.

Neither Loki nor Fluentd installs from the package registries reachable here, so these tests
send to hinotori.observe.logs.forward.receivers: small servers written to the published
protocols (Loki's JSON push API; Fluentd's forward protocol v1 with chunk acks). The syslog
forwarder is tested against a real rsyslog in test_logs_rsyslog.py.

The outage lasts OUTAGE seconds (HINOTORI_LOG_OUTAGE, default 3; the forward loop is the same
for every kind, and test_logs_rsyslog.py holds a real rsyslog down for the 30 s the issue
names): lines keep being ingested meanwhile, the cursor waits, nothing is lost.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hinotori.observe.logs import LogStore, Shipper
from hinotori.observe.logs.forward import ForwardLoop, forward_loop
from hinotori.observe.logs.forward.receivers import FluentdReceiver, LokiReceiver
from hinotori.spec.schema import LogForwardSpec
from tests.support import make_host
from tests.support_logs import check, through_an_outage

pytestmark = pytest.mark.integration

def loop_for(store: LogStore, spec: dict[str, object], events: list[tuple]) -> ForwardLoop:
    loop = forward_loop(store, LogForwardSpec.model_validate(spec),
                        lambda *e: events.append(e), retry_min=0.05, poll=0.02)
    loop.retry_max = 0.5
    return loop


def test_loki_delivers_and_survives_an_outage(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    events: list[tuple] = []

    async def scenario() -> tuple[LokiReceiver, dict[str, int]]:
        receiver = LokiReceiver()
        await receiver.start()
        loop = loop_for(store, {"kind": "loki", "address": f"http://{receiver.address}",
                                "tenant": "team-a", "labels": {"env": "test"},
                                "batch": 500, "timeout": "2s"}, events)
        during = await through_an_outage(tmp_path, store, loop, receiver.stop, receiver.start)
        await receiver.stop()
        return receiver, during

    receiver, during = asyncio.run(scenario())
    check(store, [line for _, _, line in receiver.entries], during)
    labels = receiver.entries[0][0]
    assert labels == {"env": "test", "service": "web", "release": "v1", "host": "web-1",
                      "source": "stdout"}
    assert receiver.tenants == {"team-a"}
    assert [e[0] for e in events][:2] == ["logs.forward-failed", "logs.forward-recovered"]


def test_fluentd_delivers_with_acks_and_survives_an_outage(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    events: list[tuple] = []

    async def scenario() -> tuple[FluentdReceiver, dict[str, int]]:
        receiver = FluentdReceiver()
        await receiver.start()
        loop = loop_for(store, {"kind": "fluentd", "address": receiver.address,
                                "tag": "shop", "batch": 500, "timeout": "2s"}, events)
        during = await through_an_outage(tmp_path, store, loop, receiver.stop, receiver.start)
        await receiver.stop()
        return receiver, during

    receiver, during = asyncio.run(scenario())
    check(store, [rec["log"] for _, _, rec in receiver.events], during)
    tag, _, record = receiver.events[0]
    assert tag == "shop.web"
    assert {k: record[k] for k in ("service", "release", "host", "source")} == \
        {"service": "web", "release": 1, "host": "web-1", "source": "stdout"}


def test_fluentd_without_acks_nothing_counts_as_delivered(tmp_path: Path) -> None:
    """A Fluentd that takes events but never acknowledges: the cursor stays, the batch is
    resent; once acks come, the cursor moves (the resent events are duplicates, not losses)."""
    store = LogStore(tmp_path / "logs.db")
    host = make_host(tmp_path / "hosts" / "web-1")
    Path(host.data["log"]).write_text("".join(f"l{i}\n" for i in range(100)))
    asyncio.run(Shipper(store).ship([host]))

    async def scenario() -> tuple[FluentdReceiver, int, int]:
        receiver = FluentdReceiver()
        receiver.ack = False
        await receiver.start()
        loop = loop_for(store, {"kind": "fluentd", "address": receiver.address,
                                "timeout": "300ms"}, [])
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(1.0)
        pos_without_acks = store.cursor(loop.name).pos
        receiver.ack = True
        for _ in range(100):
            if loop.stats.pos == 100:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await receiver.stop()
        return receiver, pos_without_acks, loop.stats.pos

    receiver, before, after = asyncio.run(scenario())
    assert before == 0 and after == 100
    assert receiver.count > 100  # what was sent unacknowledged came again
    assert {rec["log"] for _, _, rec in receiver.events} == {f"l{i}" for i in range(100)}


def test_loki_refusals_are_dropped_and_counted_errors_are_retried(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    host = make_host(tmp_path / "hosts" / "web-1")
    shipper = Shipper(store)
    events: list[tuple] = []

    async def scenario() -> LokiReceiver:
        receiver = LokiReceiver()
        await receiver.start()
        loop = loop_for(store, {"kind": "loki", "address": f"http://{receiver.address}"},
                        events)
        Path(host.data["log"]).write_text("refused 1\nrefused 2\n")
        await shipper.ship([host])
        receiver.status = 400
        assert await loop.drain(5)
        receiver.status = 503
        with open(host.data["log"], "a") as f:
            f.write("retried 1\n")
        await shipper.ship([host])
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.3)
        assert loop.stats.pos == 2  # 503: waiting, not dropped
        receiver.status = 204
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await receiver.stop()
        return receiver

    receiver = asyncio.run(scenario())
    assert [line for _, _, line in receiver.entries] == ["retried 1"]
    assert store.cursor("loki http://" + receiver.address).dropped == 2
    assert events[0][0] == "logs.forward-dropped" and "400" in events[0][2]["why"]
