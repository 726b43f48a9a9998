"""Files someone else could swap: read never blocking on a FIFO, written never following a
planted symlink, replaced atomically.

A path is opened once, non-blocking and without following a final symlink; every check (a
regular file, its owner and mode) is made on that fd with fstat, and the data is read from it,
so nothing can be swapped between the check and the read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from vmid.errors import VmidError

#: O_NONBLOCK: opening a FIFO (or a device) returns at once instead of waiting for a writer.
FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class FileRefused(VmidError, OSError):
    """The file is not a regular file (or is a symlink where none is followed): it is not read.

    An OSError too, so every caller that copes with an unreadable file copes with this one.
    """


def open_regular(
    path: str | os.PathLike[str], *, dir_fd: int | None = None, follow: bool = False
) -> tuple[int, os.stat_result]:
    """Open `path` read-only and return the fd with its fstat; only a regular file is accepted.

    Raises:
        FileRefused: a symlink (unless `follow`), a FIFO, a directory, a device or a socket.
        OSError: the file cannot be opened (missing, permission denied...).
    """
    flags = FLAGS & ~os.O_NOFOLLOW if follow else FLAGS
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise FileRefused("a symlink, which vmid does not follow here") from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise FileRefused(f"{kind}, not a regular file")
    return fd, st


def read_fd(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from the start of an open regular file."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.pread(fd, min(limit - size, 1 << 20), size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_regular(path: str | os.PathLike[str], limit: int, *, follow: bool = False) -> bytes:
    """Up to `limit` bytes of a regular file (see `open_regular` for what is refused)."""
    fd, _ = open_regular(path, follow=follow)
    try:
        return read_fd(fd, limit)
    finally:
        os.close(fd)


def replace(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` atomically with `text` (mode 0600): a reader sees the old file or the
    new one, never a part; a failed write leaves the old one.

    Written through a new file of an unguessable name, O_EXCL and O_NOFOLLOW: root never
    writes through a symlink, whoever could plant one.
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    staging = os.path.join(directory, f".{name}.{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with os.fdopen(os.open(staging, flags, 0o600), "w") as stream:
            stream.write(text)
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
