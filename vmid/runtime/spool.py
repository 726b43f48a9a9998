"""The spool: manifest files in a directory, read into the desired set of VMIs.

Files are re-read only when they change (inode, size, mtime). inotify says when to look again;
the look itself is always a full, level-triggered scan, so a missed event costs nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from vmid.config import Accelerator, Config, Paths
from vmid.errors import Problem
from vmid.manifests import Entry, plan_documents

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
RESCAN_SECONDS = 60.0
DEBOUNCE_SECONDS = 0.002  # coalesce a burst (an editor's save, a `cp` of many files)

_IN_CLOSE_WRITE, _IN_MOVED_FROM, _IN_MOVED_TO = 0x8, 0x40, 0x80
_IN_DELETE, _IN_DELETE_SELF, _IN_Q_OVERFLOW, _IN_IGNORED = 0x200, 0x400, 0x4000, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_WATCH_MASK = _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE | _IN_DELETE_SELF
_EVENT = struct.Struct("iIII")


@attrs.frozen
class Desired:
    """What the spool asks for: valid VMIs by name, and the problems of everything else."""

    vmis: dict[str, Entry]
    #: Problems of documents that name a VMI (shown on that VMI), by name.
    refused: dict[str, tuple[Problem, ...]]
    #: Problems that belong to no VMI (unreadable files, nameless documents, duplicates).
    problems: tuple[Problem, ...]


def spool_file(name: str) -> bool:
    """Whether a directory entry is a manifest: dot files and editor leftovers are not."""
    return not name.startswith(".") and name.endswith(SUFFIXES) and not name.endswith("~")


class Spool:
    """Reads the spool directory, caching each file's entries until the file changes."""

    def __init__(self, directory: Path, config: Config, paths: Paths, accelerator: Accelerator):
        self.directory = directory
        self._config = config
        self._paths = paths
        self._accelerator = accelerator
        self._cache: dict[str, tuple[tuple[int, ...], list[Entry]]] = {}
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        return f"<Spool dir={str(self.directory)!r} files={len(self._cache)}>"

    async def reconfigure(self, config: Config) -> None:
        """Use a new configuration; every file is planned again at the next scan."""
        async with self._lock:
            self._config = config
            self._cache.clear()

    async def rescan(self, on_change: Callable[[Desired], None]) -> None:
        """Scan (in a worker thread, one scan at a time) and hand the result to `on_change`."""
        async with self._lock:
            desired = await trio.to_thread.run_sync(self.scan)
            try:
                on_change(desired)
            except Exception:  # a bug reconciling must not stop the daemon and its VMs
                log.exception("applying the spool failed")

    def scan(self) -> Desired:
        """Read every manifest file (changed ones only) and decide which VMI each name means."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if spool_file(n))
        except FileNotFoundError:
            names = []
        entries: list[Entry] = []
        for name in names:
            entries += self._entries(name)
        self._cache = {k: v for k, v in self._cache.items() if k in names}
        return _decide(entries)

    def _entries(self, name: str) -> list[Entry]:
        path = self.directory / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
        cached = self._cache.get(name)
        if cached and cached[0] == key:
            return cached[1]
        refusal = _unsafe(path, st, self.directory)
        if refusal:
            entries = [_refused(path, refusal)]
        else:
            try:
                entries = plan_documents(path, self._config, self._paths, self._accelerator)
            except Exception as exc:  # a bug reading one file must not stop the daemon
                log.exception("%s: internal error", path)
                entries = [_refused(path, f"internal error in vmid reading this file: {exc!r}")]
        self._cache[name] = (key, entries)
        return entries


def _refused(path: Path, message: str) -> Entry:
    return Entry(str(path), None, None, (Problem(str(path), 1, 1, "", message),))


def _unsafe(path: Path, st: os.stat_result, spool: Path) -> str | None:
    """Like sshd's StrictModes: a manifest anyone but root may write could run anything.

    A symlink is followed only within the spool: one to /etc/shadow must not be read (its
    parse errors would quote it into the log).
    """
    if path.is_symlink():
        target = path.resolve()
        if target.parent != spool.resolve():
            return f"refused: a symlink to {target}, outside the spool; copy the file in instead"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
        return (
            f"refused: owned by uid {st.st_uid} with mode {stat.filemode(st.st_mode)}; "
            "a manifest must be owned by root and writable by no one else"
        )
    return None


def _decide(entries: list[Entry]) -> Desired:
    vmis: dict[str, Entry] = {}
    refused: dict[str, tuple[Problem, ...]] = {}
    claimed: dict[str, str] = {}
    problems: list[Problem] = []
    for entry in entries:
        name = entry.name
        if name is None:
            problems += entry.problems
        elif name in claimed:  # the first file by name claims it, valid or not
            problems.append(
                Problem(
                    entry.file,
                    1,
                    1,
                    "metadata.name",
                    f"VMI {name!r} is "
                    f"already defined in {claimed[name]}, which comes first; "
                    "ignored",
                )
            )
        else:
            claimed[name] = entry.file
            if entry.planned is not None:
                vmis[name] = entry
            else:
                refused[name] = entry.problems
    return Desired(vmis, refused, tuple(problems))


class Inotify:
    """A directory watch: `wait()` returns when something in it may have changed."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), _WATCH_MASK) < 0:
            code = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(code, f"cannot watch {directory}: {os.strerror(code)}")

    def __repr__(self) -> str:
        return f"<Inotify fd={self._fd}>"

    async def wait(self) -> bool:
        """Wait for events; True if the kernel's queue overflowed (a full rescan is due)."""
        overflow = False
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                overflow |= bool(mask & (_IN_Q_OVERFLOW | _IN_DELETE_SELF | _IN_IGNORED))
                offset += _EVENT.size + length
            return overflow

    def close(self) -> None:
        os.close(self._fd)


async def watch(
    spool: Spool,
    on_change: Callable[[Desired], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_change` with the desired state now, after every change, and every minute.

    **Cancellation:** the only way this returns.
    """
    notify = _watch_directory(spool.directory)
    try:
        await spool.rescan(on_change)
        task_status.started()
        while True:
            with trio.move_on_after(RESCAN_SECONDS):
                if await notify.wait():
                    # Overflowed, or the directory was removed: watch it afresh.
                    log.warning("spool watch lost events: rescanning")
                    notify.close()
                    notify = _watch_directory(spool.directory)
                await trio.sleep(DEBOUNCE_SECONDS)
            await spool.rescan(on_change)
    finally:
        notify.close()


def _watch_directory(directory: Path) -> Inotify:
    directory.mkdir(parents=True, exist_ok=True)
    return Inotify(directory)
