"""The quick paths' plain output (hinotori.cli.quick.plain_width and plain_wrap): what Rich
would write to a file, byte for byte, without importing Rich."""

from __future__ import annotations

import io
import random

import pytest
from rich.console import Console
from rich.text import Text

from hinotori.cli import bakequick, render
from hinotori.cli.quick import plain_width, plain_wrap

WIDTHS = (1, 2, 3, 7, 12, 20, 33, 40, 63, 64, 72, 74, 79, 80, 81, 120, 300)


def rich_text(text: str, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(Text(text), highlight=False)
    return out.getvalue()


def test_plain_wrap_is_richs_word_wrap() -> None:
    rng = random.Random(16)
    words = ["a", "web", "sha256:" + "ab" * 32, "—", "(3", "of", "4", "steps", "cached)", "x" * 90,
             "v12", "built:", "1", "none;"]
    texts = ["", " ", "  lead", "trail  ", "a\nb", "web: image 0525d8430dd7 — new release v11"]
    for _ in range(300):
        texts.append("".join(rng.choice(words) + " " * rng.choice((0, 1, 1, 1, 2, 3))
                             for _ in range(rng.randrange(1, 14))))
    for text in texts:
        for width in WIDTHS:
            assert plain_wrap(text, width) + "\n" == rich_text(text, width), (text, width)


SUMMARIES = [
    {"service": "web", "image": "sha256:" + "0a" * 32, "reused": False, "release": "v3",
     "release_created": True, "cache_hits": 3, "cache_misses": 1, "cached_steps": [1, 2, 3]},
    {"service": "web", "image": "sha256:" + "0a" * 32, "reused": True, "release": "v3",
     "release_created": False, "cache_hits": 4, "cache_misses": 0, "cached_steps": [1, 2, 3, 4]},
    {"service": "a-very-long-service-name-of-forty-chars", "image": "sha256:" + "9f" * 32,
     "reused": False, "release": "v12345", "release_created": True, "cache_hits": 0,
     "cache_misses": 12, "cached_steps": []},
    {"service": "api", "image": "sha256:" + "11" * 32, "reused": False, "release": "v1",
     "release_created": True, "cache_hits": 2, "cache_misses": 5, "cached_steps": None},
    {"service": "api", "image": "sha256:" + "11" * 32, "reused": True, "release": "v1",
     "release_created": False, "cache_hits": 0, "cache_misses": 0, "cached_steps": None},
]


@pytest.mark.parametrize("summary", SUMMARIES)
def test_a_bakes_plain_lines_are_what_rich_prints(summary: dict, monkeypatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for width in WIDTHS:
        out = io.StringIO()
        monkeypatch.setattr(render, "console", Console(file=out, width=width))
        bakequick.show(summary)  # Rich, as the full command prints it
        bakequick.show(summary, width)
        assert capsys.readouterr().out == out.getvalue(), width


def test_plain_only_where_rich_would_not_see_a_terminal() -> None:
    assert plain_width({"COLUMNS": "100"}) == 100
    assert plain_width({"COLUMNS": "100", "TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"}) == 100
    assert plain_width({"FORCE_COLOR": "", "COLUMNS": "90"}) == 90  # empty: not forced
    for environ in ({"TTY_COMPATIBLE": "1"}, {"FORCE_COLOR": "1"}, {"COLUMNS": "0"},
                    {"COLUMNS": "wide"}, {"COLUMNS": "-5"}):
        assert plain_width(environ) is None, environ
    # No COLUMNS: the width Rich finds (a terminal on stdin or stderr, else 80).
    assert plain_width({}) == Console(file=io.StringIO(), _environ={}).width
