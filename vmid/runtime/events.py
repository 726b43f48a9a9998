"""Kubernetes Events about VMIs, kept after the VMI is gone (`vmid events`, `vmid describe`).

The daemon keeps one file per VMI (namespace/name) in the state directory, replaced atomically
at each event; an event identical to an earlier one (same object, type, reason, message) is
counted again, as Kubernetes aggregates it. A removed VMI's file goes
`events.keepAfterRemovalSeconds` after its last event (kube-apiserver's `--event-ttl`). Plain
file I/O, no trio: the CLI reads and follows the same files.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import os
import re
import select
import time
from collections.abc import Callable, Mapping, Set
from pathlib import Path
from typing import Any

from vmid.host import safefile

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
COMPONENT = "vmid"
#: Events kept per VMI: one that keeps saying new things drops its oldest ones.
MAX_EVENTS = 50
#: client-go's limit on a message (longer ones are cut, ending in "..."); reasons are one word.
MAX_MESSAGE = 1024
MAX_REASON = 128
#: Removed VMIs' files beyond this count or size go oldest first, whatever their age: names
#: churning through the spool cannot fill the disk within an hour.
MAX_GONE_OBJECTS = 1000
MAX_GONE_BYTES = 32 << 20
#: A file holds at most MAX_EVENTS events of about 2 KiB: anything larger is not vmid's.
MAX_FILE_BYTES = 1 << 20
#: Files whose events the daemon keeps as it wrote them last (at most ~100 KiB each, a few KiB
#: for most VMIs): one per VMI of 200 starting at once, whose events interleave (with 64 kept,
#: nearly every event of such a batch read its file back first).
WRITTEN_KEPT = 256
#: A staging file a crash left behind (a dot file) is deleted once this old.
STAGING_SECONDS = 60.0
_SUFFIX = ".json"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def identity(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The (namespace, name) of a VMI object; KubeVirt's namespace defaults to `default`."""
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or DEFAULT_NAMESPACE), str(metadata.get("name", ""))


def file_name(namespace: str, name: str) -> str:
    """The file of one VMI's events: a digest, as a 253-character name and its namespace do
    not fit in a file name; the events inside say whose they are."""
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:32] + _SUFFIX


class EventStore:
    """The daemon's side: records events and prunes those of removed VMIs."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock
        self._host = os.uname().nodename
        self._failing = False
        #: The events last written to each file and its stat then (the least recent go past
        #: WRITTEN_KEPT): the daemon is the only writer, so the next event need not read and
        #: check the file again while it is as written (each launch records three).
        self._written: collections.OrderedDict[Path, tuple[_Stamp, list[dict[str, Any]]]] = (
            collections.OrderedDict()
        )

    def __repr__(self) -> str:
        return f"<EventStore {str(self.directory)!r}>"

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Add an event about the VMI `obj` (its object, as in its status).

        Never raises: an event that cannot be written (a full disk) is logged, and the VM goes on.
        """
        path = self.directory / file_name(*identity(obj))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            events = _add(self._current(path), self._event(obj, type_, reason, message))
            safefile.write_atomically(path, (json.dumps(events) + "\n").encode())
            self._written[path] = (_stamp_of(path), events)
            self._written.move_to_end(path)
            if len(self._written) > WRITTEN_KEPT:
                self._written.popitem(last=False)
        except OSError as exc:
            self._written.pop(path, None)
            if not self._failing:  # once per outage, not once per event
                log.error("cannot record events in %s: %s", self.directory, exc)
            self._failing = True
            return
        self._failing = False

    def _current(self, path: Path) -> list[dict[str, Any]]:
        """The events in `path`: as last written, unless the file changed since."""
        written = self._written.get(path)
        if written is not None and written[0] == _stamp_of(path):
            return written[1]
        return read_file(path)

    def _event(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> dict[str, Any]:
        namespace, name = identity(obj)
        moment = self._clock()
        stamp = _stamp(moment)
        involved = {
            "apiVersion": "kubevirt.io/v1",
            # A VirtualMachine's events (vmid/runtime/vms.py) name it; every other is a VMI's.
            "kind": str(obj.get("kind") or "VirtualMachineInstance"),
            "namespace": namespace,
            "name": name,
        }
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            involved["uid"] = str(uid)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{name}.{int(moment * 1e9):x}",  # as client-go names them
                "namespace": namespace,
                "uid": _uid(),
                "creationTimestamp": stamp,
            },
            "involvedObject": involved,
            "type": type_,
            "reason": reason[:MAX_REASON],
            "message": _truncate(message),
            "source": {"component": COMPONENT, "host": self._host},
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "reportingComponent": COMPONENT,
            "reportingInstance": self._host,
        }

    def prune(self, alive: Set[tuple[str, str]], keep_seconds: float) -> int:
        """Delete the events of removed VMIs (not in `alive`) `keep_seconds` after their last
        one, and beyond MAX_GONE_OBJECTS or MAX_GONE_BYTES the oldest; how many files went."""
        keep = {file_name(*key) for key in alive}
        now, gone, deleted = self._clock(), [], 0
        for name, st in _entries(self.directory):
            age = now - st.st_mtime
            if name in keep:
                continue
            if name.startswith("."):
                if age > STAGING_SECONDS:
                    deleted += self._delete(name)
            elif age >= keep_seconds:
                deleted += self._delete(name)
            else:
                gone.append((st.st_mtime, st.st_size, name))
        count, size = len(gone), sum(g[1] for g in gone)
        for _, bytes_, name in sorted(gone):
            if count <= MAX_GONE_OBJECTS and size <= MAX_GONE_BYTES:
                break
            deleted += self._delete(name)
            count, size = count - 1, size - bytes_
        return deleted

    def _delete(self, name: str) -> bool:
        try:
            (self.directory / name).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot delete %s: %s", self.directory / name, exc)
            return False
        return True


#: A file's identity and state: inode, size, modification and change times (none: missing).
_Stamp = tuple[int, int, int, int] | None


def _stamp_of(path: Path) -> _Stamp:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _entries(directory: Path) -> list[tuple[str, os.stat_result]]:
    """The regular files in `directory` with their lstat (none if it does not exist)."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((entry.name, st))
    except FileNotFoundError:
        return []
    return found


def _add(events: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """`events` with `new` last, at most MAX_EVENTS; an identical earlier event is counted
    instead, keeping its name and first time (Kubernetes' EventCorrelator)."""
    same = next((e for e in events if _key(e) == _key(new)), None)
    if same is not None:
        events = [e for e in events if e is not same]
        new = {**same, "count": same["count"] + 1, "lastTimestamp": new["lastTimestamp"]}
    return [*events, new][-MAX_EVENTS:]


def _key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    involved = event.get("involvedObject") or {}
    source = event.get("source") or {}
    return (
        tuple(sorted(involved.items())),
        event["type"],
        event["reason"],
        event["message"],
        source.get("component"),
    )


def _uid() -> str:
    """An event's metadata.uid, a random UUID (imported here: `vmid describe` reads events
    without making any, and uuid imports platform)."""
    import uuid

    return str(uuid.uuid4())


def _truncate(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(_TIME_FORMAT)


# Section: readers (the CLI)


def read_file(path: Path) -> list[dict[str, Any]]:
    """One VMI's events, in the order of their last update; none if the file is missing or
    unreadable (a torn file after a power loss is no error: the next event replaces it)."""
    try:
        data = json.loads(safefile.read_regular(path, MAX_FILE_BYTES))
    except (OSError, ValueError):
        return []
    return [e for e in data if _valid(e)] if isinstance(data, list) else []


def _valid(event: object) -> bool:
    """Whether `event` has every field readers use, as vmid writes them."""
    if not isinstance(event, dict):
        return False
    metadata, involved = event.get("metadata"), event.get("involvedObject")
    if not isinstance(metadata, dict) or not isinstance(involved, dict):
        return False
    times = (event.get("firstTimestamp"), event.get("lastTimestamp"))
    return (
        isinstance(metadata.get("name"), str)
        and all(isinstance(event.get(k), str) for k in ("type", "reason", "message"))
        and all(isinstance(t, str) and _TIMESTAMP.fullmatch(t) for t in times)
        and isinstance(event.get("count"), int)
    )


def read(
    directory: Path,
    namespace: str | None = None,
    name: str | None = None,
    files: Set[str] | None = None,
) -> list[dict[str, Any]]:
    """The events about VMI `name` in `namespace` (None: in every namespace, of every VMI),
    oldest `lastTimestamp` first; `files`: read only these of the store's files."""
    if namespace is not None and name is not None:
        names = [file_name(namespace, name)]
    else:
        names = sorted(n for n, _ in _entries(directory) if _object_file(n))
    found = [
        event
        for each in names
        if files is None or each in files
        for event in read_file(directory / each)
        if _about(event, namespace, name)
    ]
    return sorted(found, key=lambda e: str(e["lastTimestamp"]))


def _object_file(name: str) -> bool:
    return not name.startswith(".") and name.endswith(_SUFFIX)


def _about(event: Mapping[str, Any], namespace: str | None, name: str | None) -> bool:
    involved = event["involvedObject"]
    return namespace in (None, involved.get("namespace")) and name in (None, involved.get("name"))


class Follow:
    """The store's changes as they come (`vmid events -w`): inotify on its directory."""

    def __init__(self, directory: Path) -> None:
        # Here: `vmid describe` reads events without following them (inotify loads ctypes).
        from vmid.host import inotify

        self._fd = inotify.open_fd()
        mask = inotify.MOVED_TO | inotify.CLOSE_WRITE | inotify.DELETE | inotify.DELETE_SELF
        try:
            inotify.add_watch(self._fd, directory, mask)
        except OSError:
            os.close(self._fd)
            raise

    def __repr__(self) -> str:
        return f"<Follow fd={self._fd}>"

    def wait(self, timeout: float) -> set[str] | None:
        """The files changed since the last call, after waiting up to `timeout` seconds for
        one; empty if none did; None if changes were lost (read everything again)."""
        from vmid.host import inotify  # as in __init__

        # The kernel dropped events or the directory went: the watcher must read everything.
        lost = inotify.Q_OVERFLOW | inotify.DELETE_SELF | inotify.IGNORED
        ready, _, _ = select.select([self._fd], [], [], timeout)
        changed = set()
        for event in inotify.read_events(self._fd) if ready else []:
            if event.mask & lost:
                return None
            if _object_file(event.name):
                changed.add(event.name)
        return changed

    def close(self) -> None:
        os.close(self._fd)
