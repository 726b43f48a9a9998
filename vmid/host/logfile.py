"""Bounded log files, as libvirt's virtlogd keeps them: rotated at a size, a few old ones kept.

vmid owns every log file a guest can make grow (root's, 0600); QEMU and dnsmasq only ever get
the write end of a pipe. A VM's pipes are named FIFOs in its root-owned runtime directory, so
the next daemon reopens them when it re-adopts a QEMU an earlier one left running.

A console log also records when its lines arrived (for `vmid logs --timestamps` and `--since`):
beside each file, `FILE.times` (`console.log.1` has `console.log.times.1`) holds records
(offset, time) in the order written, one per batch of bytes that starts a line (a batch: what
vmid drained at once, at most 20 a second). The index names the inode of its file, is rotated
with it, and is bounded: once it reaches a quarter of `max_bytes`, the file is rotated early.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import struct
import time
from collections.abc import Set
from pathlib import Path

log = logging.getLogger(__name__)

#: QEMU blocks when the pipe to its console log is full: room for ~3 s of a flooding serial port.
CONSOLE_PIPE_BYTES = 1 << 20

#: A time index starts with this magic and the inode of its log file, then holds records:
#: (offset in the log file, time in ns since the epoch) of the bytes written from there on.
TIMES_HEADER = struct.Struct("<8sQ")
TIMES_RECORD = struct.Struct("<Qq")
TIMES_MAGIC = b"vmidtim1"
#: An index is bounded by its log's size, but never so small that a file holds only a few lines.
TIMES_FRACTION = 4
TIMES_MIN_RECORDS = 32


class RotatingFile:
    """Appends to `path`; at `max_bytes` the file becomes `path.1` (`path.1` becomes `path.2`,
    and so on) and a new one starts; `backups` old files are kept, older ones deleted.

    Every file stays at most `max_bytes` long: a write is split at the limit, as virtlogd does.
    `timed`: each file has a time index beside it (see the module's docstring).
    """

    def __init__(self, path: Path, max_bytes: int, backups: int, timed: bool = False) -> None:
        """Raises OSError: `path` is a symlink or not a regular file, or cannot be opened."""
        self.path = path
        self._max = max_bytes
        self._backups = backups
        self._fd: int | None = None
        self._size = 0
        limit = max(max_bytes // TIMES_FRACTION, TIMES_RECORD.size * TIMES_MIN_RECORDS)
        self._times = _TimeIndex(times_path(path), limit) if timed else None
        self._open()

    def __repr__(self) -> str:
        return f"<RotatingFile {self.path} size={self._size}>"

    def write(self, data: bytes, when: int | None = None) -> None:
        """Append all of `data` (which arrived at `when`, ns since the epoch: now if None),
        rotating as often as needed. Raises OSError (a full disk)."""
        when = time.time_ns() if when is None else when
        view = memoryview(data)
        done = 0
        while done < len(data):
            if self._full() or self._fd is None:
                self._rotate()
            assert self._fd is not None
            end = min(len(data), done + self._max - self._size)
            if self._times is not None:  # first: a reader seeing the bytes finds their time
                self._times.note(self._size, data, done, end, when)
            written = os.write(self._fd, view[done:end])
            done += written
            self._size += written
            if self._times is not None:
                self._times.wrote(data[done - 1])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._times is not None:
            self._times.close()

    def _full(self) -> bool:
        return self._size >= self._max or (self._times is not None and self._times.full)

    def _rotate(self) -> None:
        self.close()
        if self._full():
            if self._times is not None:  # first: the log is missing no longer than before
                _shift(self._times.path, self._backups)
                self._times.size = 0
            _shift(self.path, self._backups)
            self._size = 0  # rotated: a failed open below must not rotate again
        self._open()

    def _open(self) -> None:
        self._fd = _open(self.path)
        self._size = os.fstat(self._fd).st_size
        if self._times is not None:
            try:
                self._times.open(os.fstat(self._fd))
            except BaseException:
                self.close()
                raise


def _shift(path: Path, backups: int) -> None:
    """Rotate `path`: `path.N` becomes `path.N+1` (deleted past `backups`), `path` `path.1`."""
    for number, old in sorted(_numbered(path), reverse=True):
        if number >= backups:
            old.unlink()
        else:
            os.rename(old, f"{path}.{number + 1}")
    with contextlib.suppress(FileNotFoundError):
        if backups:
            os.rename(path, f"{path}.1")
        else:
            path.unlink()


def times_path(path: Path) -> Path:
    """The time index of log `path` (its rotated ones: `oldest_first` of this path)."""
    return path.with_name(f"{path.name}.times")


class _TimeIndex:
    """The time index of a RotatingFile's current file: a record wherever a batch of bytes
    starts a line (and at the first batch after each opening, wherever it starts)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self._limit = limit
        self._fd: int | None = None
        self.size = 0
        #: The next write gets a record where it starts, line or not (a new file, a new daemon).
        self._fresh = True
        self._line_start = False

    def __repr__(self) -> str:
        return f"<_TimeIndex {self.path} size={self.size}>"

    @property
    def full(self) -> bool:
        """Whether one more record would take it past its limit."""
        return self.size + TIMES_RECORD.size > self._limit

    def open(self, log: os.stat_result) -> None:
        """Open (or start afresh) the index of the log file `log`; one naming another file
        (left by a crash between two renames) is emptied."""
        self._fd = _open(self.path, os.O_RDWR)
        header = TIMES_HEADER.pack(TIMES_MAGIC, log.st_ino)
        if os.pread(self._fd, TIMES_HEADER.size, 0) != header:
            os.ftruncate(self._fd, 0)
            # Bytes written before there was an index (an older vmid): at most as old as this.
            old = TIMES_RECORD.pack(0, log.st_mtime_ns) if log.st_size else b""
            os.write(self._fd, header + old)
        self.size = os.fstat(self._fd).st_size
        self._fresh = True

    def note(self, offset: int, data: bytes, start: int, end: int, when: int) -> None:
        """Record `when` for the first line that `data[start:end]`, about to be written at
        `offset`, starts (if any)."""
        assert self._fd is not None
        begins: int | None = start
        if not (self._fresh or self._line_start):
            newline = data.find(b"\n", start, end - 1)
            begins = None if newline < 0 else newline + 1
        if begins is not None:
            self.size += os.write(self._fd, TIMES_RECORD.pack(offset + begins - start, when))
        self._fresh = False

    def wrote(self, last: int) -> None:
        """The last byte written was `last`."""
        self._line_start = last == ord("\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open(path: Path, access: int = os.O_WRONLY) -> int:
    # O_NOFOLLOW, O_NONBLOCK and a check of the fd: a symlink or a FIFO planted in a log
    # directory must neither make root append elsewhere nor block the daemon.
    flags = access | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
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
