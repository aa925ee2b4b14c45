"""Serving: run a project's controller with its HTTP API until told to stop.

It imports both the controller (daemon.py) and the API (api.py), which imports the controller:
this module sits above both, so neither imports the other back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket

import uvicorn

from hinotori import __version__, gcheap
from hinotori.controller.api import create_app
from hinotori.controller.daemon import Controller
from hinotori.errors import ControllerError
from hinotori.project import Project
from hinotori.statefiles import write_private

log = logging.getLogger("hinotori.controller")


def bind_api_socket(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    # proto=IPPROTO_TCP, so the connections it accepts carry it too and asyncio sets
    # TCP_NODELAY on them (it checks sock.proto): otherwise uvicorn's separate header and body
    # writes meet Nagle and delayed ACKs, and every API answer takes 40 ms more.
    sock = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as e:
        sock.close()
        raise ControllerError(f"cannot listen on {listen} for the API: {e.strerror}",
                              hint="change [controller] listen, or use port 0 for any") from None
    sock.listen(128)
    return sock


async def serve(project: Project) -> None:
    """Run the controller until SIGTERM/SIGINT (controller only) or `down` (everything)."""
    controller = Controller(project)
    await controller.start()
    sock = bind_api_socket(project.spec.controller.listen)
    address = "{}:{}".format(*sock.getsockname()[:2])
    app = create_app(controller, project.token())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stopping.set)
    api = asyncio.create_task(server.serve(sockets=[sock]))
    gcheap.settle()  # start-up's objects are never scanned again: short full collections
    # version, spec and environment: `hinotori bake` hands a bake only to a controller of the
    # same hinotori, spec file and environment (hinotori.cli.bakequick).
    info = {"pid": os.getpid(), "address": address, "started_at": controller.started_at,
            "router": project.spec.router.listen, "version": __version__,
            "spec": str(project.loaded.path), "environment": project.environment}
    write_private(project.controller_file, json.dumps(info),
                  tmp=project.controller_file.with_suffix(".tmp"))
    log.info("controller up: api http://%s, router %s", address, project.spec.router.listen)
    try:
        await controller.stopping.wait()
    finally:
        log.info("stopping: the API")
        server.should_exit = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await api
        await controller.stop()
