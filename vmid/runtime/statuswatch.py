"""Status files as they change, for `vmid get -w` and `get vm -w`: inotify on their
directories, no trio.

The daemon replaces a status file by renaming a new one over it (IN_MOVED_TO) and removes a
VMI's directory when the VMI goes (IN_DELETE); each is read as soon as the kernel says so. The
watch ends when the daemon stops: the kernel drops its pid file's lock (vmid.host.pidlock).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any, Generic, TypeVar

import attrs

from vmid.api.vmistatus import VMIObject
from vmid.host import inotify, pidlock
from vmid.paths import Paths
from vmid.runtime import status, vmstate

_MASK = (
    inotify.CREATE
    | inotify.MOVED_TO
    | inotify.MOVED_FROM
    | inotify.DELETE
    | inotify.CLOSE_WRITE
    | inotify.ONLYDIR
)


Obj = TypeVar("Obj")


@attrs.frozen
class Change(Generic[Obj]):
    """A status file replaced (`obj`: what it holds now) or removed (`obj` None)."""

    path: Path
    obj: Obj | None


class StatusWatch(Generic[Obj]):
    """Watches the status files matching `patterns` (globs below the runtime directory), each
    read with `parse` (ValueError: not one of vmid's); `listed` names the ones there now.
    `vmis(paths)` and `vms(paths)` make one (close it when done)."""

    def __init__(
        self,
        paths: Paths,
        patterns: Sequence[str],
        parse: Callable[[Any], Obj],
        listed: Callable[[], list[Path]],
    ) -> None:
        self._paths = paths
        self._patterns = [PurePath(p).parts for p in patterns]
        self._parse = parse
        self._listed = listed
        self._fd = inotify.open_fd()
        self._dirs: dict[int, Path] = {}
        self._known: dict[Path, Obj] = {}

    def __repr__(self) -> str:
        return f"<StatusWatch dirs={len(self._dirs)} files={len(self._known)}>"

    def close(self) -> None:
        os.close(self._fd)

    def current(self) -> list[Change[Obj]]:
        """Start watching; every object there is now, as `vmid get` lists them."""
        self._watch_tree(self._paths.runtime)
        found = (self._read(path) for path in self._listed())
        return [change for change in found if change is not None]

    def daemon_running(self) -> bool:
        return pidlock.running(self._paths.daemon_pid)

    def changes(self) -> Iterator[Change[Obj]]:
        """Every change from now on, in the order it came; returns once the daemon stopped."""
        stopped, signal_stop = os.pipe2(os.O_CLOEXEC)
        waiter = threading.Thread(
            target=_signal_when_stopped, args=(self._paths.daemon_pid, signal_stop), daemon=True
        )
        waiter.start()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(stopped, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                # Whatever the daemon wrote before it ended is queued before its lock is dropped.
                yield from self._handle(inotify.read_events(self._fd))
                if stopped in ready:
                    return
        finally:
            os.close(stopped)

    def _handle(self, events: list[inotify.Event]) -> Iterator[Change[Obj]]:
        touched: dict[Path, None] = {}  # in the order the events came
        for event in events:
            if event.mask & inotify.Q_OVERFLOW:  # events were lost: look at everything again
                found = self._watch_tree(self._paths.runtime)
                touched.update(dict.fromkeys([*self._known, *found]))
                continue
            directory = self._dirs.get(event.wd)
            if directory is None:
                continue
            if event.mask & inotify.IGNORED:  # the directory is gone
                del self._dirs[event.wd]
                continue
            path = directory / event.name
            if event.mask & inotify.ISDIR and event.mask & (inotify.CREATE | inotify.MOVED_TO):
                touched.update(dict.fromkeys(self._watch_tree(path)))
            elif event.mask & inotify.ISDIR:
                touched.update(dict.fromkeys(p for p in self._known if p.is_relative_to(path)))
            elif self._is_status(path, self._patterns):
                touched[path] = None
        for path in touched:
            change = self._read(path)
            if change is not None:
                yield change

    def _read(self, path: Path) -> Change[Obj] | None:
        """Read `path` again; the change, if its object is new, changed or gone."""
        try:
            obj = self._parse(status.read_json(path))
        except FileNotFoundError:
            return Change(path, None) if self._known.pop(path, None) is not None else None
        except (OSError, ValueError):
            return None  # not a file vmid wrote: not shown, as `vmid get` does not
        if self._known.get(path) == obj:
            return None
        self._known[path] = obj
        return Change(path, obj)

    def _watch_tree(self, directory: Path) -> list[Path]:
        """Watch `directory` and every directory below it a status file can be in; the status
        files there now."""
        try:
            self._dirs[inotify.add_watch(self._fd, directory, _MASK)] = directory
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:  # gone meanwhile (or not made yet: its parent's watch sees it come)
            return []
        found = []
        for entry in entries:
            path = Path(entry.path)
            if _is_dir(entry) and self._is_status(path, [p[:-1] for p in self._patterns], True):
                found += self._watch_tree(path)
            elif self._is_status(path, self._patterns):
                found.append(path)
        return found

    def _is_status(self, path: Path, patterns: list[tuple[str, ...]], prefix: bool = False) -> bool:
        """Whether `path` matches a pattern (or, with `prefix`, leads to where one matches)."""
        parts = path.relative_to(self._paths.runtime).parts
        return any(
            (len(parts) <= len(p) if prefix else len(parts) == len(p))
            and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, p, strict=False))
            for p in patterns
        )


def vmis(paths: Paths) -> StatusWatch[VMIObject]:
    """A watch of the VMIs' status files (and the spool files' that no VMI shows)."""
    return StatusWatch(
        paths,
        status.status_patterns(paths),
        VMIObject.from_data,
        lambda: status.status_files(paths),
    )


def vms(paths: Paths) -> StatusWatch[dict[str, Any]]:
    """A watch of the VirtualMachines' status files (vmid/runtime/vmstate.py)."""
    pattern = paths.vm_runtime("*/*") / vmstate.STATUS_FILE
    return StatusWatch(
        paths,
        (str(pattern.relative_to(paths.runtime)),),
        _vm_object,
        lambda: sorted(paths.runtime.glob(str(pattern.relative_to(paths.runtime)))),
    )


def _vm_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("status"), dict):
        raise ValueError("not a VirtualMachine's status")
    return data


def _is_dir(entry: os.DirEntry[str]) -> bool:
    with contextlib.suppress(OSError):
        return entry.is_dir(follow_symlinks=False)
    return False


def _signal_when_stopped(pid_file: Path, signal_stop: int) -> None:
    """In a thread: write to `signal_stop` once no daemon holds `pid_file`."""
    try:
        pidlock.wait_stopped(pid_file)
        os.write(signal_stop, b"x")
    except OSError:
        pass  # the watch ended first (its end of the pipe is closed)
    finally:
        os.close(signal_stop)
