"""LogPipeline, as the controller runs it: ship loop, retention loop and a forwarder in one
task; cancelling it leaves every complete line in the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hinotori.observe.logs import LogPipeline, LogQuery, LogStore, search
from hinotori.observe.logs.forward.receivers import LokiReceiver
from hinotori.spec import parse_spec
from tests.support import make_host, put

pytestmark = pytest.mark.integration


def test_pipeline_ships_forwards_retains_and_stops_cleanly(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    put(store, "gone-1", ["ancient line"], ts=1000.0)  # far older than retention
    host = make_host(tmp_path / "hosts" / "web-1")
    log = Path(host.data["log"])
    events: list[tuple] = []

    async def scenario() -> LokiReceiver:
        receiver = LokiReceiver()
        await receiver.start()
        spec = parse_spec(f'''
[logs]
retention = "1d"
ship_interval = "50ms"
[[logs.forward]]
kind = "loki"
address = "http://{receiver.address}"
[services.web]
command = ["x"]
log_files = ["app.log"]
''')
        pipeline = LogPipeline(store, spec.logs, hosts=lambda: [host],
                               declared=lambda s: spec.services[s].log_files,
                               on_event=lambda *e: events.append(e))
        task = asyncio.create_task(pipeline.run())
        log.write_text("one\ntwo\n")
        (Path(host.data["state_dir"]) / "scratch" / "app.log").write_text("from a file\n")
        for _ in range(100):
            if len(receiver.entries) >= 3:
                break
            await asyncio.sleep(0.05)
        with open(log, "a") as f:
            f.write("written just before the controller stops\n")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await receiver.stop()
        return receiver

    receiver = asyncio.run(scenario())
    assert sorted(line for _, _, line in receiver.entries) == ["from a file", "one", "two"]
    stored = [ln.line for ln in search(store, LogQuery(limit=None))]
    assert sorted(stored[:-1]) == ["from a file", "one", "two"]  # "ancient line" retained away
    assert stored[-1] == "written just before the controller stops"  # the last pass on stop
    assert ("logs.retained", "logs", {"by_age": 1, "by_size": 0}) in events
