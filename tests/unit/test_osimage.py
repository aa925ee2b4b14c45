"""OS images without an engine: the spec's `os` and `apt`, the Containerfile each step becomes,
the build context tar, base keys, and manifests read from a tar stream."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from hinotori.bake import BuildCache, ImageStore, bake, step_from_dict
from hinotori.bake.context import BuildSource
from hinotori.bake.ignore import IgnoreRules
from hinotori.bake.osimage import BaseSpec, context_tar, translate
from hinotori.bake.osimage.files import entries_of_tar
from hinotori.errors import BakeError, SpecError
from hinotori.spec import parse_spec

SPEC = """\
[services.web]
provider = "{provider}"
command = ["python3", "app.py"]

[services.web.image]
{image}
"""


def spec_error(image: str, provider: str = "container") -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.format(image=image, provider=provider), file="hinotori.toml")
    return info.value


def steps(*dicts: dict) -> list:
    return [step_from_dict(d) for d in dicts]


def source_of(root: Path) -> BuildSource:
    return BuildSource(root, IgnoreRules.load(root, ".hinotoriignore"))


# -- spec ---------------------------------------------------------------------------------------


def test_os_defaults_and_apt_steps_load() -> None:
    spec = parse_spec(SPEC.format(image='os = {}\nsteps = [{ apt = ["curl", "jq=1.6-2.1"] }]',
                                  provider="container"))
    image = spec.services["web"].image
    assert image.os is not None
    assert (image.os.suite, image.os.variant, image.os.workdir) == ("bookworm", "minbase", "/app")
    assert image.os.mirror == "http://deb.debian.org/debian"
    assert [s.to_json() for s in image.recipe()] == [{"apt": ["curl", "jq=1.6-2.1"]}]


def test_apt_step_without_os_is_an_error_at_the_image_line() -> None:
    e = spec_error('steps = [{ apt = ["curl"] }]', provider="process")
    assert e.line == 5 and e.key == "services.web.image"
    assert "need an OS image" in str(e) and "os = {" in str(e)


def test_bad_package_name_is_an_error_at_its_key() -> None:
    e = spec_error('os = {}\nsteps = [{ apt = ["Not A Package"] }]')
    assert e.key == "services.web.image.steps.0.apt.0" and e.line == 7
    e = spec_error('os = { packages = ["ok", "bad name"] }')
    assert e.key == "services.web.image.os.packages.1"


def test_os_refuses_variants_without_apt_and_unknown_keys() -> None:
    assert spec_error('os = { variant = "essential" }').key == "services.web.image.os.variant"
    assert spec_error('os = { suit = "bookworm" }').key == "services.web.image.os.suit"
    assert spec_error('os = { workdir = "app" }').key == "services.web.image.os.workdir"


def test_os_image_needs_the_container_provider() -> None:
    e = spec_error("os = {}", provider="process")
    assert e.key == "services.web" and 'provider = "container"' in str(e)


def test_empty_apt_step_is_refused() -> None:
    assert "apt" in str(spec_error('os = {}\nsteps = [{ apt = [] }]'))


def test_apt_step_in_a_file_tree_bake_fails_with_advice(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    with pytest.raises(BakeError) as info:
        bake(tmp_path / "ctx", steps({"apt": ["curl"]}), ImageStore(tmp_path / "images"))
    assert "need an OS image" in str(info.value)


# -- base keys ----------------------------------------------------------------------------------


def test_base_always_has_python3_and_its_key_follows_every_input(monkeypatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    base = BaseSpec(packages=("curl",), arch="amd64")
    assert base.all_packages == ("curl", "python3")
    assert BaseSpec(packages=("python3", "curl"), arch="amd64").key() == base.key()
    others = [BaseSpec(packages=("curl",), arch="arm64"),
              BaseSpec(packages=("curl",), arch="amd64", suite="trixie"),
              BaseSpec(packages=("curl",), arch="amd64", variant="apt"),
              BaseSpec(packages=("curl",), arch="amd64", mirror="http://example.invalid/d"),
              BaseSpec(arch="amd64")]
    keys = {base.key(), *(b.key() for b in others)}
    assert len(keys) == len(others) + 1
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert base.key() not in keys
    assert base.tag == f"localhost/hinotori-base:{base.key()[:24]}"


# -- the Containerfile ---------------------------------------------------------------------------


def test_each_step_becomes_one_instruction(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a")
    (tmp_path / "app.py").write_text("x")
    recipe = steps(
        {"apt": ["curl", "netcat-openbsd"]},
        {"run": "useradd web"},
        {"run": ["python3", "-c", "print(1)"], "env": {"X": "1"}},
        {"env": {"GREETING": 'say "hi" for $5 \\o/'}},
        {"copy": "src", "to": "lib", "mode": "0644"},
        {"copy": "app.py", "to": "."},
        {"copy": "app.py", "to": "bin/app"},
        {"file": "etc/app.conf", "content": "port=1\n", "mode": "0600"},
        {"remove": "lib/a.py"},
    )
    t = translate(recipe, base="localhost/hinotori-base:abc", workdir="/srv/app",
                  source=source_of(tmp_path), epoch=42)
    lines = t.text.splitlines()
    assert lines[0] == "FROM localhost/hinotori-base:abc"
    assert lines[1] == ("ARG SOURCE_DATE_EPOCH=42 LANG=C.UTF-8 TZ=UTC PYTHONDONTWRITEBYTECODE=1 "
                        "PYTHONHASHSEED=0")
    prelude = lines.index("WORKDIR /srv/app") + 1
    body = lines[prelude:]
    assert body == [
        'RUN ["/bin/sh", "-c", "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get '
        'install -y --no-install-recommends curl netcat-openbsd && rm -rf /var/lib/apt/lists/*"]',
        'RUN ["/bin/sh", "-c", "useradd web"]',
        'RUN ["/usr/bin/env", "X=1", "python3", "-c", "print(1)"]',
        'ENV GREETING="say \\"hi\\" for \\$5 \\\\o/"',
        'COPY ["c5/", "/srv/app/lib/"]',
        'COPY ["c6/app.py", "/srv/app/"]',
        'COPY ["c7/app.py", "/srv/app/bin/app"]',
        'COPY ["f8", "/srv/app/etc/app.conf"]',
        'RUN ["rm", "-r", "--", "/srv/app/lib/a.py"]',
    ]
    # Instruction numbers as the engine counts them (FROM = 1) map back to recipe steps.
    assert t.owners[1] == 0 and t.owners[prelude] == 0
    assert [t.owners[prelude + k] for k in range(1, len(recipe) + 1)] == list(
        range(1, len(recipe) + 1))
    assert t.generated == {"f8": (b"port=1\n", 0o600)}


def test_env_value_over_lines_is_refused() -> None:
    with pytest.raises(BakeError, match="spans lines"):
        translate(steps({"env": {"A": "1\n2"}}), base="b")


def test_copy_of_a_missing_source_names_the_step(tmp_path: Path) -> None:
    with pytest.raises(BakeError, match="step 1"):
        translate(steps({"copy": "nope", "to": "x"}), base="b", source=source_of(tmp_path))


# -- the build context --------------------------------------------------------------------------


def test_context_tar_holds_what_copy_steps_read_minus_ignored(tmp_path: Path) -> None:
    (tmp_path / ".hinotoriignore").write_text("*.log\nsecret/\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "app" / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "app" / "run.sh").chmod(0o755)
    (tmp_path / "app" / "debug.log").write_text("noise")
    (tmp_path / "app" / "link").symlink_to("main.py")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    recipe = steps({"copy": ".", "to": "."}, {"file": "VERSION", "content": "3\n"},
                   {"copy": "app/main.py", "to": "main.py"})
    src = source_of(tmp_path)
    t = translate(recipe, base="b", source=src, epoch=7)
    with context_tar(t, src, epoch=7) as f:
        data = f.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("Containerfile").read().decode() == t.text  # type: ignore[union-attr]
        assert tar.extractfile("f2").read() == b"3\n"  # type: ignore[union-attr]
    assert {"c1/app/main.py", "c1/app/run.sh", "c1/app/link", "c3/main.py"} <= set(members)
    assert not any("debug.log" in n or "secret" in n for n in members)
    assert members["c1/app/run.sh"].mode & 0o111
    assert members["c1/app/link"].issym() and members["c1/app/link"].linkname == "main.py"
    assert {(m.mtime, m.uid, m.gid) for m in members.values()} == {(7, 0, 0)}
    # Same inputs, same bytes: the engine's content-based layer cache sees the same context.
    with context_tar(t, src, epoch=7) as f:
        assert f.read() == data


def test_copy_of_an_ignored_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".hinotoriignore").write_text("secret/\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    with pytest.raises(BakeError, match=r"hinotoriignore|excluded|ignored"):
        translate(steps({"copy": "secret/key", "to": "k"}), base="b", source=source_of(tmp_path))


# -- manifests of engine images ------------------------------------------------------------------


def test_manifest_from_a_tar_stream(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, extra in [("./", tarfile.DIRTYPE, None), ("./etc", tarfile.DIRTYPE, None),
                                  ("./etc/.hidden", tarfile.REGTYPE, b"h"),
                                  ("./etc/os", tarfile.REGTYPE, b"debian\n"),
                                  ("./etc/os2", tarfile.LNKTYPE, "etc/os"),
                                  ("./bin", tarfile.SYMTYPE, "usr/bin"),
                                  ("./dev/null", tarfile.CHRTYPE, None)]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o644
            content = None
            if isinstance(extra, bytes):
                info.size, content = len(extra), io.BytesIO(extra)
            elif isinstance(extra, str):
                info.linkname = extra
            tar.addfile(info, content)
    data = buf.getvalue()
    entries = entries_of_tar(data[i:i + 100] for i in range(0, len(data), 100))
    got = {e.path: e for e in entries}
    assert list(got) == sorted(got, key=str.encode)
    assert set(got) == {"bin", "etc", "etc/.hidden", "etc/os", "etc/os2"}
    assert got["etc/os"].size == 7 and got["etc/os2"].sha256 == got["etc/os"].sha256
    assert got["bin"].type == "symlink" and got["bin"].target == "usr/bin"
    assert got["etc"].type == "dir" and got["etc/os"].mode == "0644"


def test_os_record_is_listed_without_a_manifest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    digest = "sha256:" + "ab" * 32
    assert store.record(digest, {"kind": "os", "created_at": 1.0, "labels": {"service": "w"}},
                        engine={"id": digest, "tag": "localhost/hinotori/p-w:abababababab"})
    image = store.get("abababab")
    assert image.kind == "os" and not image.has_manifest and store.list() == [image]
    with pytest.raises(Exception, match="has not been read yet"):
        image.manifest()
    store.add_manifest(digest, [])
    assert store.get(digest).manifest() == []
    assert json.loads((image.path / "engine.json").read_text())["id"] == digest
    # The build cache's gc sees no cache keys to keep for it, and nothing breaks.
    assert BuildCache.beside(store.root).root.name


def test_copy_step_mode_is_on_each_file_in_the_context_not_a_chmod(tmp_path: Path) -> None:
    (tmp_path / "conf" / "sub").mkdir(parents=True)
    (tmp_path / "conf" / "sub" / "b.txt").write_text("b")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    recipe = steps({"copy": "conf", "to": "conf", "mode": "0640"}, {"copy": "run.sh", "to": "."},
                   {"file": "k.conf", "content": "k", "mode": "0600"})
    src = source_of(tmp_path)
    t = translate(recipe, base="b", source=src)
    assert "--chmod" not in t.text  # Docker's classic builder refuses it
    with context_tar(t, src) as f, tarfile.open(fileobj=f) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes["c1/sub/b.txt"] == 0o640 and modes["c1/sub"] == 0o755  # files only
    assert modes["c2/run.sh"] == 0o755 and modes["f3"] == 0o600


# -- the engine's build stream -------------------------------------------------------------------

PODMAN_BUILD = [
    {"stream": "STEP 1/3: FROM localhost/hinotori-base:abc\n"},
    {"stream": "STEP 2/3: RUN [\"true\"]\n"},
    {"stream": "--> Using cache 8f05\n"}, {"stream": "--> 8f0566aeca9\n"},
    {"stream": "STEP 3/3: COPY [\"f3\", \"/app/x\"]\n"}, {"stream": "COMMIT\n"},
    {"stream": "--> d62d3cdd0ef\n"}, {"aux": {"ID": "sha256:" + "d6" * 32}},
    {"stream": "Successfully built d62d3cdd0ef0\n"},
]
DOCKER_BUILD = [  # the classic builder: "Step" lines end apart from their newline
    {"stream": "Step 1/3 : FROM localhost/hinotori-base:abc"}, {"stream": "\n"},
    {"stream": " ---> b63856b40038\n"},
    {"stream": "Step 2/3 : RUN [\"true\"]"}, {"stream": "\n"},
    {"stream": " ---> Using cache\n"}, {"stream": " ---> 59d0b9fe07d1\n"},
    {"stream": "Step 3/3 : COPY [\"f3\", \"/app/x\"]"}, {"stream": "\n"},
    {"stream": " ---> 1a2b3c4d5e6f\n"}, {"aux": {"ID": "sha256:" + "1a" * 32}},
    {"stream": "Successfully built 1a2b3c4d5e6f\n"},
]


class FakeEngine:
    """Just what engine_build.build touches: the API's POST, and an inspect of the image only
    when no aux message named it in full."""

    def __init__(self, messages: list[dict]) -> None:
        self.messages, self.params, self.inspected = messages, {}, []
        self.api = self
        self.base_url, self.api_version = "http+docker://localhost", "1.41"

    def post(self, url: str, *, params: dict, **_kw: object) -> object:
        self.params = params
        lines = [json.dumps(m) for m in self.messages]
        return type("Response", (), {"status_code": 200,
                                     "iter_lines": lambda _s, decode_unicode: iter(lines)})()

    def inspect_image(self, ref: str) -> dict:
        self.inspected.append(ref)
        return {"Id": "sha256:" + ref[:2] * 32}


@pytest.mark.parametrize("messages, image", [(PODMAN_BUILD, "sha256:" + "d6" * 32),
                                             (DOCKER_BUILD, "sha256:" + "1a" * 32)],
                         ids=["podman", "docker"])
def test_build_stream_of_either_engine(messages: list[dict], image: str) -> None:
    from hinotori.bake.osimage.engine_build import build

    engine = FakeEngine(messages)
    outcome = build(engine, io.BytesIO(b""), timestamp=7)  # type: ignore[arg-type]
    assert outcome.image_id == image  # the aux message's full id
    assert engine.inspected == []  # ... taken as it is, not asked for again
    assert (outcome.cached, outcome.ran) == ({2}, {3})
    assert engine.params["networkmode"] == "host" and engine.params["timestamp"] == "7"

    # No aux message: the short id of "Successfully built" is looked up.
    engine = FakeEngine([m for m in messages if "aux" not in m])
    outcome = build(engine, io.BytesIO(b""), timestamp=7)  # type: ignore[arg-type]
    assert len(engine.inspected) == 1 and outcome.image_id == image


@pytest.mark.parametrize("messages, short", [(PODMAN_BUILD, "d62d3cdd0ef"),
                                             (DOCKER_BUILD, "1a2b3c4d5e6f")],
                         ids=["podman", "docker"])
def test_last_instruction_s_image_is_announced_before_the_stream_ends(messages: list[dict],
                                                                      short: str) -> None:
    from hinotori.bake.osimage.engine_build import build

    engine = FakeEngine(messages)
    read: list[int] = []
    post = engine.post

    def counting_post(url: str, **kw: object) -> object:
        response = post(url, **kw)  # type: ignore[arg-type]
        lines = list(response.iter_lines(decode_unicode=True))  # type: ignore[attr-defined]

        def iter_lines(_s: object, decode_unicode: bool) -> object:
            for n, line in enumerate(lines, start=1):
                read.append(n)
                yield line
        return type("Response", (), {"status_code": 200, "iter_lines": iter_lines})()

    engine.post = counting_post  # type: ignore[method-assign]
    announced: list[tuple[str, int]] = []
    outcome = build(engine, io.BytesIO(b""), timestamp=7,  # type: ignore[arg-type]
                    on_image=lambda s: announced.append((s, read[-1])))
    assert [s for s, _n in announced] == [short]  # once, the last instruction's image only
    assert announced[0][1] < len(messages)  # before the stream ended
    assert outcome.image_id == messages[-2]["aux"]["ID"]  # the outcome's id: the aux one


def test_a_build_that_fails_at_its_last_step_announces_no_image() -> None:
    from hinotori.bake.osimage.engine_build import build

    messages = [*PODMAN_BUILD[:5], {"stream": "--> Using cache 8f05\n"},
                {"error": "building at STEP \"COPY\": no such file"}]
    announced: list[str] = []
    with pytest.raises(BakeError, match="no such file"):
        build(FakeEngine(messages), io.BytesIO(b""), timestamp=7,  # type: ignore[arg-type]
              on_image=announced.append)
    assert announced == []


@pytest.mark.parametrize("messages, error", [
    ([{"stream": "STEP 2/2: RUN boom\n"}, {"stream": "boom-1\n"},
      {"error": "building at STEP \"RUN boom\": exit status 3"}], "exit status 3"),
    ([{"stream": "Step 2/2 : RUN boom"}, {"stream": "\n"}, {"stream": "\x1b[91mboom-1\n\x1b[0m"},
      {"errorDetail": {"code": 3, "message": "The command '/bin/sh -c boom' returned a "
                       "non-zero code: 3"}}], "exit status 3"),
], ids=["podman", "docker"])
def test_failed_build_of_either_engine_says_the_exit_status(messages: list[dict],
                                                            error: str) -> None:
    from hinotori.bake.osimage.engine_build import build

    with pytest.raises(BakeError) as info:
        build(FakeEngine(messages), io.BytesIO(b""), timestamp=None,  # type: ignore[arg-type]
              describe=lambda n: f"step {n}/2")
    assert error in info.value.message and "step 2/2" in info.value.message
    assert "  | boom-1" in info.value.message  # the step's output, colour escapes removed


class RacingEngine(FakeEngine):
    """Fails its first builds as Podman does when an image goes while buildah's cache check
    looks at every image."""

    def __init__(self, messages: list[dict], races: int, error: str) -> None:
        super().__init__(messages)
        self.races, self.error, self.posts = races, error, 0

    def post(self, url: str, *, params: dict, **kw: object) -> object:
        self.posts += 1
        data = kw["data"]
        assert data.read() == b"context"  # type: ignore[attr-defined]  # rewound each time
        if self.posts <= self.races:
            lines = [json.dumps({"stream": "STEP 1/1: COPY app.py app.py\n"}),
                     json.dumps({"error": self.error})]
            return type("Response", (), {"status_code": 200,
                                         "iter_lines": lambda _s, decode_unicode: iter(lines)})()
        return super().post(url, params=params, **kw)


RACE = ("checking if cached image exists from a previous build: getting top layer info: "
        "layer not known")


# Seen in CI: another test's `rmi -f` of the image a step stood on took the build container.
GONE = ("deleting build container \"c2f1\": identifier is not a container")


@pytest.mark.parametrize("race", [RACE, GONE], ids=["store", "build-container"])
def test_a_build_that_lost_the_storage_race_is_asked_again(race: str) -> None:
    from hinotori.bake.osimage.engine_build import BUILD_ATTEMPTS, build

    engine = RacingEngine(PODMAN_BUILD, BUILD_ATTEMPTS - 1, race)
    outcome = build(engine, io.BytesIO(b"context"), timestamp=7)  # type: ignore[arg-type]
    assert outcome.image_id == "sha256:" + "d6" * 32 and engine.posts == BUILD_ATTEMPTS

    engine = RacingEngine(PODMAN_BUILD, BUILD_ATTEMPTS, race)
    with pytest.raises(BakeError, match=race.split(": ")[-1]):
        build(engine, io.BytesIO(b"context"), timestamp=7)  # type: ignore[arg-type]
    assert engine.posts == BUILD_ATTEMPTS


def test_a_failing_step_is_not_built_again() -> None:
    from hinotori.bake.osimage.engine_build import build

    engine = RacingEngine(PODMAN_BUILD, 1, "building at STEP \"RUN x\": exit status 3")
    with pytest.raises(BakeError, match="exit status 3"):
        build(engine, io.BytesIO(b"context"), timestamp=7)  # type: ignore[arg-type]
    assert engine.posts == 1
