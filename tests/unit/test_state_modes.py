"""State files are the owner's alone from the moment they exist, whatever the umask; a state
directory an older hinotori left readable is tightened when the project is loaded, except the
trees whose modes belong to their images."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.observe.logs import LogStore
from hinotori.observe.metrics.store import MetricsStore
from hinotori.project import Project
from hinotori.statefiles import open_private, private_dir, write_private
from hinotori.store import Store
from tests.support import make_project


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Everything created while it is set is as open as its creator asks: 0666 or 0777."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_token_never_exists_readable_by_others(tmp_path: Path, no_umask: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    project = Project.load(make_project(tmp_path).path)
    seen: dict[str, int] = {}
    real_link = os.link

    def link(src: str | Path, dst: str | Path) -> None:  # the moment the token appears
        seen["tmp"] = mode(Path(src))
        real_link(src, dst)
        seen["token"] = mode(Path(dst))

    monkeypatch.setattr(os, "link", link)
    token = project.token()
    assert seen == {"tmp": 0o600, "token": 0o600}
    assert mode(project.state_dir) == 0o700
    assert mode(project.state_dir / "token") == 0o600
    assert not list(project.state_dir.glob("token.*"))  # no temporary left behind
    assert Project.load(project.root).token() == token  # the same token for the next process


def test_a_racing_second_token_loses_to_the_first(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = Project.load(make_project(tmp_path).path)
    real_link = os.link

    def link(src: str | Path, dst: str | Path) -> None:  # another process got there first
        Path(dst).write_text("first")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    assert project.token() == "first"


def test_databases_and_their_wal_files_are_0600_whatever_the_umask(tmp_path: Path,
                                                                   no_umask: None) -> None:
    state = tmp_path / ".hinotori"
    stores = [Store(state / "state.db"), LogStore(state / "logs.db"),
              MetricsStore(state / "metrics.db")]
    stores[0].record("t", "x", "s")
    assert mode(state) == 0o700
    files = sorted(p.name for p in state.iterdir())
    assert {"state.db", "state.db-wal", "state.db-shm", "logs.db-wal", "metrics.db-wal"} <= set(
        files)
    assert {n: mode(state / n) for n in files} == {n: 0o600 for n in files}
    for s in stores:
        s.close()


def test_file_helpers_create_private_files_whatever_the_umask(tmp_path: Path,
                                                               no_umask: None) -> None:
    d = private_dir(tmp_path / "a" / "b")
    assert (mode(tmp_path / "a"), mode(d)) == (0o700, 0o700)
    write_private(d / "f.json", "{}")
    with open_private(d / "out.log", "ab") as f:
        f.write(b"line\n")
    old = d / "old.log"
    old.write_text("written wide by an older hinotori\n")
    assert mode(old) == 0o666
    with open_private(old, "a") as f:  # appended to: tightened, content kept
        f.write("more\n")
    assert [mode(d / n) for n in ("f.json", "out.log", "old.log")] == [0o600] * 3
    assert old.read_text().endswith("hinotori\nmore\n")
    assert sorted(p.name for p in d.iterdir()) == ["f.json", "old.log", "out.log"]


def test_an_older_readable_state_dir_is_tightened_on_load_except_image_trees(
        tmp_path: Path) -> None:
    root = make_project(tmp_path).path
    state = root / ".hinotori"
    old = os.umask(0o022)  # what an older hinotori ran with
    try:
        private_dir(state)
        os.chmod(state, 0o755)
        sqlite3.connect(state / "state.db").close()
        for rel in ("hosts/web-1", "hosts/web-1/root/bin", "hosts/web-1/scratch",
                    "images/sha256-ab/rootfs/etc", "cache/steps", "router"):
            (state / rel).mkdir(parents=True)
        for rel in ("hosts/web-1/output.log", "hosts/web-1/host.json", "router/router-0.pid",
                    "controller.log", "hosts/web-1/root/bin/app", "hosts/web-1/scratch/data",
                    "images/sha256-ab/rootfs/etc/motd", "cache/steps/x"):
            (state / rel).write_text("x")
        os.chmod(state / "hosts/web-1/root/bin/app", 0o755)
    finally:
        os.umask(old)
    assert mode(state / "controller.log") == 0o644

    Project.load(root)
    assert mode(state) == 0o700
    for rel in ("hosts", "hosts/web-1", "router"):
        assert mode(state / rel) == 0o700, rel
    for rel in ("state.db", "controller.log", "hosts/web-1/output.log", "hosts/web-1/host.json",
                "router/router-0.pid"):
        assert mode(state / rel) == 0o600, rel
    # Image trees (the whole image store and build cache), host views and what hosts wrote
    # keep their modes.
    assert mode(state / "images") == mode(state / "cache") == 0o755
    assert mode(state / "hosts/web-1/root/bin/app") == 0o755
    assert mode(state / "hosts/web-1/root/bin") == 0o755
    assert mode(state / "hosts/web-1/scratch/data") == 0o644
    assert mode(state / "images/sha256-ab/rootfs/etc/motd") == 0o644
    assert mode(state / "cache/steps/x") == 0o644
