"""Recipe step kinds without a subprocess: the registry, the dict forms, the static path rules
(in code and in the spec, with file:line: key) and what copy, file and remove do to real trees
under tmp_path, including every way a path could reach outside its tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hinotori.bake import (
    STEP_KINDS,
    CopyStep,
    EnvStep,
    FileStep,
    IgnoreRules,
    RemoveStep,
    RunStep,
    step_from_dict,
    step_kind,
)
from hinotori.bake.aptstep import AptStep
from hinotori.bake.context import BuildSource
from hinotori.bake.stepbase import StepContext, parse_mode
from hinotori.bake.sysctlstep import SysctlStep
from hinotori.errors import BakeError, SpecError
from hinotori.spec import parse_spec

# -- registry and dict forms ------------------------------------------------------------------


def test_every_kind_round_trips_through_its_dict_form() -> None:
    steps = [
        RunStep("make", env={"B": "2", "A": "1"}),
        EnvStep({"MODE": "prod"}),
        CopyStep("src", "app/", mode="755"),
        CopyStep(".", "."),
        FileStep("etc/app.conf", "x = 1\n"),
        RemoveStep("tests"),
        AptStep(("curl",)),
        SysctlStep((("net.core.somaxconn", "1024"),), priority=40),
    ]
    assert sorted(STEP_KINDS) == ["apt", "copy", "env", "file", "remove", "run", "sysctl"]
    for step in steps:
        assert step_from_dict(step.to_json()) == step
    assert steps[2].to_json() == {"copy": "src", "to": "app/", "mode": "0755"}
    assert steps[4].to_json() == {"file": "etc/app.conf", "content": "x = 1\n", "mode": "0644"}
    assert [s.describe() for s in steps[1:]] == [
        "env: MODE=prod", "copy: src -> app/", "copy: . -> .",
        "file: etc/app.conf (6 bytes, 0644)", "remove: tests", "apt: curl",
        "sysctl: net.core.somaxconn=1024"]
    assert steps[7].to_json() == {"sysctl": {"net.core.somaxconn": "1024"}, "priority": 40}


def test_the_kind_of_a_dict() -> None:
    assert step_kind({"run": "x", "env": {"A": "1"}}) == "run"
    assert step_kind({"env": {"A": "1"}}) == "env"
    assert step_kind({"copy": "a", "to": "b"}) == "copy"
    assert step_kind({"copy": "a", "run": "b"}) is None
    assert step_kind({"wat": 1}) is None
    assert step_kind({"copy": "a", "wat": 1}) == "copy"  # so the error names the unknown key


@pytest.mark.parametrize("bad", [
    {"copy": "x"},  # `to` is required
    {"copy": "x", "to": "y", "owner": "root"},
    {"file": "x"},  # `content` is required
    {"env": {}},
    {"env": {"1A": "x"}},
    {"env": "A=1"},
    {"remove": ""},
    {"copy": "a", "run": "b"},
    ["run", "x"],
])
def test_malformed_step_dicts_raise_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        step_from_dict(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [
    lambda: CopyStep("../secrets", "app"),
    lambda: CopyStep("/etc/passwd", "app"),
    lambda: CopyStep("src", "/usr/local"),
    lambda: CopyStep("src", "app/../../x"),
    lambda: FileStep("a/../../b", ""),
    lambda: FileStep(".", ""),
    lambda: RemoveStep("./"),
    lambda: RemoveStep("/"),
    lambda: RemoveStep("x/\0y"),
])
def test_paths_are_relative_and_never_climb_out(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        make()


def test_modes() -> None:
    assert parse_mode("644") == parse_mode("0644") == parse_mode("0o644") == "0644"
    assert parse_mode("0755") == "0755"
    for bad in (644, "rw-r--r--", "0999", "4755", "07777"):
        with pytest.raises(ValueError):
            parse_mode(bad)


def test_env_steps_accumulate_for_later_steps() -> None:
    env = EnvStep({"A": "1", "B": "1"}).environment({"PATH": "/bin"})
    assert EnvStep({"B": "2"}).environment(env) == {"PATH": "/bin", "A": "1", "B": "2"}
    assert RunStep("x").environment(env) == env
    assert not EnvStep.changes_tree and RunStep.writes_in_place and CopyStep.reads_context


# -- the same rules in the spec, located --------------------------------------------------------

SPEC = """\
[services.web]
command = ["python3", "app.py"]

[services.web.image]
steps = [
  { copy = "requirements.txt", to = "deps/" },
  { run = "pip install --target deps -r deps/requirements.txt" },
  { env = { APP_MODE = "prod" } },
  { copy = "src", to = "app/", mode = "0644" },
  { file = "etc/app.conf", content = "debug = false\\n" },
  { remove = "app/tests" },
]
"""


def spec_error(old: str, new: str) -> SpecError:
    assert old in SPEC
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.replace(old, new), file="hinotori.toml")
    return info.value


def test_spec_with_every_step_kind_gives_the_recipe() -> None:
    recipe = parse_spec(SPEC).services["web"].image.recipe()
    assert recipe == [
        CopyStep("requirements.txt", "deps/"),
        RunStep("pip install --target deps -r deps/requirements.txt"),
        EnvStep({"APP_MODE": "prod"}),
        CopyStep("src", "app/", mode="0644"),
        FileStep("etc/app.conf", "debug = false\n"),
        RemoveStep("app/tests"),
    ]


@pytest.mark.parametrize("old,new,line,key,says", [
    ('copy = "src"', 'copy = "../src"', 9, "services.web.image.steps.3.copy", "'..'"),
    ('to = "deps/"', 'to = "/deps"', 6, "services.web.image.steps.0.to", "absolute"),
    ('file = "etc/app.conf"', 'file = "etc/../../x"', 10, "services.web.image.steps.4.file",
     "'..'"),
    ('remove = "app/tests"', 'remove = "/"', 11, "services.web.image.steps.5.remove",
     "absolute"),
    ('mode = "0644"', "mode = 644", 9, "services.web.image.steps.3.mode", "octal string"),
    ('to = "app/", ', "", 9, "services.web.image.steps.3.to", "missing"),
    ('content = "debug', 'owner = "root", content = "debug', 10,
     "services.web.image.steps.4.owner", "unknown key"),
    ('{ remove = "app/tests" }', '{ remove = "a", run = "b" }', 11,
     "services.web.image.steps.5", "exactly one of"),
    ("APP_MODE", "APP-MODE", 8, "services.web.image.steps.2.env.APP-MODE", "pattern"),
])
def test_spec_errors_name_file_line_and_key(old: str, new: str, line: int, key: str,
                                            says: str) -> None:
    e = spec_error(old, new)
    assert (e.file, e.line, e.key) == ("hinotori.toml", line, key)
    assert says in str(e)


# -- copy, file and remove on real trees ---------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    c = tmp_path / "ctx"
    (c / "src" / "pkg").mkdir(parents=True)
    (c / "src" / "main.py").write_text("main\n")
    (c / "src" / "pkg" / "mod.py").write_text("mod\n")
    (c / "src" / "run.sh").write_text("#!/bin/sh\n")
    (c / "src" / "run.sh").chmod(0o755)
    (c / "src" / "current").symlink_to("pkg/mod.py")
    (c / "src" / "debug.log").write_text("noise\n")
    (c / "build").mkdir()
    (c / "build" / "out.bin").write_text("built\n")
    (c / "requirements.txt").write_text("flask\n")
    (c / ".hinotoriignore").write_text("*.log\n/build/\n")
    return c


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def run(step, ctx: Path, image: Path, index: int = 3) -> None:  # type: ignore[no-untyped-def]
    logs = image.parent / "logs"
    logs.mkdir(exist_ok=True)
    source = BuildSource(ctx, IgnoreRules.load(ctx))
    step.execute(StepContext(build_dir=image, env={}, log_dir=logs, index=index,
                             source=source))


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_text()
    return out


def test_copy_a_directory_into_a_destination(ctx: Path, image: Path) -> None:
    run(CopyStep("src", "app/"), ctx, image)
    assert tree(image) == {"app": "dir", "app/current": "-> pkg/mod.py", "app/main.py": "main\n",
                           "app/pkg": "dir", "app/pkg/mod.py": "mod\n", "app/run.sh": "#!/bin/sh\n"}
    assert os.stat(image / "app" / "run.sh").st_mode & 0o111  # modes are kept
    # A second copy merges into what is there, replacing files.
    (ctx / "src" / "main.py").write_text("main v2\n")
    run(CopyStep("src/main.py", "app/"), ctx, image)
    assert (image / "app" / "main.py").read_text() == "main v2\n"


def test_where_a_single_file_goes(ctx: Path, image: Path) -> None:
    run(CopyStep("requirements.txt", "deps/"), ctx, image)  # into a directory, by "/"
    run(CopyStep("requirements.txt", "req.txt"), ctx, image)  # to that name
    run(CopyStep("src/main.py", "deps"), ctx, image)  # into a directory that exists
    run(CopyStep("src/main.py", "."), ctx, image)  # into the root
    run(CopyStep("src/current", "link"), ctx, image)  # a link stays a link
    assert tree(image) == {"deps": "dir", "deps/main.py": "main\n",
                           "deps/requirements.txt": "flask\n", "link": "-> pkg/mod.py",
                           "main.py": "main\n", "req.txt": "flask\n"}


def test_copy_everything_honours_the_ignore_file_and_mode(ctx: Path, image: Path) -> None:
    run(CopyStep(".", ".", mode="0600"), ctx, image)
    assert "src/debug.log" not in tree(image) and "build" not in tree(image)
    assert (image / ".hinotoriignore").exists()
    assert stat.S_IMODE(os.stat(image / "src" / "run.sh").st_mode) == 0o600


@pytest.mark.parametrize("src,says", [
    ("src/debug.log", "src/debug.log is excluded from the build context"),
    ("build/out.bin", "build/out.bin is under build, which is excluded"),
    (".git", ".git is excluded"),
    ("nope.txt", "nope.txt does not exist in the build context"),
])
def test_copy_refuses_what_the_context_does_not_offer(ctx: Path, image: Path, src: str,
                                                      says: str) -> None:
    with pytest.raises(BakeError, match=r"step 3 \(copy: .*\): " + says):
        run(CopyStep(src, "x"), ctx, image)


def test_copy_refuses_links_out_of_the_context(ctx: Path, image: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "secret").write_text("secret\n")
    (ctx / "ext").symlink_to(outside)  # a directory link that leaves the context
    (ctx / "leak").symlink_to(outside / "etc" / "secret")
    (ctx / "up").symlink_to("../outside/etc/secret")
    with pytest.raises(BakeError, match=r"step 3 \(copy: ext/etc/secret -> x\): ext/etc "
                                        r"resolves through a symlink .* outside its tree"):
        run(CopyStep("ext/etc/secret", "x"), ctx, image)
    with pytest.raises(BakeError, match=r"build context symlink leak -> .* is absolute"):
        run(CopyStep("leak", "x"), ctx, image)
    with pytest.raises(BakeError, match=r"build context symlink up -> .* points outside"):
        run(CopyStep("up", "x"), ctx, image)
    assert not any(image.iterdir())


def test_steps_never_write_through_links_out_of_the_image(ctx: Path, image: Path,
                                                          tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("untouched\n")
    (image / "out").symlink_to(outside)
    (image / "file-link").symlink_to(outside / "target")
    for step in (CopyStep("src", "out/app"), CopyStep("requirements.txt", "out/"),
                 FileStep("out/x.conf", "x"), RemoveStep("out/target")):
        with pytest.raises(BakeError, match=r"step 3 .*out.* resolves through a symlink"):
            run(step, ctx, image)
    # A file step at a link's own path replaces the link; it never writes through it.
    run(FileStep("file-link", "new\n"), ctx, image)
    assert (image / "file-link").read_text() == "new\n" and not (image / "file-link").is_symlink()
    assert (outside / "target").read_text() == "untouched\n"
    assert sorted(os.listdir(outside)) == ["target"]


def test_in_the_way(ctx: Path, image: Path) -> None:
    (image / "app").write_text("a file where a directory goes\n")
    (image / "conf").mkdir()
    with pytest.raises(BakeError, match=r"step 3 .*app is in the way"):
        run(CopyStep("src", "app"), ctx, image)
    with pytest.raises(BakeError, match=r"step 3 .*conf is a directory in the image"):
        run(FileStep("conf", "x"), ctx, image)


def test_file_and_remove(ctx: Path, image: Path) -> None:
    run(FileStep("etc/app/app.conf", "x = 1\n", mode="0600"), ctx, image)
    assert (image / "etc" / "app" / "app.conf").read_text() == "x = 1\n"
    assert stat.S_IMODE(os.stat(image / "etc" / "app" / "app.conf").st_mode) == 0o600
    run(CopyStep("src", "app"), ctx, image)
    os.chmod(image / "app" / "pkg", 0o555)  # a read-only directory is removed all the same
    run(RemoveStep("app/pkg"), ctx, image)
    run(RemoveStep("app/current"), ctx, image)  # a link goes, not what it points at
    run(RemoveStep("etc/app/app.conf"), ctx, image)
    assert tree(image) == {"app": "dir", "app/main.py": "main\n", "app/run.sh": "#!/bin/sh\n",
                           "etc": "dir", "etc/app": "dir"}
    with pytest.raises(BakeError, match=r"step 3 \(remove: app/pkg\): nothing at app/pkg"):
        run(RemoveStep("app/pkg"), ctx, image)
