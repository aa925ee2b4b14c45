"""`hinotori bake SERVICE` handed to a running controller, before the CLI has loaded.

A bake's own work after a one-line change is the engine's build (~1 s); starting the full CLI
costs about as much again (Typer and every command module, the spec's pydantic models, the
docker SDK, an engine connection). When a controller runs for this project, it is a warm
process that already has all of that, and POST /v1/services/{service}/bake runs the bake there
exactly as the CLI would: it reads the spec from disk again first. So hinotori.cli.entry
tries this module for `bake` before anything else: standard library, Rich for the output, the
token and controller.json read directly. It bakes through the controller only when it is sure
the controller is this one's: the same hinotori version, spec file and environment, a token on
disk, one service named, no option it does not know. Otherwise it returns None and the full
command (hinotori.cli.bakecmd) runs, which uses the controller too when it can, or bakes in
its own process. Output, ``--json``, exit codes and errors are the same on every path.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from pathlib import Path
from typing import Any

from hinotori import __version__

SPEC_FILE = "hinotori.toml"  # as hinotori.spec.SPEC_FILE (not imported: it loads pydantic)
STATE_DIR = ".hinotori"  # as hinotori.project.STATE_DIR (not imported: the same)
ENV_VAR = "HINOTORI_ENVIRONMENT"
CONNECT_TIMEOUT = 2.0
BAKE_TIMEOUT = 3600.0  # as hinotori.controller.client.BAKE_TIMEOUT
_ENV_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")  # options.environment_name's rule


def quick_bake(argv: list[str], environ: dict[str, str]) -> int | None:
    """The exit code of `hinotori bake <argv>` done through this project's controller, or None
    when the full command must run (nothing printed then, except why a controller that
    stopped mid-bake was left)."""
    args = _parse(argv, environ)
    if args is None:
        return None
    service, spec, environment, json_out, no_cache = args
    target = _controller(spec, environment)
    if target is None:
        return None
    address, token = target
    body = json.dumps({"no_cache": no_cache, "actor": f"cli:{_actor()}"}).encode()
    sent = _send(address, f"/v1/services/{service}/bake", body, token)
    if sent is None:
        return None  # nothing listened: a stale controller.json
    # Rich (the output) is imported while the controller bakes, not before the request.
    from hinotori.cli.render import console, err_console

    with sent, console.status(f"baking {service}…"):
        answer = _receive(sent)
    status, payload = answer
    if status is None:
        err_console.print(f"[yellow]note:[/] the controller at {address} stopped during the "
                          "bake; baking here instead", highlight=False)
        return None
    if status == 401:
        return None  # not this token's controller: the full command says so and bakes here
    if status >= 400:
        return _refused(status, payload)
    summary = json.loads(payload)
    if json_out:
        from hinotori.cli.render import print_json

        print_json([summary])
    else:
        show(summary)
    return 0


def show(summary: dict[str, Any]) -> None:
    """One bake's lines, from its summary (``releases.bake_summary``): the same whether this
    process or a controller baked."""
    from hinotori.cli.render import console, short_digest

    name, steps = summary["service"], summary["cache_hits"] + summary["cache_misses"]
    verb = "new release" if summary["release_created"] else "no change, still"
    cache = f" [dim]({summary['cache_hits']} of {steps} steps cached)[/]" if steps else ""
    console.print(f"[bold]{name}[/]: image {short_digest(summary['image'])}"
                  f"{' (already stored)' if summary['reused'] else ''} — {verb} "
                  f"[bold]{summary['release']}[/]{cache}")
    cached = summary.get("cached_steps")
    if cached is not None and steps:  # an OS image: say which layers
        built = [i for i in range(1, steps + 1) if i not in cached]
        console.print(f"  [dim]{summary['image']}; steps cached: "
                      f"{' '.join(map(str, cached)) or 'none'}; built: "
                      f"{' '.join(map(str, built)) or 'none'}[/]", highlight=False)


def _parse(argv: list[str],
           environ: dict[str, str]) -> tuple[str, Path, str | None, bool, bool] | None:
    """(service, spec file, environment, --json, --no-cache), or None for anything else
    (--help, --local, no service, an unknown option, a bad value: the full command's)."""
    service, spec, environment = None, Path("."), environ.get(ENV_VAR) or None
    json_out = no_cache = False
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in ("--spec", "-f", "--environment", "-E"):
            if not eq and not rest:
                return None
            value = inline if eq else rest.pop(0)
            if name in ("--spec", "-f"):
                spec = Path(value)
            else:
                environment = value
        elif arg == "--json":
            json_out = True
        elif arg == "--no-cache":
            no_cache = True
        elif arg.startswith("-") or service is not None or eq:
            return None
        else:
            service = arg
    if service is None or (environment is not None and not _ENV_NAME.fullmatch(environment)):
        return None
    # Where load_spec looks: a project directory holds hinotori.toml.
    if spec.is_dir() and (spec.suffix != ".toml" or (spec / SPEC_FILE).exists()):
        spec = spec / SPEC_FILE
    if not spec.is_file():
        return None
    return service, spec.resolve(), environment, json_out, no_cache


def _controller(spec: Path, environment: str | None) -> tuple[str, str] | None:
    """(address, token) of the controller of this spec file and environment, if it says it
    runs with this hinotori; None otherwise."""
    state = spec.parent / STATE_DIR
    if environment is not None:
        state = state / "env" / environment
    try:
        info = json.loads((state / "controller.json").read_text())
        token = (state / "token").read_text().strip()
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not token:
        return None
    if (info.get("version"), info.get("spec"), info.get("environment")) != (
            __version__, str(spec), environment):
        return None  # another hinotori (or spec file) runs there: the full command decides
    address = info.get("address")
    return (address, token) if isinstance(address, str) else None


def _send(address: str, path: str, body: bytes, token: str) -> socket.socket | None:
    """The connection the POST went out on; None when nothing took it. HTTP/1.1 by hand, one
    request and ``Connection: close``: http.client and its email parser cost more to import
    than this command spends on anything else of its own."""
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
    except (OSError, ValueError):
        return None
    try:
        sock.settimeout(BAKE_TIMEOUT)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {address}\r\n"
                     f"Authorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nConnection: close\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    except OSError:
        sock.close()
        return None
    return sock


def _receive(sock: socket.socket) -> tuple[int | None, bytes]:
    """(status, body) of the answer; (None, b"") when the controller stopped answering after
    it took the request."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        return None, b""
    return _response(b"".join(chunks))


def _response(raw: bytes) -> tuple[int | None, bytes]:
    """(status, body) of a whole HTTP/1.1 response; (None, b"") for a cut-off one."""
    head, sep, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None, b""
    headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
    if headers.get("transfer-encoding", "").strip() == "chunked":
        body, rest = b"", payload
        while True:
            size_line, crlf, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16) if crlf else -1
            except ValueError:
                size = -1
            if size <= 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        if size < 0:
            return None, b""
        payload = body
    elif (length := headers.get("content-length", "").strip()).isdigit():
        if len(payload) < int(length):
            return None, b""
        payload = payload[:int(length)]
    return int(parts[1]), payload


def _refused(status: int, payload: bytes) -> int:
    """Print the controller's refusal as the full command prints the same error; its code."""
    from hinotori import errors
    from hinotori.cli.render import print_error

    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        cls = errors.error_class(str(body.get("type", ""))) or errors.ControllerError
        error = cls.from_wire(body)
    else:
        error = errors.ControllerError(f"controller answered HTTP {status}")
    print_error(error)
    return error.exit_code


def _actor() -> str:
    """This user, as hinotori.store.default_actor names them (not imported: sqlite)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        import os

        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
