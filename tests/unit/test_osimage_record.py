"""bake_os() after the engine's build, against a fake engine: what it asks the engine for and
what the image's record says (tag, layers, size, the base it was built on)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker.errors
import pytest

from hinotori.bake import ImageStore, step_from_dict
from hinotori.bake.osimage import BaseSpec, OsRecipe, bake_os
from hinotori.bake.osimage.base import in_history

BASE = BaseSpec()


class Engine:
    """The Engine API calls bake_os makes: a build that yields ``next_image`` (built on
    ``built_on``), inspect (the base's tag names ``base_id``), tag and history."""

    def __init__(self, base_id: str) -> None:
        self.api = self
        # Unique per engine: bake_os remembers bases per engine URL for the process.
        self.base_url, self.api_version = f"http+docker://fake-{uuid.uuid4().hex}", "1.41"
        self.base_id = self.built_on = base_id
        self.next_image = ""
        self.calls: list[tuple[str, str]] = []
        self.tags: dict[str, list[str]] = {}
        # announce: the build's stream names the committed image by a short id before it
        # ends, as buildah's "--> <11 hex>" does; short_ids: what the engine takes it for.
        self.announce = False
        self.short_ids: dict[str, str] = {}

    def post(self, url: str, *, data: object, **_kw: object) -> object:
        data.read()  # type: ignore[attr-defined]
        short = self.next_image.removeprefix("sha256:")[:11]
        lines = [json.dumps(m) for m in (
            {"stream": f"STEP 1/4: FROM {BASE.tag}\n"}, {"stream": "STEP 4/4: COPY x\n"},
            {"stream": "COMMIT\n"}, *([{"stream": f"--> {short}\n"}] if self.announce else []),
            {"aux": {"ID": self.next_image}})]
        return type("Response", (), {"status_code": 200,
                                     "iter_lines": lambda _s, decode_unicode: iter(lines)})()

    def resolve(self, ref: str) -> str:
        if ref.startswith("sha256:"):
            return ref
        if ref not in self.short_ids:
            raise docker.errors.ImageNotFound(f"no image {ref}")
        return self.short_ids[ref]

    def inspect_image(self, ref: str) -> dict:
        self.calls.append(("inspect", ref))
        if ref == BASE.tag:
            if not self.base_id:
                raise docker.errors.ImageNotFound("no such image")
            return {"Id": self.base_id}
        full = self.resolve(ref)
        return {"Id": full, "Size": 4242 + int(full[-2:], 16), "RepoTags": self.tags.get(full, [])}

    def tag(self, image: str, repository: str, tag: str | None = None) -> bool:
        self.calls.append(("tag", image))
        self.tags.setdefault(image, []).append(f"{repository}:{tag}")
        return True

    def history(self, image: str) -> list[dict]:
        self.calls.append(("history", image))
        image = self.resolve(image)
        return [{"Id": image.removeprefix("sha256:"), "CreatedBy": "COPY x",
                 "Size": int(image[-2:], 16)},
                {"Id": self.built_on.removeprefix("sha256:"), "CreatedBy": "ADD", "Size": 99}]


def bake(engine: Engine, tmp_path: Path, image: str, *,
         images: str = "images") -> tuple[dict, list[tuple[str, str]]]:
    """Bake an image the engine names ``image``: (its image.json, the engine calls made)."""
    (tmp_path / "x").write_text(image)
    engine.next_image, engine.calls = image, []
    store = ImageStore(tmp_path / images)
    result = bake_os(engine, tmp_path, [step_from_dict({"copy": "x", "to": "x"})],  # type: ignore[arg-type]
                     OsRecipe(BASE), store, project="p", service="web")
    assert result.image.digest == image
    return json.loads((result.image.path / "image.json").read_text()), engine.calls


def image_id(n: int) -> str:
    return "sha256:" + f"{n:02x}" * 32


def test_new_image_is_tagged_and_recorded_with_the_base_it_was_built_on(tmp_path: Path) -> None:
    engine = Engine(base_id=image_id(1))
    info, calls = bake(engine, tmp_path, image_id(10))
    # Nothing known of the base yet: the engine is asked what its tag names.
    assert ("inspect", BASE.tag) in calls
    assert info["base"]["id"] == image_id(1) and info["total_size"] == 4242 + 10
    assert info["layers"] == [{"id": "0a" * 32, "created_by": "COPY x", "size": 10},
                              {"id": "01" * 32, "created_by": "ADD", "size": 99}]
    assert engine.tags[image_id(10)] == [f"localhost/hinotori/p-web:{'0a' * 6}"]

    # The next bake on the same base: the remembered id is in the new image's history, so the
    # base is not asked for; the image is tagged, inspected (its size) and its history read.
    info, calls = bake(engine, tmp_path, image_id(11))
    assert info["base"]["id"] == image_id(1)
    assert sorted(calls) == [("history", image_id(11)), ("inspect", image_id(11)),
                             ("tag", image_id(11))]

    # The base made again under the same tag (a new id), and the build used it: the remembered
    # id is not in the history, so the engine is asked, and the record names the new base.
    engine.base_id = engine.built_on = image_id(2)
    info, calls = bake(engine, tmp_path, image_id(12))
    assert ("inspect", BASE.tag) in calls and info["base"]["id"] == image_id(2)

    # The base removed since the build used it: recorded as "" (as before).
    engine.base_id, engine.built_on = "", image_id(3)
    info, _calls = bake(engine, tmp_path, image_id(13))
    assert info["base"]["id"] == ""


def test_rebake_of_a_stored_image_only_tags_it_when_its_tag_is_gone(tmp_path: Path) -> None:
    engine = Engine(base_id=image_id(1))
    bake(engine, tmp_path, image_id(20))
    _info, calls = bake(engine, tmp_path, image_id(20))
    assert calls == [("inspect", image_id(20))]  # tagged already: no history, no tag
    engine.tags.clear()  # someone removed the tag
    _info, calls = bake(engine, tmp_path, image_id(20))
    assert calls == [("inspect", image_id(20)), ("tag", image_id(20))]


PROVENANCE_OF_THE_RUN = ("created_at", "build_seconds", "context")  # differ bake to bake


def test_image_announced_before_the_build_ends_is_asked_about_then(tmp_path: Path) -> None:
    """The engine's stream names the committed image ("--> <11 hex>") while the engine still
    cleans up: its inspect and history are asked for by that id then, and the record is
    the one a bake asking after the build writes."""
    engine = Engine(base_id=image_id(1))
    bake(engine, tmp_path, image_id(9))  # the base remembered: not asked again below
    later, _calls = bake(engine, tmp_path, image_id(30))
    short = image_id(31).removeprefix("sha256:")[:11]
    engine.announce, engine.short_ids = True, {short: image_id(31)}
    (tmp_path / "other").mkdir()
    early, calls = bake(engine, tmp_path / "other", image_id(31), images="../images")
    assert sorted(calls) == [("history", short), ("inspect", short), ("tag", image_id(31))]
    assert early["total_size"] == 4242 + 31 and early["layers"][0]["size"] == 31
    assert early["base"]["id"] == image_id(1)

    # The same image baked by a bake that asks after the build (another store): the same record.
    engine.announce = False
    (tmp_path / "again").mkdir()
    same, _calls = bake(engine, tmp_path / "again", image_id(31), images="../images-2")
    for key in PROVENANCE_OF_THE_RUN:
        early.pop(key), same.pop(key), later.pop(key)
    assert early == same and later != same


def test_an_early_answer_about_another_image_is_asked_again(tmp_path: Path) -> None:
    engine = Engine(base_id=image_id(1))
    engine.announce = True
    # The short id names another image on the engine (or none): what it answered is not
    # taken; the image the build made is asked for by its full id.
    short = image_id(40).removeprefix("sha256:")[:11]
    engine.short_ids = {short: image_id(41)}
    info, calls = bake(engine, tmp_path, image_id(40))
    assert ("inspect", image_id(40)) in calls and ("history", image_id(40)) in calls
    assert info["total_size"] == 4242 + 40 and info["layers"][0]["size"] == 40
    assert engine.tags[image_id(40)] == [f"localhost/hinotori/p-web:{'28' * 6}"]
    assert image_id(41) not in engine.tags

    engine.short_ids = {}  # the engine knows no such short id: asked again too
    info, calls = bake(engine, tmp_path, image_id(42))
    assert ("inspect", image_id(42)) in calls and ("history", image_id(42)) in calls
    assert info["total_size"] == 4242 + 42


def test_stored_image_announced_early_has_only_its_tags_checked(tmp_path: Path) -> None:
    engine = Engine(base_id=image_id(1))
    bake(engine, tmp_path, image_id(50))
    short = image_id(50).removeprefix("sha256:")[:11]
    engine.announce, engine.short_ids = True, {short: image_id(50)}
    _info, calls = bake(engine, tmp_path, image_id(50))
    assert calls == [("inspect", short)]  # tagged already: no history, no tag


@pytest.mark.parametrize("history, found", [
    ([{"Id": "ab" * 32}, {"Id": "<missing>"}], True),  # Podman: bare hex
    ([{"Id": "sha256:" + "ab" * 32}], True),  # Docker
    ([{"Id": "<missing>"}, {"Id": "cd" * 32}], False),
    ([], False),
])
def test_in_history_matches_either_engines_ids(history: list[dict], found: bool) -> None:
    assert in_history("sha256:" + "ab" * 32, history) is found
    assert in_history(None, history) is False
