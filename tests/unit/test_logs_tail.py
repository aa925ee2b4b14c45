"""Reading whole lines: partial lines wait, a finished file's tail does not, offsets are bytes."""

from __future__ import annotations

import io

from hinotori.observe.logs.tail import read_lines


def read(data: bytes, offset: int = 0, **kw: object) -> tuple[list, int]:
    return read_lines(io.BytesIO(data), offset, stream=1, ts=5.0, **kw)  # type: ignore[arg-type]


def test_complete_lines_with_byte_offsets() -> None:
    rows, end = read("héllo\nworld\n".encode())
    assert rows == [(1, 0, 5.0, "héllo"), (1, 7, 5.0, "world")]
    assert end == 13


def test_a_partial_last_line_waits_until_it_is_complete() -> None:
    rows, end = read(b"one\ntw")
    assert [r[3] for r in rows] == ["one"] and end == 4
    rows, end = read(b"one\ntwo\n", offset=end)
    assert rows == [(1, 4, 5.0, "two")] and end == 8


def test_final_ships_the_partial_tail() -> None:
    rows, end = read(b"one\ntw", final=True)
    assert [r[3] for r in rows] == ["one", "tw"] and end == 6


def test_nothing_new_is_no_rows() -> None:
    assert read(b"one\n", offset=4) == ([], 4)
    assert read(b"one\npart", offset=4) == ([], 4)


def test_empty_lines_and_crlf() -> None:
    rows, _ = read(b"a\r\n\nb\n")
    assert [(r[1], r[3]) for r in rows] == [(0, "a"), (3, ""), (4, "b")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    rows, _ = read(b"ok \xff\xfe\n")
    assert rows[0][3] == "ok \ufffd\ufffd"


def test_an_overlong_line_is_cut_at_the_read_size_never_stalls() -> None:
    rows, end = read(b"x" * 100 + b"\n", size=40)
    assert rows == [(1, 0, 5.0, "x" * 40)] and end == 40


def test_final_does_not_cut_a_line_that_continues_past_the_read() -> None:
    data = b"aaaa\nbbbbbbbb\n"
    rows, end = read(data, final=True, size=8)
    assert [r[3] for r in rows] == ["aaaa"] and end == 5  # not "bbb": the read was full
    rows, end = read(data, offset=end, final=True, size=16)
    assert [r[3] for r in rows] == ["bbbbbbbb"]
