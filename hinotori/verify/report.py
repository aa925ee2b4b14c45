"""Reporters: a Report as a Rich table (for people), JSON, JUnit XML or TAP (for machines).

Each machine format is a pure function Report -> str, so it is tested by parsing what it
returns (JSON with ``json``, JUnit with ``xml.etree``). The JUnit XML is built with ElementTree,
never by pasting strings, so whatever a host answered (quotes, ``<``, control characters) comes
out escaped; characters XML 1.0 cannot carry at all are replaced.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hinotori.verify.results import CheckResult, Report

FORMATS = ("table", "json", "junit", "tap")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


def _x(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def to_junit(report: Report) -> str:
    suites = ET.Element("testsuites", name="hinotori verify", tests=str(report.total),
                        failures=str(report.failed), time=f"{report.duration:.6f}")
    suite = ET.SubElement(suites, "testsuite", name=_x(f"verify {report.host}"),
                          tests=str(report.total), failures=str(report.failed), errors="0",
                          skipped="0", time=f"{report.duration:.6f}")
    for key, value in report.meta.items():
        props = suite.find("properties")
        if props is None:
            props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name=_x(str(key)), value=_x(str(value)))
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=_x(f"{report.host}.{r.source}"),
                             name=_x(r.description), time=f"{r.duration:.6f}")
        if not r.ok:
            failure = ET.SubElement(case, "failure", message=_x(f"expected {r.expected}, "
                                                                f"got {r.got}"))
            failure.text = _x("\n".join(f"{m.matcher}: expected {m.expected}, got {m.got}"
                                        for m in r.matchers if not m.ok) or r.got)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def _yaml_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def to_tap(report: Report) -> str:
    lines = ["TAP version 13", f"1..{report.total}"]
    for n, r in enumerate(report.results, 1):
        # "#" starts a TAP directive and a newline a new line: neither may end a description.
        desc = r.description.replace("#", "\\#").replace("\n", " ")
        lines.append(f"{'ok' if r.ok else 'not ok'} {n} - {desc}")
        if not r.ok:
            lines += ["  ---", f"  expected: {_yaml_text(r.expected)}",
                      f"  got: {_yaml_text(r.got)}", f"  duration_ms: {r.duration * 1000:.1f}",
                      "  ..."]
    lines.append(f"# {report.summary()}")
    return "\n".join(lines) + "\n"


def print_table(report: Report, console: Console) -> None:
    table = Table(title=f"verify {report.host}", title_justify="left", header_style="bold")
    for column in ("", "check", "expected", "got", "time"):
        table.add_column(column, overflow="fold")
    for r in report.results:
        table.add_row("[green]✓[/]" if r.ok else "[red]✗[/]", escape(r.description),
                      escape(r.expected), escape(r.got) if not r.ok else "",
                      f"{r.duration * 1000:.1f}ms")
    console.print(table)
    colour = "green" if report.ok else "red"
    console.print(f"[{colour}]{escape(report.summary())}[/]", highlight=False)


def failure_text(report: Report) -> str:
    """The failed checks, one line each (for error messages and the fleet's verify gate)."""
    return "\n".join(_failure_line(r) for r in report.failures())


def _failure_line(r: CheckResult) -> str:
    return f"  ✗ {r.description}: expected {r.expected}, got {r.got}"


RENDERERS: dict[str, Callable[[Report], str]] = {"json": to_json, "junit": to_junit,
                                                  "tap": to_tap}
