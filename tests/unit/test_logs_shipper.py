"""The shipper on files (no processes): offsets, partial lines, dedup on re-ship, restarts,
rotation, declared files, finished hosts. Real processes are in tests/integration."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from hinotori.model import Host
from hinotori.observe.logs import LogQuery, LogStore, Shipper, search
from hinotori.observe.logs import shipper as shipper_module
from hinotori.observe.logs.changes import FileChanges, INotify
from tests.support import make_host


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def append(path: Path, data: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)


def stored(store: LogStore, **q: object) -> list[tuple[str, str]]:
    return [(ln.source, ln.line) for ln in search(store, LogQuery(limit=None, **q))]  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs.db")


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path / "hosts" / "web-1")


def out(host: Host) -> Path:
    return Path(host.data["log"])


def test_ships_complete_lines_and_waits_for_the_partial_one(store: LogStore, host: Host) -> None:
    shipper = Shipper(store)
    append(out(host), "one\ntwo\nthr")
    assert run(shipper.ship([host])) == 2
    assert run(shipper.ship([host])) == 0
    append(out(host), "ee\n")
    assert run(shipper.ship([host])) == 1
    assert stored(store) == [("stdout", "one"), ("stdout", "two"), ("stdout", "three")]
    line = search(store, LogQuery(grep="three"))[0]
    assert (line.service, line.release, line.host, line.offset) == ("web", 1, "web-1", 8)


def test_flush_final_ships_the_partial_tail(store: LogStore, host: Host) -> None:
    shipper = Shipper(store)
    append(out(host), "done\nno newline at the end")
    assert run(shipper.flush(host, final=False)) == 1
    assert run(shipper.flush(host)) == 1
    assert stored(store)[-1] == ("stdout", "no newline at the end")


def test_reship_after_a_lost_offset_stores_nothing_twice(store: LogStore, host: Host) -> None:
    append(out(host), "".join(f"line {i}\n" for i in range(1, 101)))
    run(Shipper(store).ship([host]))
    stream = store.stream("web-1", "stdout")
    assert stream is not None
    store.set_shipped(stream.id, 0)  # as if the offset write had been lost
    again = Shipper(store)
    assert run(again.ship([host])) == 0
    assert [t for _, t in stored(store)] == [f"line {i}" for i in range(1, 101)]


def test_a_new_shipper_resumes_at_the_stored_offset(store: LogStore, host: Host) -> None:
    append(out(host), "a\nb\n")
    first = Shipper(store)
    run(first.ship([host]))
    first.close()
    append(out(host), "c\n")
    assert run(Shipper(store).ship([host])) == 1  # only c: the controller restarted
    assert [t for _, t in stored(store)] == ["a", "b", "c"]


def test_two_shippers_on_one_store_never_duplicate(store: LogStore, host: Host) -> None:
    append(out(host), "".join(f"{i}\n" for i in range(500)))
    a, b = Shipper(store), Shipper(store)
    run(a.ship([host]))
    append(out(host), "".join(f"{i}\n" for i in range(500, 1000)))
    run(b.ship([host]))  # b opened at the stored offset
    run(a.ship([host]))  # a's own offset is stale: everything it re-reads is ignored
    assert [t for _, t in stored(store)] == [str(i) for i in range(1000)]


def test_declared_files_in_view_and_scratch(store: LogStore, host: Host) -> None:
    view, scratch = Path(host.root or ""), Path(host.data["state_dir"]) / "scratch"
    (view / "logs").mkdir()
    append(view / "logs" / "app.log", "in the view\n")
    append(scratch / "app.log", "in scratch\n")
    append(scratch / "other.txt", "not declared\n")
    shipper = Shipper(store, declared=lambda service: ["logs/*.log", "*.log"])
    run(shipper.ship([host]))
    assert sorted(stored(store)) == [("$HINOTORI_SCRATCH/app.log", "in scratch"),
                                     ("logs/app.log", "in the view")]


def test_a_symlink_out_of_the_host_is_not_shipped(store: LogStore, host: Host,
                                                  tmp_path: Path) -> None:
    secret = tmp_path / "secret.log"
    secret.write_text("do not ship\n")
    os.symlink(secret, Path(host.root or "") / "evil.log")
    run(Shipper(store, declared=lambda s: ["*.log"]).ship([host]))
    assert stored(store) == []


def test_rotation_by_rename_reads_the_old_file_to_its_end(store: LogStore, host: Host) -> None:
    scratch = Path(host.data["state_dir"]) / "scratch"
    log = scratch / "app.log"
    shipper = Shipper(store, declared=lambda s: ["app.log"])
    append(log, "1\n2\n")
    run(shipper.ship([host]))
    append(log, "3\n4-partial")  # written just before rotation
    log.rename(scratch / "app.log.1")
    append(log, "5\n")
    run(shipper.ship([host]))
    run(shipper.ship([host]))
    assert [t for _, t in stored(store)] == ["1", "2", "3", "4-partial", "5"]


def test_truncation_starts_a_new_generation(store: LogStore, host: Host) -> None:
    shipper = Shipper(store)
    append(out(host), "old one\nold two\n")
    run(shipper.ship([host]))
    out(host).write_text("new\n")  # copytruncate: same file, shorter
    run(shipper.ship([host]))
    assert [t for _, t in stored(store)] == ["old one", "old two", "new"]


def test_a_host_that_left_the_live_set_is_finished(store: LogStore, host: Host,
                                                   tmp_path: Path) -> None:
    other = make_host(tmp_path / "hosts" / "web-2", host_id="web-2")
    shipper = Shipper(store)
    append(out(host), "a\nlast words without newline")
    append(out(other), "b\n")
    run(shipper.ship([host, other]))
    run(shipper.ship([other]))  # web-1 is gone: its partial tail is shipped, file closed
    assert stored(store, host="web-1") == [("stdout", "a"),
                                           ("stdout", "last words without newline")]
    assert shipper.stats.open_files == 1


def test_destroying_reads_files_the_destroy_removed(store: LogStore, host: Host) -> None:
    scratch = Path(host.data["state_dir"]) / "scratch"
    append(scratch / "app.log", "before\n")
    shipper = Shipper(store, declared=lambda s: ["app.log"])

    async def destroy() -> None:
        async with shipper.destroying(host):
            with open(scratch / "app.log", "a") as f:  # the app's last words, at SIGTERM
                f.write("while stopping\nand its very last")
            shutil.rmtree(scratch)  # the provider removes the host's scratch and view

    run(destroy())
    assert [t for _, t in stored(store)] == ["before", "while stopping", "and its very last"]
    assert shipper.stats.open_files == 0


def test_a_failed_destroy_keeps_partial_lines_waiting(store: LogStore, host: Host) -> None:
    shipper = Shipper(store)
    append(out(host), "whole\nhal")

    async def destroy() -> None:
        async with shipper.destroying(host):
            raise RuntimeError("provider could not destroy")

    with pytest.raises(RuntimeError):
        run(destroy())
    assert [t for _, t in stored(store)] == ["whole"]


def test_a_provider_without_a_log_source_is_skipped(store: LogStore, tmp_path: Path) -> None:
    alien = make_host(tmp_path / "hosts" / "x-1", host_id="x-1", provider="vm")
    assert run(Shipper(store).ship([alien])) == 0


def test_a_pass_is_bounded_and_fair(store: LogStore, tmp_path: Path) -> None:
    hosts = [make_host(tmp_path / "hosts" / f"h-{i}", host_id=f"h-{i}") for i in range(3)]
    for h in hosts:
        append(out(h), "".join(f"{h.id} {i:06d}\n" for i in range(60_000)))  # ~0.6 MB each
    shipper = Shipper(store, pass_bytes=1 << 20)
    first = run(shipper.ship(hosts))
    assert 0 < first < 180_000
    while run(shipper.ship(hosts)):
        pass
    assert len(search(store, LogQuery(limit=None))) == 180_000


def test_flush_of_a_host_still_writing_ends(store: LogStore, host: Host,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """flush ships what was written when it began: a host that always has more to say
    (here: every read makes it write 1,000 more lines) cannot keep the flush going and hold
    up its own destroy."""
    from hinotori.observe.logs import shipper as module

    append(out(host), "".join(f"early {i}\n" for i in range(50_000)))
    real = module.read_lines

    def read_while_it_writes(*args, **kwargs):  # type: ignore[no-untyped-def]
        append(out(host), "late\n" * 1000)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "read_lines", read_while_it_writes)
    run(Shipper(store).flush(host, final=False))
    assert len(search(store, LogQuery(grep="early", limit=None))) == 50_000


def test_a_declared_file_born_between_listings_is_found_by_the_next_one_or_a_flush(
        store: LogStore, host: Host) -> None:
    scratch = Path(host.data["state_dir"]) / "scratch"
    append(out(host), "out\n")
    shipper = Shipper(store, declared=lambda s: ["*.log"], discover_every=3600)
    run(shipper.ship([host]))  # lists: only output.log is there
    append(scratch / "late.log", "late one\n")
    run(shipper.ship([host]))  # between listings: one stat per open file, no glob
    assert stored(store) == [("stdout", "out")]
    run(shipper.flush(host, final=False))  # a flush always lists
    assert sorted(stored(store)) == [("$HINOTORI_SCRATCH/late.log", "late one"),
                                     ("stdout", "out")]
    eager = Shipper(LogStore(Path(host.data["state_dir"]) / "eager.db"),
                    declared=lambda s: ["*.log"], discover_every=0)
    append(scratch / "later.log", "later\n")
    run(eager.ship([host]))
    assert ("$HINOTORI_SCRATCH/later.log", "later") in stored(eager.store)


@pytest.mark.parametrize("declared", [["*.log"], []])
def test_stat_only_passes_store_what_listing_every_pass_stores(tmp_path: Path,
                                                               declared: list[str]) -> None:
    """Between listings the shipper trusts one stat per file (same inode, size unchanged:
    nothing to read), and with inotify looks only at files that had an event. Through appends,
    partial lines, rotation by rename, truncation and a new file, each ends with the same lines
    as a shipper that lists and reads every pass."""
    results = []
    for every, events in ((0.0, False), (3600.0, False), (3600.0, True)):
        h = make_host(tmp_path / f"{every}{events}" / "web-1")
        scratch, o = Path(h.data["state_dir"]) / "scratch", out(h)
        shipper = Shipper(LogStore(tmp_path / f"{every}{events}.db"),
                          declared=lambda s: declared, discover_every=every,
                          changes=FileChanges(enabled=events))
        seen: list[list[tuple[str, str]]] = []
        files = {"out": o, "app": scratch / "app.log", "app.1": scratch / "app.log.1"}
        steps = [("+", "out", "a\nb\n"), ("+", "out", "c-par"), ("", "", ""),
                 ("+", "out", "tial\n"), ("+", "app", "x1\n"), ("mv", "app", "app.1"),
                 ("+", "app", "x2\n"), ("+", "out", "d\n"),
                 ("=", "out", "t\n"),  # truncated in place (copytruncate)
                 ("+", "out", "u\nv-end")]
        for i, (op, name, arg) in enumerate(steps):
            if op == "+":
                append(files[name], arg)
            elif op == "=":
                files[name].write_text(arg)
            elif op == "mv":
                files[name].rename(files[arg])
            run(shipper.ship([h]))
            if i == 4:
                run(shipper.flush(h, final=False))  # the lazy one lists app.log here
            seen.append(sorted(stored(shipper.store)))  # after every pass, not only the end
        run(shipper.flush(h))
        seen.append(sorted(stored(shipper.store)))
        results.append(seen)
    assert results[0] == results[1] == results[2]
    results = [r[-1] for r in results]
    assert ("stdout", "c-partial") in results[0] and ("stdout", "v-end") in results[0]
    assert (("$HINOTORI_SCRATCH/app.log", "x2") in results[0]) == bool(declared)


@pytest.mark.skipif(INotify is None, reason="needs inotify")
def test_between_listings_only_files_inotify_saw_change_are_looked_at(
        store: LogStore, host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []
    real_stat = os.stat

    def counting(path: object, *args: object, **kwargs: object) -> os.stat_result:
        looked.append(str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    append(out(host), "one\n")
    shipper = Shipper(store, discover_every=3600)
    run(shipper.ship([host]))
    monkeypatch.setattr(shipper_module.os, "stat", counting)
    for _ in range(3):
        run(shipper.ship([host]))
    assert looked == []  # nothing written: not even a stat
    append(out(host), "two\n")
    run(shipper.ship([host]))
    assert looked == [str(out(host))]
    assert [t for _, t in stored(store)] == ["one", "two"]
    run(shipper.flush(host))
    assert len(shipper._changes) == 0  # closed files are no longer watched


@pytest.mark.skipif(INotify is None, reason="needs inotify")
def test_quiet_hosts_cost_no_pass_and_what_comes_after_is_shipped_at_once(
        store: LogStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing written since a pass that left nothing to do: ``ship`` makes no pass (no
    thread hop, no walk of the hosts). A write, a backlog a bounded pass left behind, a new
    host, a flush and a due listing each make the next call a pass again."""
    passes: list[int] = []
    real = Shipper._pass

    def counted(self: Shipper, hosts: list[Host]) -> int:
        passes.append(len(hosts))
        return real(self, hosts)

    monkeypatch.setattr(Shipper, "_pass", counted)
    hosts = [make_host(tmp_path / "hosts" / f"h-{i}", host_id=f"h-{i}") for i in range(2)]
    for h in hosts:
        append(out(h), f"{h.id} first\n")
    shipper = Shipper(store, discover_every=3600, pass_bytes=1 << 20)
    assert run(shipper.ship(hosts)) == 2
    for _ in range(3):
        assert run(shipper.ship(hosts)) == 0
    assert len(passes) == 1
    append(out(hosts[1]), "second\n")
    assert run(shipper.ship(hosts)) == 1 and len(passes) == 2
    assert run(shipper.ship(hosts)) == 0 and len(passes) == 2
    # A backlog bigger than one pass: passes go on with no new write until it is all stored.
    append(out(hosts[0]), "".join(f"bulk {i:06d}\n" for i in range(150_000)))  # ~1.8 MB
    while run(shipper.ship(hosts)):
        pass
    assert len(search(store, LogQuery(grep="bulk", limit=None))) == 150_000
    settled = len(passes)
    assert run(shipper.ship(hosts)) == 0 and len(passes) == settled
    newcomer = make_host(tmp_path / "hosts" / "h-new", host_id="h-new")
    append(out(newcomer), "hello\n")
    assert run(shipper.ship([*hosts, newcomer])) == 1 and len(passes) == settled + 1
    run(shipper.flush(newcomer))
    assert run(shipper.ship(hosts)) == 0 and len(passes) == settled + 2
    shipper._next_discovery = 0.0  # a listing due: only for services that declare files
    run(shipper.ship(hosts))
    assert len(passes) == settled + 2
    listing = Shipper(store, declared=lambda s: ["*.log"], discover_every=0)
    run(listing.ship(hosts))
    run(listing.ship(hosts))
    assert len(passes) == settled + 4
    assert [t for _, t in stored(store, host="h-1")] == ["h-1 first", "second"]


@pytest.mark.skipif(INotify is None, reason="needs inotify")
def test_a_file_whose_watch_the_kernel_dropped_is_looked_at_every_pass(
        store: LogStore, host: Host) -> None:
    """IN_IGNORED (the watch removed, e.g. its filesystem unmounted): no event will tell of
    that file's writes again, so every pass looks at it, as at a file never watched."""
    shipper = Shipper(store, discover_every=3600)
    append(out(host), "one\n")
    run(shipper.ship([host]))
    changes = shipper._changes
    assert changes._inotify is not None and len(changes) == 1
    changes._inotify.rm_watch(next(iter(changes._keys)))  # the kernel then says IN_IGNORED
    for line in ("two", "three"):
        run(shipper.ship([host]))
        append(out(host), f"{line}\n")  # written after a pass: only a look finds it
    run(shipper.ship([host]))
    assert [t for _, t in stored(store)] == ["one", "two", "three"]


@pytest.mark.parametrize("events", [True, False])
def test_a_file_back_at_its_path_after_a_gap_is_found(store: LogStore, host: Host,
                                                       events: bool) -> None:
    """Renamed away with no successor yet: the open file is read to its end, and the path is
    looked at every pass until a new file is there (no event would say so)."""
    shipper = Shipper(store, discover_every=3600, changes=FileChanges(enabled=events))
    append(out(host), "a\n")
    run(shipper.ship([host]))
    out(host).rename(out(host).with_name("output.log.1"))
    append(out(host).with_name("output.log.1"), "b\n")
    run(shipper.ship([host]))
    run(shipper.ship([host]))
    append(out(host), "c\n")  # a new output.log, passes later
    run(shipper.ship([host]))
    run(shipper.ship([host]))
    assert [t for _, t in stored(store)] == ["a", "b", "c"]


@pytest.mark.skipif(INotify is None, reason="needs inotify")
def test_file_changes_name_the_files_written_and_forget_unwatched_ones(tmp_path: Path) -> None:
    changes = FileChanges()
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(""), b.write_text("")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert changes.watch("a", fa.fileno()) and changes.watch("b", fb.fileno())
        assert changes.changed() == set()
        append(a, "x\n")
        assert changes.changed() == {"a"}
        assert changes.changed() == set()
        changes.unwatch("a")
        append(a, "y\n"), append(b, "z\n")
        assert changes.changed() == {"b"} and len(changes) == 1
    assert FileChanges(enabled=False).changed() is None  # unknown: look at everything
    changes.close()
