"""`[jobs.NAME]`: commands run on a schedule from a service's current release, never a crontab.

    [jobs.nightly-report]
    service = "web"                      # runs from web's current release (image, env, secrets)
    command = ["python3", "report.py"]   # argv, in the image's root
    schedule = "30 3 * * *"              # cron (5 fields, @daily…), in `timezone`
    timezone = "Europe/Berlin"           # an IANA zone; default UTC
    # or: every = "30s"                  # start-to-start
    timeout = "1h"                       # then SIGTERM, the service's stop_grace, SIGKILL
    concurrency = "forbid"               # forbid | allow | replace a run still going
    missed = "run-once"                  # due while the controller was down: run-once | skip

Each run is a disposable host of its own, burned when its command exits. When a run is due is
a pure function of the spec and the last due moment (``next_due``), so the CLI shows the same
next run as the controller without asking it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import AfterValidator, Field, model_validator

from hinotori.errors import SpecError
from hinotori.spec.base import Duration, Name, Strict
from hinotori.spec.locate import key_lines, line_of

MIN_EVERY = 1.0  # seconds: a job is a host boot each time, not a busy loop


def _cron(value: str) -> str:
    try:
        CronSim(value, datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC")))
    except CronSimError as e:
        raise ValueError(f"{value!r} is not a cron schedule ({e}): write 5 fields, minute "
                         "hour day-of-month month day-of-week, e.g. \"30 3 * * *\"") from None
    return value


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}: write an IANA name such as "
                         "\"Europe/Berlin\" or \"UTC\"") from None
    return value


class JobSpec(Strict):
    service: Name
    command: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    schedule: Annotated[str, AfterValidator(_cron)] | None = None
    timezone: Annotated[str, AfterValidator(_zone)] = "UTC"
    every: Duration | None = None
    timeout: Duration = 3600.0
    concurrency: Literal["forbid", "allow", "replace"] = "forbid"
    missed: Literal["run-once", "skip"] = "run-once"

    @model_validator(mode="after")
    def _one_clock(self) -> JobSpec:
        if (self.schedule is None) == (self.every is None):
            raise ValueError("give a job either `schedule` (cron) or `every` (\"30s\"), "
                             "not both and not neither")
        if self.every is not None and self.every < MIN_EVERY:
            raise ValueError(f"every must be at least {MIN_EVERY:g}s (each run boots a host)")
        if self.timeout <= 0:
            raise ValueError("timeout must be longer than 0s")
        return self

    def next_due(self, after: float) -> float:
        """The first moment strictly after ``after`` (unix time) the job is due. ``every`` is
        start-to-start from ``after`` (the last due moment); a cron schedule is read in the
        job's time zone, with cron's usual DST rules (a time skipped by a spring-forward runs
        at the jump, a time repeated in autumn runs once)."""
        if self.every is not None:
            return after + self.every
        zone = ZoneInfo(self.timezone)
        start = datetime.fromtimestamp(after, zone)
        return next(iter(CronSim(self.schedule or "", start))).timestamp()

    @property
    def when(self) -> str:
        """The schedule as people read it: "every 30s" or "30 3 * * * Europe/Berlin"."""
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"{self.schedule} {self.timezone}"


def check_jobs(jobs: dict[str, JobSpec], services: set[str], text: str, file: str,
               relocate: Callable[[tuple], tuple] = lambda path: path) -> None:
    """Each job runs from a service the spec declares (refused at its `service` key, or where
    an environment's overlay set it: ``relocate``)."""
    for name, job in jobs.items():
        if job.service not in services:
            path = list(relocate(("jobs", name, "service")))
            raise SpecError(f"job {name!r} runs from service {job.service!r}, which the spec "
                            f"does not declare (services: {', '.join(sorted(services))})",
                            file=file, line=line_of(key_lines(text), path), key=".".join(path),
                            hint="a job runs from a service's current release: name one of "
                                 "its [services.NAME]")
