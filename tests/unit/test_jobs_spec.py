"""`[jobs.NAME]`: the keys, what is refused at its key, and when a run is due (cron in a time
zone, DST included; `every` start-to-start)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from hinotori.errors import SpecError
from hinotori.spec import parse_spec
from hinotori.spec.jobs import JobSpec

BASE = """
[services.web]
command = ["python3", "app.py"]

[jobs.report]
service = "web"
command = ["python3", "report.py"]
{clock}
"""
BERLIN = ZoneInfo("Europe/Berlin")


def spec(clock: str = 'schedule = "30 3 * * *"\ntimezone = "Europe/Berlin"') -> str:
    return BASE.format(clock=clock)


def at(*fields: int, zone: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return datetime(*fields, tzinfo=zone, fold=fold).timestamp()  # type: ignore[misc]


def job(**keys: object) -> JobSpec:
    return JobSpec.model_validate({"service": "web", "command": ["true"], **keys})


def test_a_job_and_its_defaults() -> None:
    report = parse_spec(spec()).jobs["report"]
    assert (report.service, report.command) == ("web", ["python3", "report.py"])
    assert (report.schedule, report.timezone, report.every) == ("30 3 * * *", "Europe/Berlin",
                                                                None)
    assert (report.timeout, report.concurrency, report.missed) == (3600.0, "forbid", "run-once")
    assert report.when == "30 3 * * * Europe/Berlin"
    assert parse_spec(spec('every = "30s"')).jobs["report"].when == "every 30s"
    assert parse_spec(BASE.split("[jobs.report]")[0]).jobs == {}  # no jobs: as before


@pytest.mark.parametrize(("clock", "where", "says"), [
    ('schedule = "61 * * * *"', ":8: jobs.report.schedule", "not a cron schedule"),
    ('schedule = "* * *"', "jobs.report.schedule", "not a cron schedule"),
    ('schedule = "0 3 * * *"\ntimezone = "Mars/Olympus"', ":9: jobs.report.timezone",
     "unknown time zone"),
    ('every = "30s"\nschedule = "0 3 * * *"', "jobs.report", "not both"),
    ("", "jobs.report", "either `schedule`"),
    ('every = "100ms"', "jobs.report", "at least 1s"),
    ('every = 30', "jobs.report.every", "durations are strings"),
    ('every = "1m"\nconcurrency = "queue"', "jobs.report.concurrency", "forbid"),
    ('every = "1m"\nmissed = "run-all"', "jobs.report.missed", "run-once"),
    ('every = "1m"\ntimeout = "0s"', "jobs.report", "timeout"),
    ('every = "1m"\nretries = 3', "jobs.report.retries", "unknown key"),
])
def test_what_cannot_work_is_refused_at_its_key(clock: str, where: str, says: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(spec(clock))
    assert where in str(e.value) and says in str(e.value), str(e.value)


def test_a_job_of_a_service_the_spec_lacks_is_refused_at_its_service_key() -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(spec('every = "1m"').replace('service = "web"', 'service = "api"'))
    assert ":6: jobs.report.service" in str(e.value) and "'api'" in str(e.value)


def test_empty_commands_are_refused() -> None:
    for command in ("[]", '[""]'):
        with pytest.raises(SpecError, match=r"jobs\.report\.command"):
            parse_spec(spec('every = "1m"').replace('["python3", "report.py"]', command))


def test_cron_in_a_time_zone() -> None:
    daily = job(schedule="30 3 * * *", timezone="Europe/Berlin")
    # 03:30 in Berlin is 02:30 UTC in winter, 01:30 UTC in summer
    assert daily.next_due(at(2026, 1, 10, 12)) == at(2026, 1, 11, 3, 30)
    assert daily.next_due(at(2026, 1, 11, 3, 30)) == at(2026, 1, 12, 3, 30)  # strictly after
    assert datetime.fromtimestamp(daily.next_due(at(2026, 7, 1, 0)), ZoneInfo("UTC")).hour == 1
    utc = job(schedule="30 3 * * *")  # UTC unless told
    assert utc.next_due(at(2026, 1, 10, 12, zone=ZoneInfo("UTC"))) == at(
        2026, 1, 11, 3, 30, zone=ZoneInfo("UTC"))
    weekly = job(schedule="0 9 * * mon", timezone="America/New_York")
    nxt = datetime.fromtimestamp(weekly.next_due(at(2026, 12, 6, 12)),
                                 ZoneInfo("America/New_York"))
    assert (nxt.weekday(), nxt.hour, nxt.minute) == (0, 9, 0)


def test_dst_spring_forward_runs_a_skipped_time_at_the_jump() -> None:
    # 2026-03-29 in Berlin: 02:00 -> 03:00; a 02:30 job runs once, at 03:00, that day
    nightly = job(schedule="30 2 * * *", timezone="Europe/Berlin")
    due = nightly.next_due(at(2026, 3, 28, 12))
    assert due == at(2026, 3, 29, 3, 0)
    assert nightly.next_due(due) == at(2026, 3, 30, 2, 30)
    assert due - at(2026, 3, 28, 2, 30) == 23.5 * 3600  # a 23-hour day


def test_dst_fall_back_runs_a_repeated_time_once() -> None:
    # 2026-10-25 in Berlin: 03:00 -> 02:00; 02:30 happens twice, a daily 02:30 job runs once
    nightly = job(schedule="30 2 * * *", timezone="Europe/Berlin")
    first = nightly.next_due(at(2026, 10, 24, 12))
    assert first == at(2026, 10, 25, 2, 30)  # the first 02:30 (summer time)
    assert nightly.next_due(first) == at(2026, 10, 26, 2, 30)  # not the second one
    # an hourly job runs in both 02:xx hours: it follows the clock as it is
    hourly = job(schedule="15 * * * *", timezone="Europe/Berlin")
    a = hourly.next_due(at(2026, 10, 25, 2, 0))
    b = hourly.next_due(a)
    assert (a, b) == (at(2026, 10, 25, 2, 15), at(2026, 10, 25, 2, 15, fold=1))
    assert b - a == 3600


def test_every_is_start_to_start() -> None:
    often = job(every="30s")
    assert often.next_due(1000.0) == 1030.0
    assert often.next_due(1030.0) == 1060.0  # from the last due moment, whatever a run took
