"""bench/RESULTS.md from what bench/all.py saw: pure functions, no processes (not a test).

all.py runs each bench with $HINOTORI_BENCH_RESULTS pointing at a fresh JSON-lines file (see
results.py), reads the figures back with ``read_figures()`` and hands an ``Outcome`` per bench,
and a few rows about the machine, to ``markdown()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from results import goal_met

OK, FAILED, TIMED_OUT, INTERRUPTED, SKIPPED = "ok", "failed", "timed out", "interrupted", "skipped"


@dataclass
class Outcome:
    """One bench's run as all.py saw it."""

    name: str
    command: str                # as a reader would type it: python bench/x.py --runs 1
    status: str                 # OK, FAILED, TIMED_OUT, INTERRUPTED or SKIPPED
    reason: str = ""            # why it failed or was skipped: "exit 1", "needs root", ...
    seconds: float = 0.0
    figures: list[dict] = field(default_factory=list)
    tail: str = ""              # the end of its output, shown when it did not end well
    leftovers: list[str] = field(default_factory=list)  # processes it left, killed by all.py
    stolen: float | None = None  # % of the machine's CPU time the hypervisor took meanwhile

    def goals(self) -> list[dict]:
        return [f for f in self.figures if f.get("goal")]

    def missed(self) -> list[dict]:
        return [f for f in self.goals() if not f["met"]]


def read_figures(path: Path) -> tuple[list[dict], list[str]]:
    """(figures, problems) from one bench's JSON-lines file; a missing file is no figures.
    ``met`` is worked out again from the goal, so a hand-edited line cannot claim it."""
    figures, problems = [], []
    if not path.exists():
        return figures, problems
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entry["value"] = float(entry["value"])
            entry["figure"] = str(entry["figure"])
            goal = entry.get("goal") or None
            entry["goal"] = goal
            entry["met"] = None if goal is None else goal_met(entry["value"], goal)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"line {number}: {exc}")
            continue
        entry.setdefault("unit", "")
        entry.setdefault("detail", "")
        figures.append(entry)
    return figures, problems


def number(value: float) -> str:
    """A figure as a reader wants it: thousands separated, about three significant digits."""
    if value != value:  # NaN
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def value_text(figure: dict) -> str:
    unit = figure.get("unit") or ""
    joined = "" if not unit else (unit if unit in ("x", "%") else f" {unit}")
    return number(figure["value"]) + joined


def verdict(figure: dict) -> str:
    if not figure.get("goal"):
        return "no goal"
    return "met" if figure["met"] else "**NOT MET**"


def summary(outcomes: list[Outcome]) -> str:
    """The headline: goals met of goals stated, and how the benches ended."""
    goals = [f for o in outcomes for f in o.goals()]
    met = sum(1 for f in goals if f["met"])
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    ended = ", ".join(f"{n} {status}" for status, n in counts.items())
    return (f"**{met} of {len(goals)} goals met**; {len(outcomes)} "
            f"bench{'es' * (len(outcomes) != 1)}: {ended}")


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _bench_section(o: Outcome) -> list[str]:
    how = {OK: "ok", SKIPPED: f"skipped: {o.reason}"}.get(o.status, f"{o.status}: {o.reason}")
    took = f" in {o.seconds:.0f} s" if o.status != SKIPPED else ""
    if o.stolen is not None:
        took += f"; the hypervisor took {o.stolen:.1f}% of the CPU time meanwhile"
    out = [f"## {o.name}", "", f"`{o.command}`: {how}{took}", ""]
    if o.figures:
        out += ["| figure | value | goal | | notes |", "| --- | ---: | --- | --- | --- |"]
        for f in o.figures:
            out.append(f"| {_cell(f['figure'])} | {_cell(value_text(f))} | "
                       f"{_cell(f.get('goal') or '')} | {verdict(f)} | "
                       f"{_cell(f.get('detail') or '')} |")
        out.append("")
    elif o.status == OK:
        out += ["No figures recorded.", ""]
    if o.leftovers:
        out += [f"Left {len(o.leftovers)} process(es) behind, killed by all.py:", ""]
        out += [f"- `{_cell(p)}`" for p in o.leftovers] + [""]
    if o.status != OK and o.tail.strip():
        out += ["Tail of its output:", "", "```text", o.tail.rstrip("\n"), "```", ""]
    return out


def markdown(outcomes: list[Outcome], machine: list[tuple[str, str]], *, when: str,
             command: str, seconds: float) -> str:
    """RESULTS.md: headline, what missed its goal, the machine, a table of benches, then each
    bench's figures (and, for one that did not end well, why and the tail of its output)."""
    out = ["# Benchmark results", "",
           f"Made by `{command}` on {when} in {duration(seconds)}. Regenerate it with "
           "`python bench/all.py` (see [README.md](README.md)).", "",
           summary(outcomes), ""]
    missed = [(o.name, f) for o in outcomes for f in o.missed()]
    if missed:
        out += ["Goals not met:", ""]
        out += [f"- {name}: {_cell(f['figure'])}: {value_text(f)} (goal {f['goal']})"
                for name, f in missed]
        out.append("")
    out += ["## Machine", "", "| | |", "| --- | --- |"]
    out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in machine]
    # Stolen: CPU time the virtual machine was ready to use and its host gave to others
    # (/proc/stat's steal). Figures of a bench that lost much of it are not comparable.
    out += ["", "## Benches", "",
            "| bench | ended | goals met | figures | seconds | CPU stolen % |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for o in outcomes:
        ended = o.status if not o.reason else f"{o.status}: {o.reason}"
        goals = o.goals()
        met = f"{sum(1 for f in goals if f['met'])} of {len(goals)}" if goals else "-"
        took = f"{o.seconds:.0f}" if o.status != SKIPPED else "-"
        stolen = f"{o.stolen:.1f}" if o.stolen is not None else "-"
        out.append(f"| [{o.name}](#{o.name}) | {_cell(ended)} | {met} | "
                   f"{len(o.figures)} | {took} | {stolen} |")
    out.append("")
    for o in outcomes:
        out += _bench_section(o)
    return "\n".join(out).rstrip("\n") + "\n"
