"""The CLI's side of the controller API: find the controller, call it, turn errors back into
HinotoriErrors, and follow a deployment until it ends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hinotori import errors
from hinotori.errors import ControllerError, ControllerUnreachable, HinotoriError
from hinotori.project import Project

if TYPE_CHECKING:
    import httpx

NOT_RUNNING_HINT = "start it with `hinotori up -d`"
BAKE_TIMEOUT = 3600.0  # a cold OS-image bake downloads packages; a hung controller still ends


class ControllerClient:
    def __init__(self, project: Project, timeout: float = 30.0) -> None:
        self.project = project
        info = project.controller_file
        if not info.exists():
            raise ControllerError(f"no controller is running for {project.root}",
                                  hint=NOT_RUNNING_HINT)
        self.info = json.loads(info.read_text())
        # Imported here, not at the top: every CLI command imports this module at start-up
        # (through the command modules), and httpx costs ~35 ms that only commands which
        # talk to the controller need.
        import httpx

        self.http = httpx.Client(base_url=f"http://{self.info['address']}", timeout=timeout,
                                 headers={"Authorization": f"Bearer {project.token()}"})

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx  # already imported by __init__; see there

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ControllerUnreachable(
                f"the controller at {self.info['address']} does not answer "
                f"({e.__class__.__name__})",
                hint=f"it may have stopped: {NOT_RUNNING_HINT}",
                sent=not isinstance(e, httpx.ConnectError | httpx.ConnectTimeout),
                timed_out=isinstance(e, httpx.TimeoutException)) from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json()

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/status")

    def start_deployment(self, service: str, kind: str, *, release: int | None = None,
                         lock_wait: float = 0.0, actor: str = "cli", replace: bool = False,
                         reason: str = "", strategy: str | None = None,
                         hold: float | None = None) -> int | None:
        body = {"release": release, "lock_wait": lock_wait, "actor": actor, "replace": replace,
                "reason": reason, "strategy": strategy, "hold": hold}
        timeout = max(30.0, lock_wait + 30.0)
        return self.call("POST", f"/v1/services/{service}/{kind}", json=body,
                         timeout=timeout)["deployment"]

    def follow(self, number: int, on_step: Callable[[dict[str, Any]], None],
               poll: float = 0.1) -> dict[str, Any]:
        """Poll the deployment, calling ``on_step`` once per new step, until it has ended."""
        steps: list[dict[str, Any]] = []
        while True:  # only the steps not seen yet: a big deployment has thousands
            dep = self.call("GET", f"/v1/deployments/{number}",
                            params={"steps_after": len(steps)})
            for step in dep["steps"]:
                on_step(step)
            steps += dep["steps"]
            if dep["state"] != "running":  # ended, or held (`deploy --hold`)
                return {**dep, "steps": steps}
            time.sleep(poll)

    def bake(self, service: str, *, no_cache: bool, actor: str) -> dict[str, Any]:
        """``POST /v1/services/{service}/bake``: the summary ``bake_summary`` gives."""
        import httpx  # already imported by __init__; see there

        return self.call("POST", f"/v1/services/{service}/bake",
                         json={"no_cache": no_cache, "actor": actor},
                         timeout=httpx.Timeout(30.0, read=BAKE_TIMEOUT))

    def kill(self, host_id: str, actor: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/hosts/{host_id}/kill", json={"actor": actor})

    def hosts(self, service: str) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/hosts", params={"service": service})

    def metrics(self, service: str) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/metrics", params={"service": service})

    def control(self, service: str, action: str) -> dict[str, Any]:
        # Promoting or aborting a held deployment answers once it is done (switch and drain).
        return self.call("POST", f"/v1/services/{service}/{action}", timeout=900.0)

    def shutdown(self, teardown: bool = True) -> None:
        self.call("POST", "/v1/shutdown", json={"teardown": teardown})


def _error_from(response: httpx.Response) -> HinotoriError:
    try:
        body = response.json()
    except ValueError:
        return ControllerError(f"controller answered HTTP {response.status_code}")
    if not isinstance(body, dict) or "error" not in body:
        detail = body.get("detail") if isinstance(body, dict) else body
        return ControllerError(f"controller refused the request ({response.status_code}): "
                               f"{detail}")
    cls = errors.error_class(str(body.get("type", ""))) or ControllerError
    return cls.from_wire(body)
