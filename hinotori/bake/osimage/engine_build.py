"""Building a Containerfile through the engine's build API, with its layer cache.

``POST /build`` (the Docker Engine API, which Podman serves through buildah) with the context
tar as the body, ``layers=1`` so every instruction is committed as a cached layer, and
``timestamp=<SOURCE_DATE_EPOCH>``. Podman's compat build handler honours ``timestamp``
(pkg/api/handlers/compat/images_build.go sets buildah's ``BuildOptions.Timestamp``): every
layer's file times and the image's "created" time are that instant, so a rebuild of unchanged
inputs on an engine without the cache gives the same layer digests as long as the steps
themselves write the same bytes. Docker ignores the parameter. The docker SDK's ``build()``
has no such argument, hence the plain POST on the SDK's own HTTP session.

The response is a stream of JSON objects; ``stream`` texts are buildah's progress::

    STEP 5/9: COPY ["c5/", "/app/"]
    --> Using cache 3f1c…          (this instruction's layer came from the cache)
    --> 9b2e…                      (it ran, and made this layer)
    Successfully built 9b2e…

``error`` ends a failed build; the step's own output came before it as ``stream`` lines and is
what the BakeError shows. A failed build tags nothing: hinotori tags only the image of a build
that succeeded, after the fact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from hinotori.bake.osimage.containerfile import CONTAINERFILE
from hinotori.errors import BakeError

if TYPE_CHECKING:
    import docker
    import requests

Progress = Callable[[str], None]
TAIL_LINES = 20
_STEP = re.compile(r"^STEP (\d+)(?:/(\d+))?: (.*)$")
_CACHED = re.compile(r"^\s*-+> Using cache")  # buildah "--> Using cache <id>"; Docker " ---> …"
_BUILT = re.compile(r"^Successfully built ([0-9a-f]+)")


@dataclass
class BuildOutcome:
    image_id: str  # "sha256:<64 hex>", as client.images.get(...).id
    image: Any = None  # the SDK's Image of it
    cached: set[int] = field(default_factory=set)  # instruction numbers whose layer was cached
    ran: set[int] = field(default_factory=set)  # instruction numbers that ran
    log: list[str] = field(default_factory=list)


def build(client: docker.DockerClient, context: IO[bytes], *, timestamp: int | None,
          use_cache: bool = True, on_line: Progress | None = None,
          describe: Callable[[int], str] | None = None) -> BuildOutcome:
    """Build the context's Containerfile; BakeError with the failing step's output."""
    api = client.api
    params = {"dockerfile": CONTAINERFILE, "layers": "1", "rm": "1", "forcerm": "1",
              "nocache": "0" if use_cache else "1"}
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
    step = 0
    step_start = 0  # index in the log where the current instruction's output starts
    built = None
    for line in _stream_lines(response):
        kind, text = line
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
            if step > 1:
                outcome.ran.add(step)  # until a "Using cache" line says otherwise
        elif (m := _CACHED.match(text)) and step:
            outcome.ran.discard(step)
            outcome.cached.add(step)
        elif m := _BUILT.match(text):
            built = m.group(1)
    if built is None:
        raise BakeError("the container engine ended the build without an image",
                        hint="last output:\n" + "\n".join(outcome.log[-TAIL_LINES:]))
    outcome.image = client.images.get(built)
    outcome.image_id = str(outcome.image.id)
    return outcome


def _stream_lines(response: requests.Response) -> Iterator[tuple[str, str]]:
    """(kind, text) per line of the build's output: kind "stream" or "error". A generator."""
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
            yield "error", err
            return
        buffer += message.get("stream", "")
        *complete, buffer = buffer.split("\n")
        for text in complete:
            yield "stream", text.rstrip("\r")
    if buffer:
        yield "stream", buffer
