"""``python -m hinotori.router.builtin``: run one data-plane worker (see ``worker``).

Exit codes: 0 after a graceful stop; 2 for a usage problem (bad arguments, address in use, a
live worker already on the control socket), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable
from pathlib import Path

from hinotori.errors import CertificateError
from hinotori.router.base import REQUEST_TIMEOUT
from hinotori.router.builtin.control import ControlSocketBusy
from hinotori.router.builtin.listener import AddressInUse, parse_address
from hinotori.router.builtin.worker import Worker


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None  # the stdlib loop works, only slower
    return uvloop.new_event_loop


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hinotori.router.builtin",
                                description="Run one hinotori router (data-plane) worker.")
    p.add_argument("--listen", required=True, help="HOST:PORT to serve HTTP on")
    p.add_argument("--preview-listen", help="HOST:PORT where held releases answer")
    p.add_argument("--control", required=True, type=Path, help="Unix socket for control ops")
    p.add_argument("--table-file", required=True, type=Path,
                   help="last applied routing table (loaded on start, rewritten on apply)")
    p.add_argument("--log", type=Path, help="log file (default: stderr)")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT, metavar="SECONDS",
                   help="a request head must arrive whole within this, else 408 "
                        "(default: %(default)s)")
    p.add_argument("--tls-listen", help="HOST:PORT to serve HTTPS on")
    p.add_argument("--tls-certs", type=Path,
                   help="JSON file listing the certificate/key pairs, the default first")
    p.add_argument("--redirect-http", action="store_true",
                   help="answer plain HTTP with 308 to the HTTPS listener")
    p.add_argument("--no-metrics", action="store_true",
                   help="count requests only, no status classes or latency (to measure their cost)")
    args = p.parse_args(argv)
    try:
        parse_address(args.listen)
        if args.preview_listen:
            parse_address(args.preview_listen)
    except ValueError as exc:
        p.error(str(exc))
    if (args.tls_listen is None) != (args.tls_certs is None):
        p.error("--tls-listen and --tls-certs go together")
    if args.tls_listen is not None:
        try:
            parse_address(args.tls_listen)
        except ValueError as exc:
            p.error(str(exc))
    if not args.request_timeout > 0:
        p.error("--request-timeout must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    handler: logging.Handler = (logging.FileHandler(args.log) if args.log
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s router[%(process)d] %(levelname)s %(message)s"))
    # The event loop only queues records; a thread writes them, so a slow disk never stalls
    # requests.
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    logger = logging.getLogger("hinotori.router")
    logger.addHandler(logging.handlers.QueueHandler(records))
    logger.setLevel(logging.INFO)
    listener.start()
    try:
        return _run(args)
    finally:
        listener.stop()  # flushes what is queued


def _run(args: argparse.Namespace) -> int:

    async def run() -> int:
        worker = Worker(args.listen, args.control, args.table_file, asyncio.get_running_loop(),
                        metrics=not args.no_metrics, request_timeout=args.request_timeout,
                        preview_listen=args.preview_listen,
                        tls_listen=args.tls_listen, tls_certs=args.tls_certs,
                        redirect_http=args.redirect_http)
        return await worker.run()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(run())
    except (AddressInUse, ControlSocketBusy, CertificateError) as exc:
        print(exc, file=sys.stderr, flush=True)
        return 2
    except OSError as exc:  # e.g. address not available here, no permission for the port
        print(f"hinotori router: cannot start on {args.listen}: {exc}", file=sys.stderr,
              flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
