"""An exec's output read through the HTTP response's buffered reader: the bytes http.client
took with the response's head are not lost (docker-py#3332; a CI run saw an exec answer with no
output), and the Engine API's frames are read whole however the socket splits them."""

from __future__ import annotations

import io
import socket
import threading
from types import SimpleNamespace

from hinotori.providers.container_exec import _reader, frames


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


HEAD = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
BODY = frame(1, b"kept\n") + frame(2, b"oops\n") + frame(1, b"") + frame(1, b"x" * 20_000)


def hijacked(server_sends: list[bytes]) -> SimpleNamespace:
    """A socket as the SDK hands it out after exec start: its response head already read by a
    buffered reader (which took whatever came with it), ``_response`` pointing at that reader."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        for chunk in server_sends:
            theirs.sendall(chunk)
        theirs.close()

    threading.Thread(target=serve, daemon=True).start()
    raw = socket.SocketIO(ours, "rb")
    buffered = io.BufferedReader(raw)
    while buffered.readline() not in (b"\r\n", b""):  # the head, as http.client reads it
        pass
    raw._response = SimpleNamespace(raw=SimpleNamespace(_fp=SimpleNamespace(fp=buffered)))
    return SimpleNamespace(raw=raw, buffered=buffered, sock=ours)


def read_all(reader: object) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()
    for stream, data in frames(reader):
        (err if stream == 2 else out).extend(data)
    return bytes(out), bytes(err)


def test_output_that_came_with_the_head_is_read() -> None:
    conn = hijacked([HEAD + BODY])  # one write: the reader's first fill takes it all
    assert conn.buffered.peek(1)  # the output is in the buffer, not on the socket
    assert read_all(_reader(conn.raw)) == (b"kept\n" + b"x" * 20_000, b"oops\n")


def test_reading_the_bare_socket_loses_it() -> None:
    """What the SDK's frames_iter does: the case this module exists for (the test's proof)."""
    conn = hijacked([HEAD + BODY[:40]])
    assert read_all(conn.raw) == (b"", b"")


def test_frames_split_anywhere_are_read_whole() -> None:
    chunks = [HEAD] + [BODY[i:i + 3] for i in range(0, len(BODY), 3)]
    conn = hijacked(chunks)
    assert read_all(_reader(conn.raw)) == (b"kept\n" + b"x" * 20_000, b"oops\n")


def test_a_cut_frame_ends_the_output() -> None:
    conn = hijacked([HEAD + frame(1, b"whole\n") + frame(1, b"cut short")[:-3]])
    assert read_all(_reader(conn.raw)) == (b"whole\ncut sh", b"")


def test_a_socket_without_a_response_is_read_as_it_is() -> None:
    ours, theirs = socket.socketpair()
    theirs.sendall(frame(1, b"plain\n"))
    theirs.close()
    raw = socket.SocketIO(ours, "rb")
    assert _reader(raw) is raw
    assert read_all(raw) == (b"plain\n", b"")
