"""`hinotori metrics SERVICE`: a service's history per release, as terminal charts.

Five charts (request rate, error rate, p99 latency, CPU, memory), one line per release, then a
summary per release. The history comes from the controller's API (`GET /v1/metrics/history`);
when no controller runs it is read from ``.hinotori/metrics.db`` directly (SQLite WAL), so it
works for releases whose hosts are all gone and for a project whose controller is down.

Charts are drawn with plotext (5.3 series): real line charts in Braille dots with axes, tick
labels and a legend, readable in 100 columns, which Rich has no widget for. plotext 6 rewrote
its whole API, so the dependency stays on 5.3 until that settles. Without a colour terminal
(or with NO_COLOR) each release gets its own marker instead of its own colour.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt, moment_option, release_option, step_text
from hinotori.errors import ControllerError, NotFound

if TYPE_CHECKING:
    from hinotori.project import Project

CHART_HEIGHT = 11
MARKERS = ("braille", "dot", "+", "x", "*", "o")

# (title, value of one point or None)
CHARTS: tuple[tuple[str, Any], ...] = (
    ("requests / s", lambda p: p["rps"]),
    ("error rate (% of responses that were 5xx)", lambda p: 100.0 * p["error_rate"]),
    ("p99 latency (ms, bucket upper bound)", lambda p: p["p99_ms"]),
    ("CPU (% of one core, all hosts)", lambda p: p["cpu"]),
    ("memory (MiB, all hosts)", lambda p: p["memory_bytes"] / 2**20),
)


def fetch(project: Project, service: str, *, release: str | None, since: str,
          until: str | None, step: str | None) -> tuple[dict[str, Any], str]:
    """The history and where it came from: the controller, or metrics.db when none runs."""
    from hinotori.controller.client import ControllerClient

    # Imported here, not at the top: every command's start-up imports this module (Typer reads
    # the signatures), and the metrics package (asyncio, the sampler) is only for this one.
    from hinotori.observe.metrics import MetricsStore, history_text, metrics_db, parse_release
    from hinotori.observe.metrics.query import parse_step, parse_when

    now = time.time()
    parse_when("--since", since, now)  # a user's mistake is theirs to see, not a fallback
    if until:
        parse_when("--until", until, now)
    parse_release(release)
    parse_step(step)
    params = {k: v for k, v in (("service", service), ("release", release), ("since", since),
                                ("until", until), ("step", step)) if v}
    try:
        client = ControllerClient(project)
        try:
            return client.call("GET", "/v1/metrics/history", params=params), "controller"
        finally:
            client.close()
    except (ControllerError, NotFound):
        pass  # not running (or too old for history): the file is the same truth
    path = metrics_db(project.state_dir)
    if not path.exists():
        raise ControllerError(f"no metric history yet: {path} does not exist",
                              hint="the controller (`hinotori up`) samples every service "
                                   "there")
    store = MetricsStore(path)
    try:
        spec = project.spec.metrics
        return history_text(store, service, interval=spec.interval,
                            retention_raw=spec.retention_10s, release=release, since=since,
                            until=until, step=step, now=now), str(path)
    finally:
        store.close()


def _ticks(start: float, end: float, count: int = 5) -> tuple[list[float], list[str]]:
    form = "%H:%M:%S" if end - start <= 900 else "%H:%M" if end - start <= 86400 \
        else "%m-%d %H:%M"
    ticks = [start + (end - start) * i / (count - 1) for i in range(count)]
    return ticks, [time.strftime(form, time.localtime(t)) for t in ticks]


def charts(data: dict[str, Any], *, width: int, color: bool) -> str:
    import plotext as plt

    by_release: dict[int, list[dict[str, Any]]] = {}
    for p in data["points"]:
        by_release.setdefault(p["release"], []).append(p)
    start, end = data["since"], data["until"]
    if by_release:  # a range much longer than the data: start where the data starts
        start = max(start, min(p["t"] for p in data["points"]) - data["step"])
    out = []
    for title, value in CHARTS:
        plt.clf()
        plt.limit_size(False, False)
        plt.plotsize(width, CHART_HEIGHT)
        plt.theme("clear")
        top = 0.0
        for i, (number, points) in enumerate(sorted(by_release.items())):
            xs, ys = [], []
            for p in points:
                v = value(p)
                if v is not None and not math.isnan(v):
                    xs.append(p["t"])
                    ys.append(v)
            if xs:
                top = max(top, *ys)
                plt.plot(xs, ys, label=f"v{number}",
                         marker="braille" if color else MARKERS[i % len(MARKERS)])
        plt.xlim(start, end)
        plt.ylim(0, top * 1.1 if top > 0 else 1)
        plt.xticks(*_ticks(start, end))
        plt.title(title)
        chart = plt.build()
        out.append(chart if color else plt.uncolorize(chart))
    return "\n".join(out)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def metrics(service: Annotated[str, typer.Argument(help="the service")],
            release: Annotated[str | None, release_option(
                "--release", keep_text=True, help="only this release, e.g. v3")] = None,
            since: Annotated[str, moment_option("--since", keep_text=True,
                                                help="how far back, e.g. 30m, 6h, 7d")] = "1h",
            until: Annotated[str | None, moment_option("--until", keep_text=True,
                                                       help="up to … ago (default: now)")]
            = None,
            step: Annotated[str | None, typer.Option(
                "--step", parser=step_text, metavar="DURATION",
                help="bucket width, e.g. 1m (default: fit for the range)")] = None,
            spec: SpecOpt = Path("."),
            environment: EnvOpt = None, json_out: JsonOpt = False) -> None:
    """Charts of a service's requests, errors, p99, CPU and memory, per release.

    Also for releases whose hosts are all gone: 10 s points for a day, 1 min for 30 days."""
    from hinotori.project import Project

    project = Project.load(spec, environment)
    data, source = fetch(project, service, release=release, since=since, until=until,
                         step=step)
    if json_out:
        render.print_json(data)
        return
    console = render.console
    if not data["points"]:
        if service not in project.spec.services:
            known = ", ".join(sorted(project.spec.services))
            raise NotFound(f"no service {service!r} in the spec, and no history of it",
                           hint=f"services: {known}")
        console.print(f"no metric points for {service} in that range (from {source})")
        return
    width = max(60, min(100, shutil.get_terminal_size((100, 24)).columns))
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    sys.stdout.write(charts(data, width=width, color=color) + "\n")
    render.table(f"{service}: {data['resolution']} points, {render.seconds(data['step'])} steps "
                 f"(from {source})",
                 ["release", "requests", "5xx", "error rate", "p50 ms", "p99 ms", "first",
                  "last"],
                 [[f"v{r['release']}", r["requests"], r["errors_5xx"],
                   f"{100 * r['error_rate']:.2f}%", _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                   time.strftime("%H:%M:%S", time.localtime(r["first"])),
                   time.strftime("%H:%M:%S", time.localtime(r["last"]))]
                  for r in data["releases"]])
