"""Secrets without hosts: the spec's forms and refusals at their key, resolving each source and
each way it cannot be, fingerprints, masking (also in the log store and the mask relay), the
reason of a config-only release, and a boot refused before any host exists."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hinotori.errors import DeployError, SecretError, SpecError
from hinotori.model import ReleaseConfig
from hinotori.observe.logs import LogStore
from hinotori.observe.logs.query import search
from hinotori.observe.logs.records import LogQuery
from hinotori.providers import maskpipe
from hinotori.providers.base import ResolvedSecret
from hinotori.providers.secretfiles import host_dir, secret_env, tmpfs_root, write_files
from hinotori.secrets import Masker, Secrets, fingerprint, project_key, secrets_reason
from hinotori.spec import parse_spec
from tests.support import put
from tests.support_fakes import world

SPEC = """
[services.web]
command = ["python3", "app.py"]
env = {{ MODE = "x" }}

[services.web.secrets]
{secrets}
"""


def test_each_source_and_its_record_in_the_release() -> None:
    spec = parse_spec(SPEC.format(secrets='A = { env = "VAR" }\nB = { file = "b.txt" }\n'
                                          'C = { command = ["pass", "show", "c"] }\n'
                                          'D = { file = "d.pem", as_file = true }'))
    config = spec.services["web"].release_config()
    assert config.secrets == {
        "A": {"source": {"env": "VAR"}, "as_file": False, "fingerprint": ""},
        "B": {"source": {"file": "b.txt"}, "as_file": False, "fingerprint": ""},
        "C": {"source": {"command": ["pass", "show", "c"], "timeout": 10.0}, "as_file": False,
              "fingerprint": ""},
        "D": {"source": {"file": "d.pem"}, "as_file": True, "fingerprint": ""}}
    assert ReleaseConfig.from_dict(config.to_dict()) == config


def test_a_release_without_secrets_keeps_its_stored_shape() -> None:
    spec = parse_spec(SPEC.format(secrets=""))
    d = spec.services["web"].release_config().to_dict()
    assert "secrets" not in d  # releases made before secrets compare equal to new ones


@pytest.mark.parametrize(("secret", "says"), [
    ('A = { env = "VAR", file = "a" }', "exactly one source"),
    ('A = {}', "exactly one source"),
    ('A = { env = "VAR", timeout = "5s" }', "timeout only applies to a command"),
    ('A = { command = [] }', "at least 1 item"),
    ('A = { env = "1BAD" }', "pattern"),
    ('MODE = { env = "VAR" }', ":6: services.web.secrets: secret MODE sets MODE, which env"),
    ('A = { env = "VAR", as_file = "yes" }', "expected true or false"),
    ('A = { vault = "x" }', "unknown key"),
    ('"A-B" = { env = "VAR" }', "pattern"),
])
def test_what_cannot_work_is_refused_at_its_key(secret: str, says: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(SPEC.format(secrets=secret))
    assert (":7: services.web.secrets" in str(e.value) or says.startswith(":6:")) and \
        says in str(e.value), str(e.value)


def test_as_file_clashing_with_env_names_the_file_variable() -> None:
    text = SPEC.replace('MODE = "x"', 'KEY_FILE = "x"').format(
        secrets='KEY = { file = "k", as_file = true }')
    with pytest.raises(SpecError, match="secret KEY sets KEY_FILE, which env sets too"):
        parse_spec(text)


def resolver(tmp_path: Path, **environ: str) -> Secrets:
    return Secrets(tmp_path, tmp_path / ".hinotori", environ=environ)


def test_each_source_resolves_one_trailing_newline_dropped(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("from-file\n")
    s = resolver(tmp_path, VAR="from-env")
    assert s.resolve_sync("A", {"env": "VAR"}) == "from-env"
    assert s.resolve_sync("B", {"file": "f.txt"}) == "from-file"
    cmd = {"command": [sys.executable, "-c", "print('from-command')"], "timeout": 10}
    assert s.resolve_sync("C", cmd) == "from-command"
    assert asyncio.run(s.resolve("C", cmd)) == "from-command"
    assert s.masker.mask("from-env from-file from-command") == "*** *** ***"


@pytest.mark.parametrize(("source", "says"), [
    ({"env": "NOPE"}, "secret K (env NOPE): NOPE is not set"),
    ({"env": "EMPTY"}, "secret K (env EMPTY) is empty"),
    ({"file": "missing.txt"}, "secret K (file missing.txt): "),
    ({"file": "empty.txt"}, "secret K (file empty.txt) is empty"),
    ({"file": "binary"}, "is not UTF-8 text"),
    ({"command": [sys.executable, "-c", "import sys; print('oops', file=sys.stderr); "
                  "sys.exit(3)"], "timeout": 5}, "exited 3: oops"),
    ({"command": ["/nonexistent/pass"], "timeout": 5}, "cannot run it"),
    ({"command": [sys.executable, "-c", "import time; time.sleep(30)"], "timeout": 0.3},
     "did not finish within 0.3s; killed"),
    ({"command": [sys.executable, "-c", "print()"], "timeout": 5}, "is empty"),
])
def test_an_unresolvable_secret_is_an_error_naming_key_and_source(
        tmp_path: Path, source: dict, says: str) -> None:
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    s = resolver(tmp_path, EMPTY="")
    for resolve in (lambda: s.resolve_sync("K", source),
                    lambda: asyncio.run(s.resolve("K", source))):
        with pytest.raises(SecretError) as e:
            resolve()
        assert says in e.value.message, e.value.message
        assert isinstance(e.value, DeployError) and e.value.hint


def test_a_failing_command_never_shows_its_stdout(tmp_path: Path) -> None:
    (tmp_path / "leak").write_text("half-a-secret")
    leaky = [sys.executable, "-c", "import sys; print(open('leak').read()); sys.exit(1)"]
    with pytest.raises(SecretError) as e:
        resolver(tmp_path).resolve_sync("K", {"command": leaky, "timeout": 5})
    assert "half-a-secret" not in str(e.value)


def test_fingerprints_are_keyed_and_the_key_is_private(tmp_path: Path) -> None:
    key = project_key(tmp_path / ".hinotori")
    assert project_key(tmp_path / ".hinotori") == key and len(key) == 32
    assert stat.S_IMODE((tmp_path / ".hinotori" / "secrets.key").stat().st_mode) == 0o600
    a = fingerprint(key, "K", "value")
    assert a == fingerprint(key, "K", "value") and "value" not in a
    assert a != fingerprint(key, "K", "value2") != fingerprint(os.urandom(32), "K", "value")
    assert a != fingerprint(key, "L", "value")


def test_fingerprinted_config_and_the_reason_of_a_rotation(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("one")
    spec = parse_spec(SPEC.format(secrets='K = { file = "k" }\nE = { env = "VAR" }'))
    s = resolver(tmp_path, VAR="v")
    first = s.fingerprinted(spec.services["web"].release_config())
    assert first == s.fingerprinted(spec.services["web"].release_config())
    assert "one" not in json.dumps(first.to_dict())
    (tmp_path / "k").write_text("two")
    second = s.fingerprinted(spec.services["web"].release_config())
    assert second != first
    assert secrets_reason(first, second) == "secret K changed"
    fewer = ReleaseConfig(first.command, first.env, secrets={"K": second.secrets["K"]})
    assert secrets_reason(first, fewer) == "secret E removed, secret K changed"
    assert secrets_reason(fewer, first) == "secret E added, secret K changed"
    assert secrets_reason(first, ReleaseConfig(("other",), first.env, secrets=first.secrets)) \
        is None


def test_the_masker_masks_longest_first_and_keeps_rotated_values() -> None:
    m = Masker()
    assert m.mask("nothing to hide") == "nothing to hide" and not m
    m.add(["abc", "abcdef", ""])
    assert m.mask("x abcdef y abc z") == "x *** y *** z"
    m.add(["new.value"])
    assert m.mask("abc new.value newXvalue") == "*** *** newXvalue"  # literal, not a regex


def test_the_log_store_masks_every_line_it_is_given(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    m = Masker()
    m.add(["hunter2-" + "x" * 8])
    store.mask = m.mask
    put(store, "web-1", ["login with hunter2-xxxxxxxx ok", "plain"])
    lines = [ln.line for ln in search(store, LogQuery(limit=None))]
    assert lines == ["login with *** ok", "plain"]
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("logs.db*"))
    assert b"hunter2-" not in raw


def test_the_mask_relay_never_splits_a_value() -> None:
    """A value written in pieces, in lines longer than the relay's buffer, is masked."""
    value = "v-" + secrets.token_hex(20)
    r, w = os.pipe()
    os.write(w, json.dumps([value]).encode())
    os.close(w)
    text = ("x" * 65530 + value + "y" * 70000 + value[:7]) * 3 + value + "\npartial " + value
    done = subprocess.run([sys.executable, "-I", maskpipe.__file__, str(r)],
                          input=text.encode(), capture_output=True, pass_fds=(r,), timeout=30)
    os.close(r)
    assert done.stdout.decode() == text.replace(value, "***")


def test_secret_files_are_0400_on_a_tmpfs(tmp_path: Path) -> None:
    where = host_dir(str(tmp_path), "web-1")
    try:
        paths = write_files(where, [ResolvedSecret("K", "v", as_file=True),
                                    ResolvedSecret("E", "e")])
        assert list(paths) == ["K"] and paths["K"].read_text() == "v"
        assert stat.S_IMODE(paths["K"].stat().st_mode) == 0o400
        assert stat.S_IMODE(where.stat().st_mode) == 0o700
        assert where.is_relative_to(tmpfs_root())
        assert secret_env([ResolvedSecret("K", "v", True), ResolvedSecret("E", "e")],
                          {"K": "/x/K"}) == {"K_FILE": "/x/K", "E": "e"}
        assert "hidden-value" not in repr(ResolvedSecret("K", "hidden-value"))
    finally:
        import shutil

        shutil.rmtree(where.parent, ignore_errors=True)


def test_sweep_keeps_the_files_of_live_hosts(tmp_path: Path) -> None:
    from hinotori.providers.secretfiles import sweep

    kept, left = host_dir(str(tmp_path), "web-live"), host_dir(str(tmp_path), "web-orphan")
    try:
        for d in (kept, left):
            write_files(d, [ResolvedSecret("K", "v", as_file=True)])
        sweep(str(tmp_path), keep={"web-live"})
        assert (kept / "K").exists() and not left.exists()
    finally:
        import shutil

        shutil.rmtree(kept.parent, ignore_errors=True)


def test_an_unresolvable_secret_refuses_the_boot_before_any_host(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.fleet.secrets = resolver(tmp_path)  # VAR is not set for it
    config = ReleaseConfig(("app",), secrets={"DB": {"source": {"env": "VAR"},
                                                     "as_file": False, "fingerprint": ""}})
    release = w.store.create_release("web", "sha256:" + "0" * 64, config, actor="t", reason="")
    with pytest.raises(SecretError, match=r"web v1 refused: secret DB \(env VAR\): VAR is not"):
        asyncio.run(w.fleet.boot_healthy("web", release, 2))
    assert w.provider.live() == [] and w.stored_live() == []

    w.fleet.secrets = resolver(tmp_path, VAR="s3cret-value")
    hosts = asyncio.run(w.fleet.boot_healthy("web", release, 1))
    assert len(hosts) == 1
    assert w.fleet.mask("failed: s3cret-value") == "failed: ***"


def test_secret_mount_points_are_not_drift(tmp_path: Path) -> None:
    from hinotori.observe.drift import compare, from_changes

    changes = [{"Path": "/run", "Kind": 0}, {"Path": "/run/hinotori", "Kind": 1},
               {"Path": "/run/hinotori/secrets", "Kind": 1},
               {"Path": "/run/hinotori/secrets/KEY", "Kind": 1}]
    assert not from_changes(changes).drifted
    assert from_changes([*changes, {"Path": "/run/other", "Kind": 1}]).added == ["run/other"]
    (tmp_path / "run" / "hinotori" / "secrets").mkdir(parents=True)
    assert compare([], tmp_path).added == ["run"]  # the engine's /run is in a real manifest
