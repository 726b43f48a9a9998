"""Unix sockets by path, whatever the path's length (sun_path holds only 108 bytes)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path


def _at(path: Path, call: Callable[[str], None]) -> None:
    # /proc/self/fd/N/NAME is short whatever the directory: 253-character VMI names fit.
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        call(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)


def listen(path: Path, mode: int = 0o600) -> socket.socket:
    """A listening stream socket at `path`, replacing a stale one."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _at(path, sock.bind)
        path.chmod(mode)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def connect(path: Path) -> socket.socket:
    """A stream socket connected to `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _at(path, sock.connect)
    except OSError:
        sock.close()
        raise
    return sock
