"""LiveHosts: the controller's cached view of the live hosts is always what a fresh read of
the store gives, whoever changed the store (this connection, another thread, another process)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from hinotori.controller.hostcache import LiveHosts
from hinotori.controller.readapi import HostAnswers
from hinotori.deploy.fleet import LIVE_STATES
from hinotori.model import Host, HostState
from hinotori.store import Store


def _host(i: int, state: HostState = HostState.SERVING, service: str = "web") -> Host:
    return Host(id=f"{service}-{i}", service=service, release=1, provider="process",
                state=state, born_at=float(i), address=f"127.0.0.1:{9000 + i}")


def test_the_cache_reads_again_exactly_when_the_store_changed(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    for i in range(3):
        store.save_host(_host(i), actor="test")
    live = LiveHosts(store)

    def fresh() -> list[tuple[str, str]]:
        return [(h.id, str(h.state)) for h in store.hosts(states=LIVE_STATES)]

    def cached() -> list[tuple[str, str]]:
        return [(h.id, str(h.state)) for h in live()]

    assert cached() == fresh() and live.reads == 1
    assert cached() == fresh() and live.reads == 1  # nothing changed: no read
    store.save_host(_host(1, HostState.DESTROYED), actor="test")  # this thread's connection
    assert cached() == fresh() and [h for h, _ in cached()] == ["web-0", "web-2"]
    # Another thread has its own connection: its commit is seen through data_version.
    writer = threading.Thread(target=store.save_host, args=(_host(7),), kwargs={"actor": "t"})
    writer.start()
    writer.join()
    assert cached() == fresh() and "web-7" in [h for h, _ in cached()]
    # Another process (another Store on the same file) likewise.
    other = Store(tmp_path / "state.db")
    other.save_host(_host(8, HostState.WARM), actor="test")
    assert cached() == fresh() and "web-8" in [h for h, _ in cached()]
    reads = live.reads
    assert cached() == fresh() and live.reads == reads
    other.close()
    store.close()


def test_hosts_handed_out_for_changing_are_copies(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.save_host(_host(0), actor="test")
    store.save_host(_host(0, service="api"), actor="test")
    live = LiveHosts(store)
    mine = live.of("web", HostState.SERVING)
    assert [h.id for h in mine] == ["web-0"]
    mine[0].state = HostState.FAILED  # changed, never saved
    mine[0].data["note"] = "x"
    again = live.of("web", HostState.SERVING)
    assert [h.id for h in again] == ["web-0"] and again[0].data == {}
    assert live.of("web", HostState.WARM) == []
    store.close()


def test_every_host_cache_keeps_destroyed_ones_and_groups_match_a_fresh_read(
        tmp_path: Path) -> None:
    """states=None (the metrics sampler's view: the router may still count hosts gone) and
    the grouped views the health monitor asks for many times a second."""
    store = Store(tmp_path / "state.db")
    for i in range(4):
        store.save_host(_host(i), actor="test")
    store.save_host(_host(9, service="api"), actor="test")
    every, live = LiveHosts(store, states=None), LiveHosts(store)
    store.save_host(_host(1, HostState.DESTROYED), actor="test")
    store.save_host(_host(2, HostState.WARM), actor="test")
    assert [h.id for h in every()] == [h.id for h in store.hosts()]
    assert "web-1" in [h.id for h in every()] and "web-1" not in [h.id for h in live()]
    assert [h.id for h in live.shared("web", HostState.SERVING)] == ["web-0", "web-3"]
    assert live.ids("web", HostState.SERVING) == {"web-0", "web-3"}
    assert live.ids("api", HostState.SERVING) == {"api-9"}
    assert live.ids("web", HostState.WARM) == {"web-2"}
    copies = live.of("web", HostState.SERVING)
    copies[0].data["x"] = 1  # a copy: the cache's own host is untouched
    assert "x" not in live.shared("web", HostState.SERVING)[0].data
    store.save_host(_host(3, HostState.DESTROYED), actor="test")
    assert live.ids("web", HostState.SERVING) == {"web-0"}
    store.close()


def test_readers_share_one_table_read_only_when_a_host_was_written(tmp_path: Path) -> None:
    """The shipper, the monitor and the reaper read the same view: a change is read once for
    all of them, and a commit that wrote no host (an event, a deployment) reads nothing."""
    store = Store(tmp_path / "state.db")
    for i in range(5):
        store.save_host(_host(i), actor="test")
    shipper, monitor = LiveHosts(store), LiveHosts(store)
    assert len(shipper()) == len(monitor()) == 5 and shipper.reads == 1
    store.record("test", "something.happened", "web", {})
    assert len(shipper()) == 5 and shipper.reads == 1
    written: list[int] = []
    real = store.hosts_written_after

    def counted(mark: int) -> list[Host]:
        rows = real(mark)
        written.append(len(rows))
        return rows

    store.hosts_written_after = counted  # type: ignore[method-assign]
    store.save_host(_host(3, HostState.DRAINING), actor="test")
    assert monitor.ids("web", HostState.DRAINING) == {"web-3"}
    assert [h.id for h in shipper()] == [h.id for h in store.hosts(states=LIVE_STATES)]
    assert written == [1] and shipper.reads == 2  # one row, read once for both
    store.close()


def test_rows_from_before_the_mark_and_an_earlier_born_host_keep_a_fresh_read_s_order(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    for i in (2, 4):
        store.save_host(_host(i), actor="test")
    with store.transaction() as db:  # rows a store of the previous schema wrote: no mark
        db.execute("UPDATE hosts SET rev = 0")
    live = LiveHosts(store)
    assert [h.id for h in live()] == ["web-2", "web-4"]
    store.save_host(_host(3), actor="test")  # born between them, written last
    store.save_host(_host(2, HostState.WARM), actor="test")
    assert [h.id for h in live()] == [h.id for h in store.hosts(states=LIVE_STATES)] \
        == ["web-2", "web-3", "web-4"]
    assert live.ids("web", HostState.WARM) == {"web-2"}
    store.close()


def test_the_hosts_answer_is_kept_until_a_host_is_written(tmp_path: Path) -> None:
    """GET /v1/hosts, asked each second by the dashboard: the same bytes while no host was
    written, a fresh answer after one, per question."""
    store = Store(tmp_path / "state.db")
    for i in range(3):
        store.save_host(_host(i), actor="test")
    store.save_host(_host(5, HostState.DESTROYED), actor="test")
    answers = HostAnswers(store)

    def ids(service: str | None = None, every: bool = False) -> list[str]:
        return [h["id"] for h in json.loads(answers(service, every).body)]

    first = answers(None, False).body
    store.record("test", "something.happened", "web", {})
    assert answers(None, False).body is first  # no host written: the very same answer
    assert ids() == ["web-0", "web-1", "web-2"] and ids(every=True)[-1] == "web-5"
    store.save_host(_host(1, HostState.DESTROYED), actor="test")
    assert ids() == ["web-0", "web-2"] and ids("api") == []
    for n in range(HostAnswers.KEPT + 4):  # questions the caller makes up: a few are kept
        ids(f"svc{n}")
    assert len(answers._kept) == HostAnswers.KEPT
    store.close()
