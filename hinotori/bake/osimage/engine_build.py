"""Building a Containerfile through the engine's build API, with its layer cache.

``POST /build`` (the Docker Engine API: Podman serves it through buildah, Docker through its
classic builder) with the context tar as the body, ``layers=1`` so every instruction is
committed as a cached layer (Docker always does), ``networkmode=host`` and
``timestamp=<SOURCE_DATE_EPOCH>``. The docker SDK's ``build()`` has neither of the last two,
hence the plain POST on the SDK's own HTTP session.

- ``networkmode=host``: run steps (apt's downloads) use the machine's network, as a file-tree
  bake's steps do, so a build needs no NAT from the engine's bridge (a Docker engine started
  with ``--iptables=false`` has none).
- ``timestamp``: Podman's compat build handler honours it (buildah's
  ``BuildOptions.Timestamp``): every layer's file times and the image's "created" time are that
  instant, so a rebuild of unchanged inputs on an engine without the cache gives the same layer
  digests as long as the steps themselves write the same bytes. Docker's classic builder
  ignores it: there a rebuild without the cache is a new image id, and only the layer cache
  gives the same id back.

The response is a stream of JSON objects; ``stream`` texts are the builder's progress, which
the two engines word differently::

    Podman (buildah)                     Docker (classic builder)
    STEP 5/9: COPY ["c5/", "/app/"]      Step 5/9 : COPY ["c5/", "/app/"]
    --> Using cache 3f1c…                 ---> Using cache   (the layer came from the cache)
    --> 9b2e…                             ---> 9b2e…         (the instruction's layer)
    Successfully built 9b2e…             Successfully built 9b2e…

and ``aux`` carries the image's full id on both: it is the outcome's id as it stands, without
asking the engine about the image again (an inspect is ~8 ms of Podman's CPU with a few hundred
images stored; "Successfully built <12 hex>" is looked up only when no ``aux`` came). ``error``
ends a failed build; the step's own
output came before it as ``stream`` lines (Docker wraps a step's stderr in colour escapes,
removed here) and is what the BakeError shows. A failed build tags nothing: hinotori tags only
the image of a build that succeeded, after the fact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from hinotori.bake.osimage.containerfile import CONTAINERFILE
from hinotori.engine_storage import inspect_image, lost_storage_race
from hinotori.errors import BakeError

if TYPE_CHECKING:
    import docker
    import requests

Progress = Callable[[str], None]
TAIL_LINES = 20
_STEP = re.compile(r"^(?:STEP|Step) (\d+)(?:/(\d+))? ?: (.*)$")  # buildah's, Docker's
_CACHED = re.compile(r"^\s*-+> Using cache")  # buildah "--> Using cache <id>"; Docker " ---> …"
_BUILT = re.compile(r"^Successfully built ([0-9a-f]+)")
# An instruction's image: buildah "--> 9b2e1c0d4a7" (11 hex), Docker " ---> 9b2e1c0d4a7f" (12).
_LAYER = re.compile(r"^\s*-+> ([0-9a-f]{8,64})$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Docker's words for a failed run step; Podman's already say "exit status N".
_DOCKER_EXIT = re.compile(r"^The command .* returned a non-zero code: (\d+)$", re.DOTALL)


@dataclass
class BuildOutcome:
    image_id: str  # "sha256:<64 hex>", as client.images.get(...).id
    cached: set[int] = field(default_factory=set)  # instruction numbers whose layer was cached
    ran: set[int] = field(default_factory=set)  # instruction numbers that ran
    log: list[str] = field(default_factory=list)


BUILD_ATTEMPTS = 3  # buildah's cache check is one of the calls that lose the store race
# A forced removal elsewhere (`rmi -f` of an image a build step stands on) takes buildah's build
# container with it; buildah then fails to delete it. The steps are cached: building again costs
# little and gives the same image.
_BUILD_CONTAINER_GONE = "identifier is not a container"


def _lost_a_race(engine_said: str) -> bool:
    return lost_storage_race(engine_said) or _BUILD_CONTAINER_GONE in engine_said


def build(client: docker.DockerClient, context: IO[bytes], *, timestamp: int | None,
          use_cache: bool = True, on_line: Progress | None = None,
          describe: Callable[[int], str] | None = None,
          on_image: Callable[[str], None] | None = None) -> BuildOutcome:
    """Build the context's Containerfile; BakeError with the failing step's output. A build
    that lost the engine's storage race, or whose build container someone else removed, is
    asked again, its context rewound.

    ``on_image(short_id)`` is called once the last instruction's image is committed, while
    the engine still cleans up after the build (~50 ms on Podman): a caller may ask about the
    image meanwhile. Only a hint: the build may still fail, and the outcome's id is the one
    to trust."""
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        try:
            return _build_once(client, context, timestamp=timestamp, use_cache=use_cache,
                               on_line=on_line, describe=describe, on_image=on_image)
        except BakeError as e:
            engine_said = e.message.split("\n", 1)[0]  # not the step's own output below it
            if attempt == BUILD_ATTEMPTS or not context.seekable() or \
                    not _lost_a_race(engine_said):
                raise
            context.seek(0)
    raise AssertionError("unreachable")


def _build_once(client: docker.DockerClient, context: IO[bytes], *, timestamp: int | None,
                use_cache: bool, on_line: Progress | None,
                describe: Callable[[int], str] | None,
                on_image: Callable[[str], None] | None = None) -> BuildOutcome:
    api = client.api
    params = {"dockerfile": CONTAINERFILE, "layers": "1", "rm": "1", "forcerm": "1",
              "nocache": "0" if use_cache else "1", "networkmode": "host"}
    if timestamp is not None:
        params["timestamp"] = str(timestamp)
    url = f"{api.base_url}/v{api.api_version}/build"
    try:
        response = api.post(url, params=params, data=context,
                            headers={"Content-Type": "application/x-tar"},
                            stream=True, timeout=None)
    except Exception as e:  # requests' and urllib3's errors alike
        raise BakeError(f"the container engine did not take the build: {e}",
                        hint="check the engine is running (`hinotori` starts a private "
                             "`podman system service` when none answers)") from e
    if response.status_code >= 400:
        raise BakeError(f"the container engine refused the build ({response.status_code}): "
                        f"{response.text.strip()[:500]}",
                        hint="check the engine's version supports the build API")
    outcome = BuildOutcome(image_id="")
    step = steps = 0
    step_start = 0  # index in the log where the current instruction's output starts
    built = None
    last_layer: str | None = None
    for line in _stream_lines(response):
        kind, text = line
        if kind == "aux":
            built = text
            continue
        if kind == "error":
            shown = outcome.log[step_start:][-TAIL_LINES:]
            body = "\n".join(f"  | {t}" for t in shown) or "  | (no output)"
            what = describe(step) if describe and step else f"instruction {step}"
            raise BakeError(f"{what} failed: {text.strip()}\nlast {len(shown)} lines of "
                            f"output:\n{body}",
                            hint="nothing was tagged and no release was made; the steps "
                                 "before it stay cached")
        outcome.log.append(text)
        if on_line:
            on_line(text)
        if m := _STEP.match(text):
            step, step_start = int(m.group(1)), len(outcome.log)
            steps = int(m.group(2) or 0)
            if step > 1:
                outcome.ran.add(step)  # until a "Using cache" line says otherwise
        elif (m := _CACHED.match(text)) and step:
            outcome.ran.discard(step)
            outcome.cached.add(step)
        elif (m := _LAYER.match(text)) and step and step == steps and last_layer is None:
            last_layer = m.group(1)
            if on_image:
                on_image(last_layer)
        elif (m := _BUILT.match(text)) and built is None:
            built = m.group(1)
    if built is None:
        raise BakeError("the container engine ended the build without an image",
                        hint="last output:\n" + "\n".join(outcome.log[-TAIL_LINES:]))
    if not built.startswith("sha256:"):
        # The short id of "Successfully built" (or a bare aux id): the engine's full one.
        built = str(inspect_image(client, built)["Id"]) if len(built) < 64 else f"sha256:{built}"
    outcome.image_id = built
    return outcome


def _stream_lines(response: requests.Response) -> Iterator[tuple[str, str]]:
    """(kind, text) per line of the build's output: kind "stream", "aux" (the image id) or
    "error". A generator."""
    buffer = ""
    for chunk in response.iter_lines(decode_unicode=True):
        if not chunk:
            continue
        try:
            message = json.loads(chunk)
        except json.JSONDecodeError:
            continue  # the API writes one JSON object a line; anything else is not ours
        if message.get("error") or message.get("errorDetail"):
            if buffer:
                yield "stream", buffer
                buffer = ""
            err = message.get("error") or message["errorDetail"].get("message", "")
            if m := _DOCKER_EXIT.match(err.strip()):
                err = f"the step's command failed: exit status {m.group(1)}"
            yield "error", err
            return
        aux = message.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            yield "aux", aux["ID"]
        buffer += _ANSI.sub("", message.get("stream") or "")
        *complete, buffer = buffer.split("\n")
        for text in complete:
            yield "stream", text.rstrip("\r")
    if buffer:
        yield "stream", buffer
