"""Scheduled jobs end to end: a real controller runs [jobs.NAME] as one-shot process hosts from
the service's current release, burns them when they exit, and records every run."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import (
    CONTAINER_SPEC,
    HELLO,
    CliProject,
    free_port,
    make_project,
    remove_project_tags,
    require,
    teardown,
    wait_until,
)

PY = sys.executable


def job(name: str, code: str, *, every: str = "2s", **keys: str) -> str:
    """A [jobs.NAME] table running ``python -c code`` from web's release."""
    extra = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return (f'\n[jobs.{name}]\nservice = "web"\ncommand = {json.dumps([PY, "-c", code])}\n'
            f'every = "{every}"\n{extra}')


def runs(p: CliProject, name: str) -> list[dict]:
    return p.json("jobs", name, "--limit", "1000")["runs"]  # type: ignore[index]


def ended(p: CliProject, name: str) -> list[dict]:
    return [r for r in runs(p, name) if r["state"] != "running"]


def events(p: CliProject, action: str) -> list[dict]:
    return p.json("audit", "--action", action, "--limit", "1000")  # type: ignore[return-value]


def deployed(tmp_path: Path, extra: str) -> CliProject:
    p = make_project(tmp_path, replicas=1, extra=extra)
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    return p


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    """A notification receiver on 127.0.0.1: (its URL, the JSON bodies it got)."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


def test_an_every_job_runs_is_burned_and_its_output_is_in_the_logs(tmp_path: Path) -> None:
    code = "import os; print('tick from', os.environ['HINOTORI_HOST_ID'], os.getcwd())"
    p = make_project(tmp_path, replicas=1, extra=job("tick", code))
    try:
        p.cli("up", "-d")
        # No release yet: a due run is skipped with an event, never run.
        assert wait_until(lambda: events(p, "job.skipped"), timeout=15)
        assert "no release" in events(p, "job.skipped")[0]["detail"]["why"]
        assert runs(p, "tick") == []
        p.cli("bake", "web")
        p.cli("deploy", "web")
        assert wait_until(lambda: len(ended(p, "tick")) >= 2, timeout=30)
        first, second = sorted(ended(p, "tick"), key=lambda r: r["id"])[:2]
        assert first["state"] == "succeeded" and first["exit_code"] == 0
        assert first["trigger"] == "schedule" and first["release_name"] == "v1"
        # start-to-start: due moments exactly `every` apart
        assert second["due"] - first["due"] == pytest.approx(2.0, abs=0.01)
        hosts = {h["id"]: h for h in p.json("hosts", "--all")}  # type: ignore[union-attr]
        assert hosts[first["host"]]["state"] == "destroyed"  # burned when it exited
        # never a serving host: a job host of its own, shown as `job` while it runs
        serving = [h["id"] for h in p.serving()]
        assert first["host"] not in serving and len(serving) == 1
        assert events(p, "host.job")
        out = p.cli("logs", "--host", first["host"]).stdout
        assert f"tick from {first['host']}" in out
        assert "/root" in out  # the image's root is its working directory
        assert f"tick from {first['host']}" in p.cli("logs", "web", "--limit", "1000").stdout
        row = p.json("jobs")[0]  # type: ignore[index]
        assert row["job"] == "tick" and row["when"] == "every 2s"
        assert row["last_run"]["state"] in ("succeeded", "running")
        assert row["next_run"] > row["last_run"]["started_at"]
        table = p.cli("jobs").stdout
        assert "tick" in table and "every 2s" in table
    finally:
        teardown(p)


def overlaps(rows: list[dict]) -> bool:
    spans = sorted((r["started_at"], r["ended_at"] or 1e18) for r in rows)
    return any(b[0] < a[1] for a, b in itertools.pairwise(spans))


def test_overlap_policies(tmp_path: Path) -> None:
    sleepy = "import time; time.sleep(2.5)"
    p = deployed(tmp_path, job("forbidden", sleepy, every="1s")
                 + job("allowed", sleepy, every="1s", concurrency="allow")
                 + job("replaced", sleepy, every="1s", concurrency="replace"))
    try:
        assert wait_until(lambda: len(ended(p, "allowed")) >= 2
                          and len(ended(p, "forbidden")) >= 2
                          and len(ended(p, "replaced")) >= 2, timeout=60, interval=0.5)
        forbidden, allowed = runs(p, "forbidden"), runs(p, "allowed")
        assert not overlaps(forbidden)  # forbid: never two at once ...
        assert all(r["state"] == "succeeded" for r in ended(p, "forbidden"))
        skipped = [e for e in events(p, "job.skipped") if e["subject"] == "forbidden"]
        assert any("still running" in e["detail"]["why"] for e in skipped)  # ... others skipped
        assert overlaps(allowed)  # allow: runs side by side ...
        assert all(r["state"] == "succeeded" for r in ended(p, "allowed"))  # ... each to its end
        # replace: each run stopped by the next one, as soon as that one starts
        assert {r["state"] for r in ended(p, "replaced")} == {"replaced"}
        assert all(r["duration_s"] < 2.5 for r in ended(p, "replaced"))
    finally:
        teardown(p)


def test_failing_and_timed_out_runs_are_events_and_notifications(
        tmp_path: Path, receiver: tuple[str, list[dict]]) -> None:
    url, got = receiver
    p = deployed(tmp_path, f'\n[notify]\nwebhooks = ["{url}"]\n'
                 + job("broken", "import sys; print('oops'); sys.exit(3)", every="1h")
                 + job("slow", "import time; print('slow start', flush=True); time.sleep(60)",
                       every="1h", timeout="1s"))
    try:
        result = p.cli("job", "run", "broken", check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "oops" in result.stdout and "failed (exit 3)" in result.stdout
        result = p.cli("job", "run", "slow", check=False)
        assert result.returncode == 1 and "timed-out" in result.stdout
        assert "slow start" in result.stdout
        (broken,), (slow,) = runs(p, "broken"), runs(p, "slow")
        assert broken["state"] == "failed" and broken["exit_code"] == 3
        assert broken["trigger"] == "manual"
        assert slow["state"] == "timed-out" and 1.0 <= slow["duration_s"] < 10
        failed = {e["subject"]: e for e in events(p, "job.failed")}
        assert failed[f"broken/{broken['id']}"]["detail"]["result"] == "failed"
        assert failed[f"slow/{slow['id']}"]["detail"]["result"] == "timed-out"
        assert wait_until(lambda: len([g for g in got if g["event"] == "job_failed"]) == 2)
        notes = {g["job"]: g for g in got if g["event"] == "job_failed"}
        assert notes["broken"]["exit_code"] == 3 and notes["slow"]["result"] == "timed-out"
        hosts = {h["id"]: h["state"] for h in p.json("hosts", "--all")}  # type: ignore[union-attr]
        assert hosts[slow["host"]] == "destroyed"
    finally:
        teardown(p)


def test_job_run_waits_and_prints_the_output(tmp_path: Path) -> None:
    p = deployed(tmp_path, job("hello", "print('hello from a job')", every="1h"))
    try:
        result = p.cli("job", "run", "hello")
        assert "hello from a job" in result.stdout and "succeeded (exit 0)" in result.stdout
        out = p.json("job", "run", "hello")
        assert out["state"] == "succeeded" and out["output"] == ["hello from a job"]  # type: ignore[index]
        assert [r["trigger"] for r in runs(p, "hello")] == ["manual", "manual"]
        missing = p.cli("job", "run", "nope", check=False)
        assert missing.returncode == 1 and "no job 'nope'" in missing.stderr + missing.stdout
    finally:
        teardown(p)


def test_a_run_missed_while_the_controller_was_down_runs_once_on_start(tmp_path: Path) -> None:
    p = deployed(tmp_path, job("catchup", "print('caught up')", every="2s")
                 + job("skipper", "print('skip')", every="2s", missed="skip"))
    try:
        assert wait_until(lambda: ended(p, "catchup") and ended(p, "skipper"), timeout=20)
        before = {n: len(runs(p, n)) for n in ("catchup", "skipper")}
        p.stop_controller()
        wait_until(lambda: False, timeout=5)  # two periods and more go by with no controller
        listed = p.json("jobs")  # the store answers without a controller too
        assert {r["job"] for r in listed} == {"catchup", "skipper"}  # type: ignore[union-attr]
        p.cli("up", "-d")
        assert wait_until(lambda: any(r["trigger"] == "missed" for r in runs(p, "catchup")),
                          timeout=15)
        missed = [r for r in runs(p, "catchup") if r["trigger"] == "missed"]
        assert len(missed) == 1  # once, however many were missed
        assert not any(r["trigger"] == "missed" for r in runs(p, "skipper"))
        skips = [e for e in events(p, "job.skipped") if e["subject"] == "skipper"]
        assert any("controller was down" in e["detail"]["why"] for e in skips)
        assert len(runs(p, "catchup")) > before["catchup"]
    finally:
        teardown(p)


def test_a_job_host_outlives_a_controller_restart_and_is_adopted(tmp_path: Path) -> None:
    p = deployed(tmp_path, job("nightly", "import time; print('begun', flush=True); "
                                          "time.sleep(12); print('done', flush=True)",
                               every="2s"))
    try:
        found: list[dict] = []

        def going() -> bool:
            found[:] = [r for r in runs(p, "nightly") if r["state"] == "running" and r["host"]]
            return bool(found)

        assert wait_until(going, timeout=30)
        run = found[0]
        p.stop_controller()
        hosts = {h["id"]: h for h in p.json("hosts")}  # type: ignore[union-attr]
        assert hosts[run["host"]]["state"] == "job"  # left running by the controller
        p.cli("up", "-d")
        # adopted: watched to its end, then burned; never left running
        assert wait_until(lambda: next(r for r in runs(p, "nightly")
                                       if r["id"] == run["id"])["state"] != "running",
                          timeout=30)
        again = next(r for r in runs(p, "nightly") if r["id"] == run["id"])
        assert again["state"] == "lost"  # a process host's exit status died with its parent
        assert "exit status" in again["error"]
        assert {h["id"]: h["state"] for h in p.json("hosts", "--all")  # type: ignore[union-attr]
                }[run["host"]] == "destroyed"
        # it ran to its end: not burned on adoption
        assert wait_until(lambda: "done" in p.cli("logs", "--host", run["host"]).stdout)
        assert "begun" in p.cli("logs", "--host", run["host"]).stdout
    finally:
        teardown(p)


def test_a_job_on_container_hosts(tmp_path: Path, request: pytest.FixtureRequest,
                                  docker_client) -> None:
    """The same run on the container provider: a container of the release's image with the
    job's command, its exit status read from the engine, removed once it exited."""
    require(shutil.which("mmdebstrap") is not None,
            "mmdebstrap is not installed (apt-get install mmdebstrap)")
    request.getfixturevalue("engine_url")  # a real Podman service for this session
    path = tmp_path / f"jobs{uuid.uuid4().hex[:6]}"  # the project's name, too
    path.mkdir()
    (path / "app.py").write_text((HELLO / "app.py").read_text())
    (path / "VERSION").write_text(f"1-{uuid.uuid4().hex[:8]}\n")
    listen = f"127.0.0.1:{free_port()}"
    code = ("import os, sys; print('job in', os.getcwd(), os.environ['HINOTORI_HOST_ID']); "
            "sys.exit(int(os.environ.get('CODE', '0')))")
    spec = CONTAINER_SPEC.format(name=path.name, listen=listen).replace(
        "replicas = 2", "replicas = 1")
    spec += (f'\n[jobs.ok]\nservice = "web"\ncommand = {json.dumps(["python3", "-c", code])}\n'
             'every = "1h"\n'
             f'\n[jobs.bad]\nservice = "web"\ncommand = '
             f'{json.dumps(["sh", "-c", "echo about to fail; exit 3"])}\nevery = "1h"\n')
    (path / "hinotori.toml").write_text(spec)
    p = CliProject(path)
    try:
        p.cli("up", "-d")
        p.cli("bake", "web", timeout=600)
        p.cli("deploy", "web", timeout=300)
        out = p.json("job", "run", "ok")
        assert out["state"] == "succeeded" and out["exit_code"] == 0  # type: ignore[index]
        assert out["output"] == [f"job in /app {out['host']}"]  # type: ignore[index]
        bad = p.cli("job", "run", "bad", check=False)
        assert bad.returncode == 1 and "failed (exit 3)" in bad.stdout
        assert "about to fail" in bad.stdout
        left = docker_client.containers.list(all=True, filters={
            "label": f"hinotori.project={path.name}"})
        assert [c.labels["hinotori.host"] for c in left] == [p.serving()[0]["id"]]
    finally:
        p.cli("down", check=False, timeout=180)
        for c in docker_client.containers.list(all=True, filters={
                "label": f"hinotori.project={path.name}"}):
            c.remove(force=True, v=True)
        remove_project_tags(docker_client, path.name)
