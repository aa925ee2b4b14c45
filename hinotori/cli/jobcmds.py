"""`hinotori jobs [NAME]` and `hinotori job run NAME`: scheduled jobs and their runs.

`jobs` reads the state store (it works without a controller; the next run is then computed
from the spec and the last due moment the controller recorded). `job run` asks the controller
to start a run now, waits until it has ended, prints its result and the tail of its output
(from the central log store: its host is gone by then) and exits non-zero unless it succeeded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console

if TYPE_CHECKING:
    from hinotori.project import Project

job_app = typer.Typer(no_args_is_help=True, help="One scheduled job: run it now.")
TAIL = 20  # output lines `job run` prints


def _ago(ts: float | None) -> str:
    return f"{render.age(ts)} ago" if ts else "-"


def _until(ts: float | None) -> str:
    if ts is None:
        return "-"
    left = ts - time.time()
    return "now" if left <= 0.5 else f"in {render.seconds(left)}"


def _result(run: dict[str, Any] | None) -> str:
    if run is None:
        return "never ran"
    if run["state"] == "running":
        return "running"
    code = "" if run["exit_code"] is None else f" (exit {run['exit_code']})"
    return f"{run['state']}{code}"


def jobs(name: Annotated[str | None, typer.Argument(
             help="a job of the spec (jobs.NAME): its run history")] = None,
         limit: Annotated[int, typer.Option("--limit", min=1, max=10_000,
                                            help="the newest N runs of NAME")] = 20,
         spec: SpecOpt = Path("."), environment: EnvOpt = None,
         json_out: JsonOpt = False) -> None:
    """Scheduled jobs: schedule, last run and its result, next run; with NAME, its runs."""
    from hinotori.controller.jobs import job_rows
    from hinotori.errors import NotFound
    from hinotori.project import Project
    from hinotori.store.jobs import JobRuns

    project = Project.load(spec, environment)
    runs = JobRuns(project.store)
    rows = job_rows(project.spec, runs)
    if name is None:
        if json_out:
            render.print_json(rows)
            return
        render.table(None, ["job", "service", "schedule", "last run", "result", "took",
                            "next run"],
                     [(r["job"], r["service"], r["when"],
                       _ago(r["last_run"]["started_at"] if r["last_run"] else None),
                       _result(r["last_run"]),
                       render.seconds(r["last_run"]["duration_s"]) if r["last_run"] else "-",
                       _until(r["next_run"])) for r in rows])
        return
    row = next((r for r in rows if r["job"] == name), None)
    if row is None:
        known = ", ".join(r["job"] for r in rows) or "none"
        raise NotFound(f"no job {name!r} in the spec (jobs: {known})",
                       hint="declare it as [jobs.NAME] in hinotori.toml")
    history = runs.runs(name, limit=limit)
    if json_out:
        render.print_json({**row, "runs": history})
        return
    console.print(f"{name}: {' '.join(row['command'])} from {row['service']}, {row['when']}, "
                  f"concurrency {row['concurrency']}; next run {_until(row['next_run'])}")
    render.table(None, ["run", "started", "trigger", "release", "host", "result", "took",
                        "error"],
                 [(r["id"], render.when(r["started_at"]), r["trigger"], r["release_name"] or "",
                   r["host"] or "", _result(r), render.seconds(r["duration_s"]),
                   (r["error"] or "")[:60]) for r in history])


def _tail(project: Project, host: str | None) -> list[str]:
    """The run's last output lines, from the central log store."""
    from hinotori.observe.logs import LogQuery, LogStore, logs_db, search

    path = logs_db(project.state_dir)
    if host is None or not path.exists():
        return []
    return [ln.line for ln in search(LogStore(path), LogQuery(host=host, limit=TAIL))]


@job_app.command("run")
def run(name: Annotated[str, typer.Argument(help="a job of the spec (jobs.NAME)")],
        spec: SpecOpt = Path("."), environment: EnvOpt = None,
        json_out: JsonOpt = False) -> None:
    """Run the job once now, wait for it, print its exit status and the tail of its output."""
    from hinotori.cli.render import visible
    from hinotori.controller.client import ControllerClient
    from hinotori.errors import ControllerError
    from hinotori.project import Project
    from hinotori.store.jobs import RUNNING, JobRuns

    project = Project.load(spec, environment)
    answer = ControllerClient(project).call("POST", f"/v1/jobs/{name}/run", json={})
    number = answer["run"]
    runs = JobRuns(project.store)
    if not json_out:
        console.print(f"job {name}: run {number} started")
    while (row := runs.run(number))["state"] == RUNNING:
        if not project.controller_file.exists():
            raise ControllerError(f"the controller stopped while run {number} of {name} ran",
                                  hint="the run goes on; the next `hinotori up` watches it to "
                                       f"its end: `hinotori jobs {name}` shows how it ended")
        time.sleep(0.1)
    tail = _tail(project, row["host"])
    if json_out:
        render.print_json({**row, "output": tail})
    else:
        for line in tail:
            console.print(f"  | {visible(line)}", markup=False, highlight=False)
        took = render.seconds(row["duration_s"])
        console.print(f"job {name}: run {number} {_result(row)} in {took}"
                      + (f" on host {row['host']}" if row["host"] else "")
                      + (f": {row['error']}" if row["error"] else ""), markup=False)
    if row["state"] != "succeeded":
        raise typer.Exit(1)
