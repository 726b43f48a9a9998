"""Linux inotify through libc: an fd, watches on directories, and the events read from it.

No trio here: the daemon waits on the fd with trio, `vmid get -w` with poll(2).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from typing import NamedTuple

CREATE, ATTRIB, CLOSE_WRITE = 0x100, 0x4, 0x8
MOVED_FROM, MOVED_TO, DELETE, DELETE_SELF = 0x40, 0x80, 0x200, 0x400
Q_OVERFLOW, IGNORED, ISDIR, ONLYDIR = 0x4000, 0x8000, 0x40000000, 0x01000000
_EVENT = struct.Struct("iIII")


class Event(NamedTuple):
    """One event: the watch it came from, what happened, and the entry's name (or "")."""

    wd: int
    mask: int
    name: str


# glibc's soname, not ctypes.util.find_library("c"): that runs `ldconfig -p` and costs every
# CLI call that reads events (`vmid describe`) several milliseconds.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def open_fd() -> int:
    """A new non-blocking, close-on-exec inotify fd."""
    fd: int = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"inotify_init1 failed: {os.strerror(code)}")
    return fd


def add_watch(fd: int, directory: Path, mask: int) -> int:
    """Watch `directory` for `mask`'s events; the watch descriptor (OSError if it is gone)."""
    wd: int = _libc.inotify_add_watch(fd, os.fsencode(directory), mask)
    if wd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot watch {directory}: {os.strerror(code)}", str(directory))
    return wd


def read_events(fd: int) -> list[Event]:
    """The events queued on `fd` now (an empty list if none)."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return []
    events, offset = [], 0
    while offset < len(data):
        wd, mask, _, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        name = os.fsdecode(data[start : start + length].rstrip(b"\0"))
        events.append(Event(wd, mask, name))
        offset = start + length
    return events
