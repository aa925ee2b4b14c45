"""Find the line of a key in TOML text, so spec errors can say file:line.

tomllib gives values but no positions, and no well-kept TOML library exposes key positions, so
this is a small scanner written for the one job: it walks the text once, tracking table headers,
dotted keys, inline tables and arrays (with element indexes), and records the 1-based line where
each key path is written. Strings and comments are skipped so their contents never look like keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.array_tables: dict[Path, int] = {}

    # -- low-level -----------------------------------------------------------------------
    def peek(self, n: int = 0) -> str:
        j = self.i + n
        return self.text[j] if j < len(self.text) else ""

    def advance(self, n: int = 1) -> None:
        for _ in range(n):
            if self.peek() == "\n":
                self.line += 1
            self.i += 1

    def skip_space(self, newlines: bool) -> None:
        while self.i < len(self.text):
            c = self.peek()
            if c == "#":
                while self.i < len(self.text) and self.peek() != "\n":
                    self.advance()
            elif c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            else:
                return

    def skip_string(self) -> str:
        q = self.peek()
        triple = self.text.startswith(q * 3, self.i)
        self.advance(3 if triple else 1)
        start = self.i
        while self.i < len(self.text):
            if q == '"' and self.peek() == "\\":
                self.advance(2)
                continue
            closing = self.text.startswith(q * 3, self.i) if triple else self.peek() == q
            if closing:
                value = self.text[start:self.i]
                self.advance(3 if triple else 1)
                return value
            if not triple and self.peek() == "\n":
                return self.text[start:self.i]
            self.advance()
        return self.text[start:]

    def read_key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_space(newlines=False)
            if self.peek() in "\"'":
                parts.append(self.skip_string())
            else:
                m = _BARE_KEY.match(self.text, self.i)
                if not m:
                    return parts
                parts.append(m.group())
                self.advance(len(m.group()))
            self.skip_space(newlines=False)
            if self.peek() != ".":
                return parts
            self.advance()

    def record(self, path: Path, known: int) -> None:
        """``path`` and each prefix longer than ``known`` parts (the parts of a dotted key:
        `a.b = 1` writes the table `a` on this line too)."""
        for end in range(max(known, 1), len(path) + 1):
            self.lines.setdefault(path[:end], self.line)

    # -- grammar -------------------------------------------------------------------------
    def run(self) -> dict[Path, int]:
        table: Path = ()
        while self.i < len(self.text):
            self.skip_space(newlines=True)
            if self.i >= len(self.text):
                break
            if self.peek() == "[":
                is_array = self.peek(1) == "["
                self.advance(2 if is_array else 1)
                key = tuple(self.read_key())
                if is_array:
                    index = self.array_tables.get(key, -1) + 1
                    self.array_tables[key] = index
                    table = (*key, index)
                else:
                    table = key
                self.lines.setdefault(table, self.line)
                self.record(key, 0)
                self.skip_to_eol()
                continue
            key = self.read_key()
            if not key:
                self.skip_to_eol()
                continue
            path = (*table, *key)
            self.record(path, len(table))
            self.skip_space(newlines=False)
            if self.peek() == "=":
                self.advance()
                self.value(path)
            self.skip_to_eol()
        return self.lines

    def skip_to_eol(self) -> None:
        while self.i < len(self.text) and self.peek() != "\n":
            if self.peek() in "\"'":
                self.skip_string()
            else:
                self.advance()

    def value(self, path: Path) -> None:
        self.skip_space(newlines=False)
        c = self.peek()
        if c in "\"'":
            self.skip_string()
        elif c == "{":
            self.inline_table(path)
        elif c == "[":
            self.array(path)
        else:
            while self.i < len(self.text) and self.peek() not in ",]}\n#":
                self.advance()

    def inline_table(self, path: Path) -> None:
        self.advance()  # {
        while self.i < len(self.text):
            self.skip_space(newlines=True)
            if self.peek() == "}":
                self.advance()
                return
            if self.peek() == ",":
                self.advance()
                continue
            key = self.read_key()
            if not key:
                self.advance()
                continue
            sub = (*path, *key)
            self.record(sub, len(path))
            self.skip_space(newlines=False)
            if self.peek() == "=":
                self.advance()
                self.value(sub)

    def array(self, path: Path) -> None:
        self.advance()  # [
        index = 0
        while self.i < len(self.text):
            self.skip_space(newlines=True)
            c = self.peek()
            if c == "]":
                self.advance()
                return
            if c == ",":
                self.advance()
                index += 1
                continue
            self.lines.setdefault((*path, index), self.line)
            self.value((*path, index))


def key_lines(text: str) -> dict[Path, int]:
    """Map every key path written in ``text`` to the line it is written on."""
    return _Scanner(text).run()


def line_of(lines: dict[Path, int], path: Sequence[str | int]) -> int | None:
    """Line of ``path``, or of its longest written prefix (a missing key points at its table)."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return None


# Tokens: multi-line strings and comments (skipped whole, so brackets inside them do not count);
# a key part (a bare word or a one-line string); a dot; a bracket; a newline. An unterminated
# string runs to the end of its line (or of the text, for a multi-line one), and quantifiers are
# possessive, so no alternative fails after a long scan and the scan stays linear on any input.
_NESTING_TOKEN = re.compile(
    r'"""(?:[^"\\]|\\.?|"(?!""))*+(?:"""|\Z)'
    r"|'''.*?(?:'''|\Z)"
    r"|#[^\n]*+"
    r'|(?P<part>[A-Za-z0-9_-]++|"(?:[^"\\\n]|\\[^\n]?)*+"?|\'[^\'\n]*+\'?)'
    r"|[\[\]{}.\n]", re.S)
MAX_KEY_PARTS = 64


def nesting_problem(text: str, limit: int) -> tuple[int, str] | None:
    """(line, what) where arrays and inline tables first nest more than ``limit`` deep, or a
    key has more than MAX_KEY_PARTS dotted parts; None if neither.

    Checked before parsing because tomllib (and the scanner above) recurse once per level, so a
    few thousand ``[`` would otherwise end in a RecursionError instead of a spec error, and
    tomllib's time grows with the square of a key's parts (50,000 parts: 100 s)."""
    depth = parts = 0
    after_dot = False  # the previous token was a dot that followed a key part
    for m in _NESTING_TOKEN.finditer(text):
        token = m.group()
        problem = None
        if m.group("part") is not None:
            parts = parts + 1 if after_dot else 1
            after_dot = False
            if parts > MAX_KEY_PARTS:
                problem = f"a key of more than {MAX_KEY_PARTS} dotted parts"
        elif token == "." and parts and not after_dot:
            after_dot = True
        else:
            parts, after_dot = 0, False
            if token in ("[", "{"):
                depth += 1
                if depth > limit:
                    problem = f"arrays or inline tables nested more than {limit} deep"
            elif token in ("]", "}"):
                depth = max(depth - 1, 0)
        if problem:
            return text.count("\n", 0, m.start()) + 1, problem
    return None
