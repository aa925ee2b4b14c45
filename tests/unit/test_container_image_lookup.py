"""The container provider's image lookup before a boot, through hinotori.engine_storage: Podman's
transient "image not known" (another image removed while it names this one's parent) is asked
again; a missing image is a clear error at once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from hinotori import engine_storage
from hinotori.errors import ProviderError
from hinotori.providers.container import ContainerProvider

RACE = ("failed to convert ImageData to ImageInspect 'sha256:b2f1': locating image with ID "
        "\"3571\": image not known")


class Api:
    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def inspect_image(self, image: str) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"Id": image}


def lookup(api: Api) -> dict[str, Any]:
    provider = ContainerProvider("p", url="unix:///nowhere.sock")
    rel = SimpleNamespace(image="sha256:b2f1", service="web", name="v2")
    return provider._require_image(SimpleNamespace(api=api), rel)  # type: ignore[arg-type]


def race() -> docker.errors.APIError:
    return docker.errors.APIError("500 Server Error", explanation=RACE)


def test_a_parent_removed_meanwhile_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_storage.time, "sleep", lambda s: None)
    api = Api(race(), race())
    assert lookup(api) == {"Id": "sha256:b2f1"}
    assert api.calls == 3


def test_the_race_that_does_not_end_is_the_engine_s_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_storage.time, "sleep", lambda s: None)
    api = Api(*(race() for _ in range(engine_storage.ATTEMPTS)))
    with pytest.raises(docker.errors.APIError):
        lookup(api)
    assert api.calls == engine_storage.ATTEMPTS


def test_other_engine_errors_and_a_missing_image_are_not_retried() -> None:
    api = Api(docker.errors.APIError("500 Server Error", explanation="disk full"))
    with pytest.raises(docker.errors.APIError):
        lookup(api)
    assert api.calls == 1
    api = Api(docker.errors.NotFound("no such image"))
    with pytest.raises(ProviderError, match="hinotori bake web"):
        lookup(api)
    assert api.calls == 1


def test_the_base_lookup_of_a_bake_asks_again_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race a CI run met in ensure_base, before any build: the same mechanism."""
    from hinotori.bake.osimage.base import BaseSpec, find_base

    monkeypatch.setattr(engine_storage.time, "sleep", lambda s: None)
    api = Api(race())
    assert find_base(SimpleNamespace(api=api), BaseSpec()) == BaseSpec().tag  # type: ignore[arg-type]
    assert api.calls == 2
    api = Api(docker.errors.ImageNotFound("no such image"))
    assert find_base(SimpleNamespace(api=api), BaseSpec()) is None  # type: ignore[arg-type]
    assert api.calls == 1


def test_only_the_store_race_is_named_a_race() -> None:
    assert engine_storage.lost_storage_race(RACE)
    assert engine_storage.lost_storage_race("getting top layer info: layer not known")
    assert not engine_storage.lost_storage_race("building at STEP \"RUN x\": exit status 3")
