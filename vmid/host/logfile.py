"""Bounded log files, as libvirt's virtlogd keeps them: rotated at a size, a few old ones kept.

vmid owns every log file a guest can make grow (root's, 0600); QEMU and dnsmasq only ever get
the write end of a pipe. A VM's pipes are named FIFOs in its root-owned runtime directory, so
the next daemon reopens them when it re-adopts a QEMU an earlier one left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
from collections.abc import Set
from pathlib import Path

log = logging.getLogger(__name__)

#: QEMU blocks when the pipe to its console log is full: room for ~3 s of a flooding serial port.
CONSOLE_PIPE_BYTES = 1 << 20


class RotatingFile:
    """Appends to `path`; at `max_bytes` the file becomes `path.1` (`path.1` becomes `path.2`,
    and so on) and a new one starts; `backups` old files are kept, older ones deleted.

    Every file stays at most `max_bytes` long: a write is split at the limit, as virtlogd does.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        """Raises OSError: `path` is a symlink or not a regular file, or cannot be opened."""
        self.path = path
        self._max = max_bytes
        self._backups = backups
        self._fd: int | None = _open(path)
        self._size = os.fstat(self._fd).st_size

    def __repr__(self) -> str:
        return f"<RotatingFile {self.path} size={self._size}>"

    def write(self, data: bytes) -> None:
        """Append all of `data`, rotating as often as needed. Raises OSError (a full disk)."""
        view = memoryview(data)
        while view:
            if self._size >= self._max or self._fd is None:
                self._rotate()
            assert self._fd is not None
            written = os.write(self._fd, view[: self._max - self._size])
            self._size += written
            view = view[written:]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        self.close()
        if self._size >= self._max:
            for number, old in sorted(_numbered(self.path), reverse=True):
                if number >= self._backups:
                    old.unlink()
                else:
                    os.rename(old, f"{self.path}.{number + 1}")
            with contextlib.suppress(FileNotFoundError):
                if self._backups:
                    os.rename(self.path, f"{self.path}.1")
                else:
                    self.path.unlink()
            self._size = 0  # rotated: a failed open below must not rotate again
        self._fd = _open(self.path)
        self._size = os.fstat(self._fd).st_size


def _open(path: Path) -> int:
    # O_NOFOLLOW, O_NONBLOCK and a check of the fd: a symlink or a FIFO planted in a log
    # directory must neither make root append elsewhere nor block the daemon.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            os.fchown(fd, os.geteuid(), os.getegid())  # an older vmid gave it to QEMU's user
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _numbered(path: Path) -> list[tuple[int, Path]]:
    """The rotated files of `path` there are: (number, file)."""
    prefix = f"{path.name}."
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(path.parent):
            suffix = name.removeprefix(prefix)
            if name.startswith(prefix) and suffix.isascii() and suffix.isdigit():
                found.append((int(suffix), path.parent / name))
    return found


def oldest_first(path: Path) -> list[Path]:
    """`path`'s rotated files, oldest first, then `path` itself: the whole log in order."""
    return [old for _, old in sorted(_numbered(path), reverse=True)] + [path]


def open_fifo(path: Path, create: bool) -> int:
    """The read end (non-blocking) of the FIFO at `path`; `create` replaces whatever is there.

    Raises OSError: `path` is missing (without `create`), a symlink or not a FIFO.
    """
    if create:
        path.unlink(missing_ok=True)
        os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a FIFO")
    return fd


def open_fifo_writer(path: Path, pipe_bytes: int | None = None) -> int:
    """A write end of the FIFO at `path`, whose read end vmid holds open: for QEMU to inherit.

    Blocking, so a QEMU whose log is full waits for vmid instead of spinning (QEMU 7.2 retries
    a log write that fails with EAGAIN in a loop); a QEMU whose reader is gone (no daemon)
    gets EPIPE and drops the bytes.
    """
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    os.set_blocking(fd, True)
    if pipe_bytes is not None:
        grow_pipe(fd, pipe_bytes)
    return fd


def grow_pipe(fd: int, size: int) -> None:
    """Make the pipe hold `size` bytes, if the kernel allows (pipe-max-size, the user's quota)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError as exc:
        log.debug("pipe left at its size: F_SETPIPE_SZ %d: %s", size, exc.strerror)


def mark_removed(directory: Path) -> None:
    """A VMI was removed: its log directory's time is now, whence its retention counts."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(directory)


def sweep(logs: Path, alive: Set[str], retention: float, now: float) -> list[str]:
    """Delete the log directories (`logs/NAMESPACE/NAME`) of VMIs not `alive` (by key) untouched
    for `retention` seconds.

    A directory's time is its newest of its own and its files' (a removal marks it); the
    keys of the directories deleted are returned.
    """
    deleted = []
    for namespace in _directories(logs):
        for entry in _directories(Path(namespace.path)):
            key = f"{namespace.name}/{entry.name}"
            if key not in alive and now - _newest(Path(entry.path)) >= retention:
                shutil.rmtree(entry.path, ignore_errors=True)
                deleted.append(key)
    return sorted(deleted)


def _directories(directory: Path) -> list[os.DirEntry[str]]:
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        return [e for e in entries if e.is_dir(follow_symlinks=False)]
    return []


def _newest(directory: Path) -> float:
    newest = directory.lstat().st_mtime
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest
