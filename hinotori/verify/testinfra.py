"""pytest-testinfra interop: run a service's testinfra files inside a host, fold their results
into the Report.

Tests written for pytest-testinfra (``def test_x(host): assert host.file("app.py").exists``) run
with testinfra's ``local://`` backend *inside* the host, through ``Provider.exec``: in the host's
view as working directory and with the host's env, so ``host.file("app.py")`` and
``host.check_output("echo $PORT")`` see what the app sees. The files' contents travel in the
plan on stdin (the host need not share our filesystem); a small wrapper writes them to a
temporary directory under the host's TMPDIR (its scratch dir, never its view, so drift checks
do not see it), runs ``pytest --hosts=local:// --junitxml`` on them, prints one JSON document
(exit status and the JUnit XML) and removes the directory. Each file gets a directory of its own
and pytest's importlib mode, so two files with the same name in different places do not clash;
an empty ``pytest.ini`` there keeps the app's own pytest configuration out.

The host's Python (``python``) needs pytest and pytest-testinfra; without them the run fails
with a ProviderError saying so.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from hinotori.errors import ProviderError
from hinotori.model import Host
from hinotori.providers.base import Provider
from hinotori.verify.results import CheckResult, MatcherResult

# Runs in the host. Constant source (never formatted): its inputs arrive as JSON on stdin.
WRAPPER = r"""
import json, os, shutil, sys, tempfile
plan = json.load(sys.stdin)
out = sys.stdout
try:
    import pytest, testinfra  # noqa: F401
except ImportError as e:
    out.write(json.dumps({"error": str(e)}))
    sys.exit(0)
work = tempfile.mkdtemp(prefix="hinotori-testinfra-")
try:
    paths = []
    for i, (name, text) in enumerate(plan["files"]):
        d = os.path.join(work, "f%d" % i)
        os.mkdir(d)
        paths.append(os.path.join(d, name))
        with open(paths[-1], "w", encoding="utf-8") as f:
            f.write(text)
    ini = os.path.join(work, "pytest.ini")
    with open(ini, "w") as f:
        f.write("[pytest]\n")
    xml = os.path.join(work, "junit.xml")
    sys.stdout = sys.stderr  # pytest's own report must not mix with our JSON
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "--import-mode=importlib", "-c", ini,
                      "--rootdir", work, "--hosts=local://", "--junitxml", xml, *paths])
    sys.stdout = out
    junit = open(xml, encoding="utf-8").read() if os.path.exists(xml) else None
    out.write(json.dumps({"rc": int(rc), "junit": junit}))
finally:
    shutil.rmtree(work, ignore_errors=True)
"""


async def run_testinfra(provider: Provider, host: Host, files: Sequence[Path], *,
                        python: str = "python3", timeout: float = 300.0) -> list[CheckResult]:
    """Run the testinfra ``files`` (paths on this machine) inside ``host``; one CheckResult per
    test case, described as ``testinfra FILE::TEST``."""
    plan = {"files": [(Path(f).name, _read(Path(f))) for f in files]}
    done = await provider.exec(host, [python, "-I", "-c", WRAPPER],
                               stdin=json.dumps(plan).encode(), timeout=timeout)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "error" in doc:
        why = doc["error"] if isinstance(doc, dict) else (done.stderr.strip()[-600:]
                                                          or f"exit {done.rc}")
        raise ProviderError(f"cannot run testinfra files in host {host.id}: {why}",
                            hint=f"the host's {python!r} needs pytest and pytest-testinfra")
    short = [Path(f).name for f in files]
    names = short if len(set(short)) == len(short) else [str(f) for f in files]
    results = parse_junit(doc.get("junit") or "", names)
    if not results:
        results = [CheckResult(f"testinfra {', '.join(names)}", False, (MatcherResult(
            "result", "tests ran", f"pytest exit {doc.get('rc')}, no test cases", False),),
            source="testinfra")]
    return results


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProviderError(f"cannot read testinfra file {path}: {e.strerror or e}",
                            hint="testinfra paths are relative to the spec file") from e


def parse_junit(text: str, names: Sequence[str]) -> list[CheckResult]:
    """Test cases of a pytest JUnit XML report as CheckResults. ``names[i]`` is what file
    ``i`` (shipped as directory ``f{i}``) is called in descriptions."""
    if not text.strip():
        return []
    results = []
    for case in ET.fromstring(text).iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        name = name.removesuffix("[local]")  # testinfra's parameter: always the one host
        head, _, _ = classname.partition(".")
        where = classname
        if head.startswith("f") and head[1:].isdigit() and int(head[1:]) < len(names):
            where = names[int(head[1:])]
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            got = (problem.get("message") or problem.text or "failed").strip()
            matcher = MatcherResult("result", "pass", got.splitlines()[0][:300] if got
                                    else "failed", False)
        elif skipped is not None:
            matcher = MatcherResult("result", "pass", "skipped: " + (skipped.get("message")
                                                                     or ""), True)
        else:
            matcher = MatcherResult("result", "pass", "pass", True)
        results.append(CheckResult(f"testinfra {where}::{name}", matcher.ok, (matcher,),
                                   duration=float(case.get("time") or 0.0),
                                   source="testinfra"))
    return results
