"""The quick path of `hinotori bake` (hinotori.cli.bakequick): what it takes on and what it
leaves to the full command, and which controller it trusts."""

from __future__ import annotations

import json
from pathlib import Path

from hinotori import __version__
from hinotori.cli.bakequick import _parse
from hinotori.cli.quick import controller as _controller
from hinotori.cli.quick import response as _response


def project(tmp_path: Path) -> Path:
    (tmp_path / "hinotori.toml").write_text("[project]\nname = 'x'\n")
    return tmp_path / "hinotori.toml"


def test_it_takes_one_service_and_the_options_it_knows(tmp_path: Path) -> None:
    spec = project(tmp_path)
    assert _parse(["web", "--spec", str(tmp_path)], {}) == (
        "web", spec.resolve(), None, False, False)
    assert _parse([f"--spec={spec}", "web", "--json", "--no-cache", "-E", "staging"], {}) == (
        "web", spec.resolve(), "staging", True, True)
    assert _parse(["-f", str(spec), "web"], {"HINOTORI_ENVIRONMENT": "prod"})[2] == "prod"
    assert _parse(["web", "-f", str(spec), "--environment=qa"],
                  {"HINOTORI_ENVIRONMENT": "prod"})[2] == "qa"


def test_anything_else_goes_to_the_full_command(tmp_path: Path) -> None:
    spec = str(project(tmp_path))
    for argv in ([], ["--spec", spec],  # every service: the full command lists them
                 ["web", "--help", "--spec", spec], ["web", "--local", "--spec", spec],
                 ["web", "other", "--spec", spec], ["web", "--spec"], ["web", "-x", "-f", spec],
                 ["web", "-E", "Bad_Name", "-f", spec], ["web", "--json=1", "-f", spec],
                 ["web", "--spec", str(tmp_path / "missing")]):
        assert _parse(argv, {}) is None, argv


def test_it_trusts_only_a_controller_of_this_hinotori_spec_and_environment(
        tmp_path: Path) -> None:
    spec = project(tmp_path).resolve()
    state = tmp_path / ".hinotori"
    state.mkdir()
    info = {"pid": 1, "address": "127.0.0.1:9", "version": __version__, "spec": str(spec),
            "environment": None}
    assert _controller(spec, None) is None  # nothing runs
    (state / "controller.json").write_text(json.dumps(info))
    assert _controller(spec, None) is None  # no token on disk
    (state / "token").write_text("secret\n")
    assert _controller(spec, None) == ("127.0.0.1:9", "secret")
    assert _controller(spec, "staging") is None  # another environment's state
    for key, value in (("version", "0.0.0"), ("spec", str(tmp_path / "other.toml")),
                       ("environment", "staging")):
        (state / "controller.json").write_text(json.dumps({**info, key: value}))
        assert _controller(spec, None) is None, key
    (state / "controller.json").write_text(json.dumps({k: v for k, v in info.items()
                                                       if k != "version"}))
    assert _controller(spec, None) is None  # started by a hinotori that did not say
    (state / "controller.json").write_text("{not json")
    assert _controller(spec, None) is None


def test_the_hand_written_http_reads_whole_answers_and_refuses_cut_ones() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    assert _response(head + b"content-length: 7\r\n\r\n{\"a\":1}") == (200, b'{"a":1}')
    assert _response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}") == (404, b"{}")
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=1\r\n\":1}\r\n0\r\n\r\n"
    assert _response(chunked) == (200, b'{"a":1}')
    for cut in (b"", b"HTTP/1.1 200 OK\r\ncontent-length: 7",
                head + b"content-length: 7\r\n\r\n{\"a\"",
                head + b"transfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n",
                head + b"transfer-encoding: chunked\r\n\r\nzz\r\n", b"garbage\r\n\r\n"):
        assert _response(cut) == (None, b""), cut


def test_status_takes_only_its_options_and_no_argument(tmp_path: Path) -> None:
    from hinotori.cli.quick import parse
    from hinotori.cli.statusquick import quick_status

    spec = project(tmp_path)
    assert parse(["--json", "-f", str(spec)], {}, ("--json",)) == (
        [], spec.resolve(), None, {"--json"})
    assert parse(["--json", "-f", str(spec)], {}, ()) is None  # a flag it was not told of
    for argv in (["web", "-f", str(spec)], ["--help", "-f", str(spec)],
                 ["-f", str(tmp_path / "missing")]):
        assert quick_status(argv, {}) is None, argv
    assert quick_status(["-f", str(spec)], {}) is None  # no controller.json: the full command
