"""The daemon's pid file, locked (flock) while it runs: one daemon per root, and a way for
`vmid get -w` to know when it stops.

The kernel drops the lock when the process ends, however it ends (SIGKILL too), so a pid file
left behind never says a daemon runs.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from vmid.errors import DaemonRunning

#: How long a starting daemon waits for the lock: a reader holds it for an instant only.
WAIT_SECONDS = 2.0


def hold(path: Path) -> int:
    """Lock `path` for as long as the returned fd is open, and write this process's pid in it.

    Raises:
        DaemonRunning: another daemon holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise DaemonRunning(
                    f"another vmid daemon (pid {other or 'unknown'}) runs with this root "
                    f"({path} is locked); stop it first"
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def running(path: Path) -> bool:
    """Whether a daemon holds `path` now."""
    return not _lock_shared(path, fcntl.LOCK_SH | fcntl.LOCK_NB)


def wait_stopped(path: Path) -> None:
    """Block until no daemon holds `path` (at once if none does)."""
    _lock_shared(path, fcntl.LOCK_SH)


def _lock_shared(path: Path, operation: int) -> bool:
    """Take a shared lock on `path` and drop it at once (so the next daemon can take it);
    False if it is held (with LOCK_NB). A missing file is held by nobody."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
