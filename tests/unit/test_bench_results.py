"""bench/results.py, bench/report.py and bench/all.py's pure parts: goals, the figures file,
RESULTS.md and which benches a selection runs. No bench is run here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import all as bench_all  # noqa: E402  (bench/all.py)
from report import (  # noqa: E402  (bench/report.py)
    FAILED,
    OK,
    SKIPPED,
    Outcome,
    markdown,
    number,
    read_figures,
    summary,
)
from results import RESULTS_ENV, goal_met, record  # noqa: E402  (bench/results.py)


@pytest.mark.parametrize(("value", "goal", "met"), [
    (0.81, ">= 0.75", True), (0.75, ">= 0.75", True), (0.74, ">= 0.75", False),
    (4.9, "< 5", True), (5.0, "< 5", False), (0, "== 0", True), (1, "== 0", False),
    (1.5, "<= 1.5", True), (2, " >  1 ", True), (-1, "> -2", True),
    (float("nan"), "< 5", False),
])
def test_a_goal_is_a_comparison_and_a_number(value: float, goal: str, met: bool) -> None:
    assert goal_met(value, goal) is met


@pytest.mark.parametrize("goal", ["~1.0", "at least 10", ">= ", "=> 3", ">= 1 ms", ""])
def test_a_malformed_goal_is_refused_with_an_example(goal: str) -> None:
    with pytest.raises(ValueError, match=re.escape("e.g. '>= 0.75'")):
        goal_met(1.0, goal)


def test_record_does_nothing_without_the_variable(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    record("x", "y", 1.0, goal="< 2")
    assert list(tmp_path.iterdir()) == []


def test_record_appends_lines_that_read_figures_reads_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(path))
    record("router", "ratio", 0.81, unit="x", goal=">= 0.75")
    record("router", "p99", 12, unit="ms", detail="50 switches")
    figures, problems = read_figures(path)
    assert problems == []
    assert [(f["figure"], f["value"], f["goal"], f["met"]) for f in figures] == [
        ("ratio", 0.81, ">= 0.75", True), ("p99", 12.0, None, None)]
    assert figures[1]["detail"] == "50 switches"


def test_read_figures_works_met_out_again_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([
        json.dumps({"bench": "b", "figure": "claims met", "value": 9, "goal": "< 5",
                    "met": True}),
        "not json",
        json.dumps({"bench": "b", "figure": "no value"}),
        json.dumps({"bench": "b", "figure": "bad goal", "value": 1, "goal": "~1"}),
        "",
        json.dumps({"bench": "b", "figure": "plain", "value": "2.5"}),
    ]) + "\n")
    figures, problems = read_figures(path)
    assert [(f["figure"], f["met"]) for f in figures] == [("claims met", False), ("plain", None)]
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4"]
    assert read_figures(tmp_path / "missing.jsonl") == ([], [])


def fig(name: str, value: float, goal: str | None = None, unit: str = "") -> dict:
    return {"bench": "b", "figure": name, "value": value, "unit": unit, "goal": goal,
            "met": None if goal is None else goal_met(value, goal), "detail": ""}


OUTCOMES = [
    Outcome("router", "python bench/router.py --runs 1", OK, seconds=42.4, stolen=3.25, figures=[
        fig("builtin/haproxy req/s, 1 worker vs 1 thread", 0.81, ">= 0.75", "x"),
        fig("builtin/haproxy req/s, 2 workers vs 2 threads", 0.62, ">= 0.75", "x"),
        fig("switch p99", 2.31, "< 5", "ms"),
        {**fig("req/s", 12345.6, unit="req/s"), "detail": "wrk -c50 | 2 s"}]),
    Outcome("logs", "python bench/logs.py --runs 1", FAILED, "exit 1", 10.0,
            [fig("lines lost", 3, "== 0")], tail="lines were lost | or duplicated\n",
            leftovers=["123 rsyslogd -n -f x.conf"]),
    Outcome("ship", "python bench/ship.py --runs 1", SKIPPED, "needs root (a lab of machines)"),
    Outcome("scale", "python bench/scale.py --sizes 10", SKIPPED,
            "bench/scale.py is not there"),
]


def test_summary_counts_goals_met_and_how_benches_ended() -> None:
    assert summary(OUTCOMES) == ("**2 of 4 goals met**; 4 benches: 1 ok, 1 failed, "
                                 "2 skipped")
    assert summary([]) == "**0 of 0 goals met**; 0 benches: "
    assert summary(OUTCOMES[:1]).endswith("1 bench: 1 ok")


def test_markdown_has_the_headline_the_misses_the_machine_and_every_bench() -> None:
    text = markdown(OUTCOMES, [("CPU", "Xeon"), ("load average", "before 1 / 2 / 3")],
                    when="2026-12-07 03:00 UTC", command="python bench/all.py --quick",
                    seconds=600)
    lines = text.splitlines()
    assert lines[0] == "# Benchmark results"
    assert "`python bench/all.py --quick` on 2026-12-07 03:00 UTC in 10 min" in text
    assert lines[4] == summary(OUTCOMES)
    # What missed its goal is listed before anything else, with value and goal.
    assert text.index("Goals not met:") < text.index("## Machine")
    assert "- router: builtin/haproxy req/s, 2 workers vs 2 threads: 0.62x (goal >= 0.75)" \
        in lines
    assert "- logs: lines lost: 3 (goal == 0)" in lines
    assert "| CPU | Xeon |" in lines
    assert "| [router](#router) | ok | 2 of 3 | 4 | 42 | 3.2 |" in lines
    assert "| [ship](#ship) | skipped: needs root (a lab of machines) | - | 0 | - | - |" in lines
    assert "`python bench/router.py --runs 1`: ok in 42 s; the hypervisor took 3.2% of the CPU " \
        "time meanwhile" in lines
    # Each figure with its value, goal and verdict.
    assert "| builtin/haproxy req/s, 1 worker vs 1 thread | 0.81x | >= 0.75 | met |  |" in lines
    assert "| switch p99 | 2.31 ms | < 5 | met |  |" in lines
    assert "| req/s | 12,346 req/s |  | no goal | wrk -c50 \\| 2 s |" in lines
    assert "| lines lost | 3 | == 0 | **NOT MET** |  |" in lines
    # A failed bench says why, what it left behind, and the tail of its output.
    logs = text[text.index("## logs"):text.index("## ship")]
    assert "`python bench/logs.py --runs 1`: failed: exit 1 in 10 s" in logs
    assert "- `123 rsyslogd -n -f x.conf`" in logs
    assert "```text\nlines were lost | or duplicated\n```" in logs
    assert "`python bench/scale.py --sizes 10`: skipped: bench/scale.py is not there" in text
    assert "Tail of its output" not in text[text.index("## router"):text.index("## logs")]


def test_markdown_without_misses_says_nothing_about_them() -> None:
    ok = Outcome("x", "python bench/x.py", OK, seconds=1, figures=[fig("f", 1, "< 2")])
    text = markdown([ok], [], when="w", command="c", seconds=5)
    assert "Goals not met" not in text
    assert "**1 of 1 goals met**" in text and "in 5 s" in text


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (3, "3"), (12345.6, "12,346"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"),
    (0.01234, "0.0123"), (float("nan"), "n/a"), (-0.5, "-0.5"),
])
def test_numbers_are_written_for_reading(value: float, text: str) -> None:
    assert number(value) == text


def test_selection_follows_the_table_and_the_options() -> None:
    everything = bench_all.selected([], [])
    assert "soak" not in everything  # long: only when named
    assert {"router", "fleet", "ship", "scale"} <= set(everything)
    assert not set(everything) & bench_all.HELPERS
    assert bench_all.selected(["verify", "router", "soak"], []) == ["router", "verify", "soak"]
    assert "fleet" not in bench_all.selected([], ["fleet", "ship"])
    with pytest.raises(SystemExit, match="no bench called nope"):
        bench_all.selected(["nope"], [])


def test_every_bench_file_has_a_row_and_quick_runs_are_no_bigger() -> None:
    assert set(bench_all.bench_files()) <= set(bench_all.BENCHES)
    for name, bench in bench_all.BENCHES.items():
        assert bench.quick, name
        full, quick = bench_all.command_of(name, False), bench_all.command_of(name, True)
        assert full[1] == quick[1] == str(bench_all.HERE / f"{name}.py")


def test_a_missing_script_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench_all.BENCHES, "not_a_bench", bench_all.Bench(("--runs", "1"),
                                                                          ("--runs", "1")))
    assert bench_all.why_skipped("not_a_bench") == "bench/not_a_bench.py is not there"
    monkeypatch.setitem(bench_all.BENCHES, "router", bench_all.Bench(
        (), (), tools=("no-such-tool-here",)))
    assert bench_all.why_skipped("router") == "needs no-such-tool-here (not installed)"


def test_stolen_cpu_is_the_steal_share_of_every_tick_between_two_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        stat if path == "/proc/stat" else path, *a, **k))
    before = bench_all.cpu_ticks()
    assert before == (35, 1000)  # guest time is inside user already: not counted twice
    stat.write_text("cpu  400 0 150 1200 10 0 5 135 7 0\n")
    assert bench_all.stolen_pct(before, bench_all.cpu_ticks()) == 100 * 100 / 900
    assert bench_all.stolen_pct(before, before) is None  # no tick between: nothing to say
    assert bench_all.stolen_pct(None, before) is None
    stat.write_text("cpu  1 2 3\n")  # a kernel too old to count steal
    assert bench_all.cpu_ticks() is None


FAKE_BENCH = """
import subprocess, sys, time
from results import record
record("fake", "a figure", 3.0, goal="< 5")
subprocess.Popen(["sleep", "300"], start_new_session=True)
# a daemon: its parent exits at once, so only the subreaper can still find it
subprocess.Popen([sys.executable, "-c", "import os, time\\nif os.fork() == 0:\\n"
                  "    time.sleep(300)"], start_new_session=True).wait()
if "--hang" in sys.argv:
    time.sleep(300)
"""

DRIVER = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import all as A
A.HERE, A.SETTLE, A.GRACE = Path(sys.argv[2]), 0.5, 5.0
A.BENCHES = {"fake": A.Bench((), ("--hang",), timeout=1)}
A.become_subreaper()
out = []
for quick in (False, True):
    o = A.run("fake", quick, Path(tempfile.mkdtemp(dir=sys.argv[2])))
    out.append({"status": o.status, "reason": o.reason, "leftovers": o.leftovers,
                "figures": len(o.figures), "still": A.descendants()})
print(json.dumps(out))
"""


def test_all_leaves_nothing_running_after_a_bench_or_its_timeout(tmp_path: Path) -> None:
    """A bench that detaches a process and a daemon, once ending and once hanging past its
    timeout: both times all.py names what was left behind, kills it, and keeps the figures."""
    (tmp_path / "fake.py").write_text(FAKE_BENCH)
    (tmp_path / "results.py").write_text((BENCH / "results.py").read_text())
    done = subprocess.run([sys.executable, "-c", DRIVER, str(BENCH), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ended, hung = json.loads(done.stdout.splitlines()[-1])
    assert (ended["status"], hung["status"]) == ("ok", "timed out")
    assert hung["reason"] == "after 1 s"
    for run in (ended, hung):
        assert run["figures"] == 1 and run["still"] == {}
        assert sorted(" ".join(left.split()[1:3]) for left in run["leftovers"]) == [
            f"{sys.executable} -c", "sleep 300"]
        for left in run["leftovers"]:
            assert not Path(f"/proc/{left.split()[0]}").exists()
