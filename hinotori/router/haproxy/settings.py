"""What haproxy.cfg is written for that is not the routing table: ``Settings``, and where the
runtime maps live (their files, loaded at start and reload, changed through the Runtime API).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hinotori.router.base import KEEP_ALIVE_TIMEOUT, REQUEST_TIMEOUT

# HAProxy draws rand(SAMPLE_RANGE) per request and logs it when the draw is in the latency
# map's one range, 0:R/N-1 (a map_int lookup, no variable set per request); the entry's value,
# N, is what each logged line counts for.
SAMPLE_RANGE = 1 << 30

@dataclass(frozen=True)
class Settings:
    """Everything in haproxy.cfg that is not the table."""

    listen: str
    stats_socket: Path
    maps_dir: Path
    threads: int = 1
    maxconn: int = 4096
    latency_log: bool = True        # per-request latency lines into the LATENCY_RING
    hard_stop_after: float = 60.0   # an old worker's longest life after a reload
    # Re-send an idempotent request that reached a host and got no answer, as the built-in
    # router does. Off by default: HAProxy's L7 retries keep a copy of every request, which
    # cost 14% of its req/s here (bench/router.py); hinotori's drains never close a host's
    # connection under a request, so what this guards is a host dying mid-request.
    retry_unanswered: bool = False
    # A request head must be whole this long after the connection or its first byte (408),
    # and a keep-alive connection waits this long for its next request: as the built-in router.
    request_timeout: float = REQUEST_TIMEOUT
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT
    preview_listen: str | None = None  # a second frontend: held releases answer there
    # HTTPS (tls.py): a second bind with the crt-list in certs_dir; the plain bind answers 308
    # to the HTTPS port when redirect_port is set.
    tls_listen: str | None = None
    certs_dir: Path | None = None
    redirect_port: int | None = None


def duration(seconds: float) -> str:
    """A duration as HAProxy reads it (``10s``, ``1500ms``)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def map_file(settings: Settings, service: str) -> Path:
    return settings.maps_dir / f"{service}.map"


def sticky_file(settings: Settings) -> Path:
    return settings.maps_dir / "sticky.map"


def live_file(settings: Settings) -> Path:  # service -> its ordinary requests' backend (live.py)
    return settings.maps_dir / "live.map"


def maintenance_file(settings: Settings, name: str) -> Path:
    return settings.maps_dir / f"{name}.map"


def sample_file(settings: Settings) -> Path:
    """The latency map: one entry ``0:<R/N-1> <N>``, log 1 request in N (changed at runtime
    with no reload)."""
    return settings.maps_dir / "latency.map"


def mark_socket(settings: Settings) -> Path:
    """The latency ring's marker frontend's socket (rules.mark_frontend), beside the stats one."""
    return settings.stats_socket.with_name("haproxy-mark.sock")


def sample_entries(n: int) -> dict[str, str]:
    """The latency map's entries that log 1 request in ``n`` (>= 1)."""
    return {f"0:{SAMPLE_RANGE // n - 1}": str(n)}


def sample_current(path: Path) -> bool:
    """Whether ``path`` is a latency map in the format this version writes (an older one,
    ``n <N>``, would not load as map_int)."""
    try:
        key, value = path.read_text().split()
    except (OSError, ValueError):
        return False
    start, sep, end = key.partition(":")
    return sep == ":" and start == "0" and end.isdigit() and value.isdigit()


def sample_value(path: Path) -> int:
    """The N a latency map file holds (1 when it holds none)."""
    try:
        value = path.read_text().split()[-1]
    except (OSError, IndexError):
        return 1
    return int(value) if value.isdigit() and value != "0" else 1


def map_text(entries: dict[str, str]) -> str:
    return "".join(f"{k} {v}\n" for k, v in sorted(entries.items()))

