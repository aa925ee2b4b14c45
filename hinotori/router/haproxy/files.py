"""haproxy.cfg and the map files: what a reload or a fresh HAProxy starts from.

They are not part of a switch: the running worker changed through the Runtime API already,
and nothing reads them until the next reload or start. So after a switch they are written in a
thread with the state file (file system calls only: the texts are made before, the cfg's once
per plan: plans.py), and whatever needs them on disk first (every locked operation of the
router, ``current``; a new router object waits for every object's, ``flush``) waits for that
write (``settle``). Here a write and rename of the 90 kB state file of a 1,000-backend table
took 3 ms (p50) to 20 ms (ext4 flushes a file renamed over another), all inside the switch. A
controller killed before the thread ends leaves the previous files: the next start sees a cfg
unlike the table's and reloads, and the controller applies its table again at start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

from hinotori.router.haproxy import config
from hinotori.statefiles import private_dir, write_private

_WRITER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="haproxy-files")
# The object whose write of a state file was queued last in this process (by path).
_LAST_WRITER: dict[Path, Files] = {}

Todo = dict[Path, str]  # file -> text, written in order (the state file first)


class Files:
    """The files of one router object, and its writes in progress (coalesced: a switch
    during a write queues its texts, and the newest text of each file is written next)."""

    def __init__(self, settings: config.Settings, cfg: Path, state_file: Path) -> None:
        self.settings = settings
        self.cfg = cfg
        self.state_file = state_file
        self.written: dict[Path, str] = {}  # file -> text this object last wrote there
        self._lock = threading.Lock()  # _queued is shared with the writing thread
        self._queued: Todo | None = None
        self._active = False  # the thread is writing and will look at _queued before it ends
        # A concurrent future, not an asyncio one: the object may be driven by several loops.
        self._running: concurrent.futures.Future[tuple[int, int, int] | None] | None = None

    def forget(self) -> None:
        """Another object may have written the files since: write every one next time."""
        self.written.clear()

    def targets(self, plan: config.Plan) -> dict[Path, dict[str, str]]:
        """The plan's map files and their entries, in the order they are converged."""
        s = self.settings
        maps = {config.map_file(s, svc): entries for svc, entries in plan.maps.items()}
        maps[config.sticky_file(s)] = {svc: "1" for svc in plan.sticky}
        # The maintenance answer before the live map leads a service to it (config.py), and
        # removed after the live map leads elsewhere (removals go in the reverse order).
        for name in reversed(config.MAINTENANCE_MAPS):
            maps[config.maintenance_file(s, name)] = plan.maintenance.get(name, {})
        # After the release maps (a header for the new release works as soon as it serves),
        # and after the servers of a backend it points to are ready (converge.py).
        maps[config.live_file(s)] = plan.live
        return maps

    def _changed(self, plan: config.Plan, cfg_text: str) -> list[tuple[Path, str]]:
        """The files whose text differs from what this object last wrote there."""
        out = [(f, config.map_text(entries)) for f, entries in self.targets(plan).items()]
        out.append((self.cfg, cfg_text))
        return [(f, t) for f, t in out if self.written.get(f) != t or not f.exists()]

    def write_now(self, plan: config.Plan, cfg_text: str, *, fresh: bool = False) -> bool:
        """Write the map files and haproxy.cfg for ``plan`` (call ``settle`` first); True if
        the cfg on disk was not ``cfg_text``. ``fresh``: for a new HAProxy, which logs every
        request until the reader sees traffic."""
        private_dir(self.settings.maps_dir)
        if fresh or not config.sample_current(config.sample_file(self.settings)):
            write_sample(self.settings, 1)
        try:
            changed = self.cfg.read_text() != cfg_text
        except OSError:
            changed = True
        if not changed:
            self.written[self.cfg] = cfg_text
        for f, text in self._changed(plan, cfg_text):
            write_text(f, text)
            self.written[f] = text
        return changed

    def write_later(self, state_text: str, plan: config.Plan | None = None,
                    cfg_text: str = "") -> None:
        """Write the state file, then the files that changed for ``plan``, in the files'
        thread; ``settle`` waits for them."""
        todo: Todo = {self.state_file: state_text}
        if plan is not None:
            todo.update(self._changed(plan, cfg_text))
        self.written.update((f, t) for f, t in todo.items() if f != self.state_file)
        _LAST_WRITER[self.state_file] = self
        with self._lock:
            if self._active:
                self._queued = {**(self._queued or {}), **todo}  # the newest texts win
                return
            self._active = True
            self._running = _WRITER.submit(self._write, todo)

    def _write(self, todo: Todo) -> tuple[int, int, int] | None:
        try:
            while True:
                for f, text in todo.items():
                    write_text(f, text)
                with self._lock:
                    if self._queued is None:
                        self._active = False
                        return signature(self.state_file)
                    todo, self._queued = self._queued, None
        except BaseException:
            with self._lock:
                self._active = False
                self._queued = None  # written again next time (finished() clears written)
            raise

    def mine(self) -> bool:
        """Is a write of this object in progress, and no other object's queued after it? Then
        the state file will be as this object wrote it, whatever it holds this instant."""
        running = self._running
        return running is not None and not running.done() and \
            _LAST_WRITER.get(self.state_file) is self

    def finished(self) -> tuple[int, int, int] | None:
        """The state file's signature after this object's last write, once it is done (else
        None; raises what the write raised, and then every file is written again)."""
        running = self._running
        if running is None or not running.done():
            return None
        self._running = None
        try:
            return running.result()
        except Exception:
            self.written.clear()
            raise

    async def settle(self) -> tuple[int, int, int] | None:
        """Wait for this object's writes; the state file's signature after them (if any)."""
        running = self._running
        if running is not None and not running.done():
            await asyncio.wrap_future(running)
        return self.finished()


async def flush() -> None:
    """Wait for every write queued by any object of this process (one thread: in order)."""
    await asyncio.wrap_future(_WRITER.submit(lambda: None))


def signature(path: Path) -> tuple[int, int, int] | None:
    """What tells one write of ``path`` from another (inode, mtime, size)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write_sample(settings: config.Settings, n: int) -> Path:
    """The latency map file holding ``n`` (what a new or reloaded worker loads)."""
    sample = config.sample_file(settings)
    write_text(sample, config.map_text(config.sample_entries(n)))
    return sample


def write_text(path: Path, text: str) -> None:
    write_private(path, text, tmp=path.with_name(path.name + ".tmp"))
