"""Read a spec file's text, refusing what no spec can be before any parser sees it.

A directory, a device or a FIFO named as the spec, a file that is not UTF-8, or one larger than
MAX_SPEC_BYTES are SpecErrors here. The size cap: a real spec is a few KiB (examples/hello's is
under 3 KiB), and the controller reads the spec again for every deployment, so a bounded read
keeps a wrong `--spec` (a log file, /dev/zero) from stalling it. Measured on this machine, a
1 MiB spec parses in 0.2 s and its error lines are located in 0.5 s more; at 16 MiB that is 10 s
and 12 s.
"""

from __future__ import annotations

import codecs
import stat
from pathlib import Path

from hinotori.errors import SpecError

SPEC_FILE = "hinotori.toml"
MAX_SPEC_BYTES = 1 << 20


def read_spec_text(path: Path) -> str:
    """The text of the spec file at ``path`` (a file path, not its directory)."""
    file = str(path)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError("no spec file here", file=file,
                        hint="run `hinotori init` to write a starter spec, or pass --spec PATH"
                        ) from None
    except OSError as e:
        raise SpecError(f"cannot read the spec: {e.strerror or e}", file=file) from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecError("this is a directory, not a spec file", file=file,
                        hint=f"the spec is a TOML file named {SPEC_FILE}: rename or remove the "
                        "directory, or pass --spec the path of the file")
    if not stat.S_ISREG(st.st_mode):
        raise SpecError("not a regular file (a device, FIFO or socket)", file=file,
                        hint=f"pass --spec the path of a {SPEC_FILE} file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(f"cannot read the spec: {e.strerror or e}", file=file,
                        hint="check the file's permissions") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"larger than {MAX_SPEC_BYTES >> 20} MiB, which no spec needs", file=file,
                        hint="a spec is a few KiB of TOML: is --spec pointing at the right file?")
    return decode_spec(raw, file)


def decode_spec(raw: bytes, file: str) -> str:
    """UTF-8 text (a leading byte-order mark, which some editors write, is dropped)."""
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError(f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {column} (TOML "
                        "files are UTF-8)", file=file, line=line,
                        hint="save the file as UTF-8") from None
