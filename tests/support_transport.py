"""A stand-in for an asyncio transport, for driving the built-in router's protocols in unit
tests without sockets."""

from __future__ import annotations


class Transport:
    """What the protocols use of an asyncio transport; keeps what was written."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    abort = close
