"""Commands a running controller answers, taken before the full CLI loads.

Starting the full CLI costs far more than some commands' own work (Typer and every command
module, the spec's pydantic models, the docker SDK): ~0.5 s of CPU before `hinotori status`
sends one request that the controller answers in milliseconds. When a controller runs for this
project, it is a warm process that already has all of that. So hinotori.cli.entry first offers
`bake` (hinotori.cli.bakequick) and `status` (hinotori.cli.statusquick) to these quick paths:
standard library (Rich only for output to a terminal: plain_width, plain_wrap), the token and
controller.json read directly. A quick path acts only when it is sure the controller is this
project's: the same hinotori version, spec file and environment, a token on disk, only options
it knows. Otherwise it returns None and the
full command runs (which also uses the controller when it can). Output, ``--json``, exit codes
and errors are the same on every path.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import sys
from pathlib import Path

from hinotori import __version__

SPEC_FILE = "hinotori.toml"  # as hinotori.spec.SPEC_FILE (not imported: it loads pydantic)
STATE_DIR = ".hinotori"  # as hinotori.project.STATE_DIR (not imported: the same)
ENV_VAR = "HINOTORI_ENVIRONMENT"
CONNECT_TIMEOUT = 2.0
_ENV_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")  # options.environment_name's rule


def parse(argv: list[str], environ: dict[str, str], flags: tuple[str, ...]
          ) -> tuple[list[str], Path, str | None, set[str]] | None:
    """(positional arguments, spec file, environment, flags given) of a command line made only
    of ``--spec/-f``, ``--environment/-E``, the ``flags`` named and positionals; None for
    anything else (--help, an unknown option, a bad value, no spec file there)."""
    positional: list[str] = []
    spec, environment, given = Path("."), environ.get(ENV_VAR) or None, set()
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
        elif arg in flags:
            given.add(arg)
        elif arg.startswith("-") or eq:
            return None
        else:
            positional.append(arg)
    if environment is not None and not _ENV_NAME.fullmatch(environment):
        return None
    # Where load_spec looks: a project directory holds hinotori.toml.
    if spec.is_dir() and (spec.suffix != ".toml" or (spec / SPEC_FILE).exists()):
        spec = spec / SPEC_FILE
    if not spec.is_file():
        return None
    return positional, spec.resolve(), environment, given


def controller(spec: Path, environment: str | None) -> tuple[str, str] | None:
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


def send(address: str, method: str, path: str, token: str, body: bytes = b"",
         timeout: float = 30.0) -> socket.socket | None:
    """The connection the request went out on; None when nothing took it. HTTP/1.1 by hand, one
    request and ``Connection: close``: http.client and its email parser cost more to import
    than this command spends on anything else of its own."""
    host, _, port = address.rpartition(":")
    try:
        sock = _connect(host, int(port))
    except (OSError, ValueError):
        return None
    try:
        sock.settimeout(timeout)
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {address}\r\n"
                     f"Authorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nConnection: close\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    except OSError:
        sock.close()
        return None
    return sock


def _connect(host: str, port: int) -> socket.socket:
    """A connection to the controller. An IPv4 address (what `up` writes) is connected to
    directly: create_connection's getaddrinfo imports the idna codec (~1 ms) for nothing."""
    if not host.replace(".", "").isdigit():
        return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def receive(sock: socket.socket) -> tuple[int | None, bytes]:
    """(status, body) of the answer; (None, b"") when the controller stopped answering after
    it took the request."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        return None, b""
    return response(b"".join(chunks))


def response(raw: bytes) -> tuple[int | None, bytes]:
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


def plain_width(environ: dict[str, str]) -> int | None:
    """The width Rich would wrap this process's standard output at when it writes it as plain
    text (not a terminal, nor said to be one: rich.console.Console.is_terminal and .size);
    None when Rich would treat it as a terminal (colours, a spinner), or for a COLUMNS it would
    not take as a width. A quick path then writes its lines itself (plain_wrap): Rich's import
    is ~40 % of such a command's CPU."""
    compatible = environ.get("TTY_COMPATIBLE", "")
    if compatible == "1":
        return None
    if compatible != "0":
        force = environ.get("FORCE_COLOR")
        if force is not None:
            if force:
                return None
        elif sys.stdout.isatty():
            return None
    columns = environ.get("COLUMNS")
    if columns is not None:
        return int(columns) if columns.isascii() and columns.isdigit() and int(columns) else None
    for fd in (0, 1, 2):  # Rich's order: a terminal on any of them gives the width
        try:
            return os.get_terminal_size(fd).columns or 80
        except (AttributeError, ValueError, OSError):
            continue
    return 80


_WORD = re.compile(r"\s*\S+\s*")  # rich._wrap.re_word: a word and the spaces after it


def plain_wrap(text: str, width: int) -> str:
    """``text`` as Rich prints it, without markup, to a file ``width`` columns wide: its word
    wrap (rich._wrap.divide_line: a word that does not fit starts a line, one longer than a
    line is folded), then whitespace past the width trimmed. For text whose every character is
    one column wide (the quick paths' lines: names, digests, numbers, "—")."""
    lines = []
    for line in text.split("\n"):
        breaks: list[int] = []
        offset = 0
        for match in _WORD.finditer(line):
            start, word = match.start(), match.group()
            length = len(word.rstrip())
            if width - offset >= length:
                offset += len(word)
            elif length > width:
                chunks = [word[i:i + width] for i in range(0, len(word), width)]
                for chunk in chunks:
                    if start:
                        breaks.append(start)
                    start += len(chunk)
                offset = len(chunks[-1])
            elif offset and start:
                breaks.append(start)
                offset = len(word)
        ends = [0, *breaks, len(line)]
        for a, b in itertools.pairwise(ends):
            piece = line[a:b]
            excess = len(piece) - width
            if excess > 0:
                piece = piece[:len(piece) - min(excess, len(piece) - len(piece.rstrip()))]
            lines.append(piece[:width])
    return "\n".join(lines)


def refused(status: int, payload: bytes) -> int:
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


