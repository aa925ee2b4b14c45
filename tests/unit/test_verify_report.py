"""Reporters: JSON and JUnit parse, TAP is well formed, failures say expected versus got, and
whatever a host answered is escaped."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

from rich.console import Console

from hinotori.verify.report import failure_text, print_table, to_json, to_junit, to_tap
from hinotori.verify.results import CheckResult, MatcherResult, Report

NASTY = 'a <b> & "c" \x01 ]]> #1'


def report() -> Report:
    ok = CheckResult("file app.py", True, (MatcherResult("mode", "0444", "0444", True),),
                     duration=0.001)
    bad = CheckResult("http GET /healthz", False, (
        MatcherResult("status", "200", "200", True),
        MatcherResult("body", "/ok/", NASTY, False)), duration=0.02, attempts=3)
    broken = CheckResult("port $NOPE/tcp", False, (MatcherResult("listening", "true",
                                                                 "$NOPE is not set", False),),
                         error="$NOPE is not set")
    return Report("web-1", (ok, bad, broken), duration=0.5, meta={"service": "web",
                                                                  "release": "v2"})


def test_totals_and_expected_versus_got() -> None:
    r = report()
    assert (r.total, r.passed, r.failed, r.ok) == (3, 1, 2, False)
    bad = r.results[1]
    assert bad.expected == "body /ok/" and bad.got == f"body {NASTY}"  # failed matchers only
    assert r.results[0].expected == "mode 0444"
    assert r.results[2].got == "$NOPE is not set"
    assert "2 failed" in r.summary()


def test_json_parses() -> None:
    doc = json.loads(to_json(report()))
    assert doc["ok"] is False and doc["failed"] == 2 and doc["service"] == "web"
    assert doc["results"][1]["expected"] == "body /ok/"
    assert doc["results"][1]["attempts"] == 3
    assert doc["results"][1]["matchers"][1] == {"matcher": "body", "expected": "/ok/",
                                                "got": NASTY, "ok": False}


def test_junit_is_valid_xml_with_escaped_host_output() -> None:
    root = ET.fromstring(to_junit(report()).encode())
    assert root.tag == "testsuites" and root.get("failures") == "2"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "3"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"service": "web", "release": "v2"}
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["file app.py", "http GET /healthz",
                                              "port $NOPE/tcp"]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None
    assert 'a <b> & "c" \ufffd ]]> #1' in (failure.get("message") or "")
    assert failure.text == 'body: expected /ok/, got a <b> & "c" \ufffd ]]> #1'


def test_tap() -> None:
    lines = to_tap(report()).splitlines()
    assert lines[:3] == ["TAP version 13", "1..3", "ok 1 - file app.py"]
    assert lines[3] == "not ok 2 - http GET /healthz"
    assert lines[4:6] == ["  ---", '  expected: "body /ok/"']
    assert "not ok 3 - port $NOPE/tcp" in lines
    assert lines[-1].startswith("# 3 checks, 1 passed, 2 failed")
    hashed = Report("h", (CheckResult("issue #4", True),))
    assert "ok 1 - issue \\#4" in to_tap(hashed)


def test_table_and_failure_text() -> None:
    out = io.StringIO()
    print_table(report(), Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "✗" in text and "http GET /healthz" in text and "2 failed" in text
    assert failure_text(report()).splitlines() == [
        f"  ✗ http GET /healthz: expected body /ok/, got body {NASTY}",
        "  ✗ port $NOPE/tcp: expected listening true, got $NOPE is not set"]


def test_a_reports_repr_is_its_summary_not_every_result() -> None:
    # asyncio.run formats its finished task's result when it restores SIGINT: a repr of every
    # result would cost tens of ms per `hinotori verify` of 1,000 checks.
    results = tuple(CheckResult(f"file f{i}", ok=i != 7, matchers=(MatcherResult(
        "mode", "0444", "0444" if i != 7 else "0644", i != 7),)) for i in range(1000))
    text = repr(Report(host="web-1", results=results, duration=0.25))
    assert text == "Report(host='web-1', total=1000, failed=1 ['file f7'], duration=0.250)"
