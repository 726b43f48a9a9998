"""A directory watch through inotify(7): a plain fd to wait on (select, trio) and its events."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

IN_CLOSE_WRITE, IN_MOVED_TO, IN_DELETE = 0x8, 0x80, 0x200
IN_DELETE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x4000, 0x8000
#: The kernel dropped events or the directory went: whoever watches must look at everything.
LOST = IN_Q_OVERFLOW | IN_DELETE_SELF | IN_IGNORED
_EVENT = struct.Struct("iIII")


class Watch:
    """Watches one directory for the events in `mask`; `read()` never blocks."""

    def __init__(self, directory: Path, mask: int) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd: int = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), mask | IN_DELETE_SELF) < 0:
            code = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(code, f"cannot watch {directory}: {os.strerror(code)}", str(directory))

    def __repr__(self) -> str:
        return f"<Watch fd={self._fd}>"

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[tuple[int, str]]:
        """The events queued now, as (mask, file name); empty when there are none."""
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return []
        events, offset = [], 0
        while offset < len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            start = offset + _EVENT.size
            name = data[start : start + length].rstrip(b"\0")
            events.append((mask, os.fsdecode(name)))
            offset = start + length
        return events

    def close(self) -> None:
        os.close(self._fd)
