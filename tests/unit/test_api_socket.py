"""The controller's API socket: connections it accepts get TCP_NODELAY from asyncio.

asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP, and an accepted socket
inherits ``proto`` from the listener. Without it, uvicorn's separate header and body writes meet
Nagle's algorithm and the client's delayed ACK: every API answer (each CLI call, each dashboard
poll) took 44 ms instead of under 1 ms on loopback.
"""

from __future__ import annotations

import asyncio
import socket

from hinotori.controller.serve import bind_api_socket


def test_accepted_api_connections_have_nodelay() -> None:
    async def check() -> int:
        listener = bind_api_socket("127.0.0.1:0")
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
        return value

    assert asyncio.run(check()) != 0
