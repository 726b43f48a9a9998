"""Files someone else could swap: read without blocking on a FIFO or following a planted
symlink, and written atomically without writing through one.

A path is opened once, non-blocking and without following a final symlink; every check (a
regular file, its owner and mode) is made on that fd with fstat, and the data is read from it,
so nothing can be swapped between the check and the read. Every file vmid replaces goes through
`write_atomically`: a new file of an unguessable name beside it, then a rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from vmid.errors import FileRefused

#: O_NONBLOCK: opening a FIFO (or a device) returns at once instead of waiting for a writer.
FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


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


def write_atomically(
    path: Path,
    content: bytes | Callable[[BinaryIO], None],
    *,
    mode: int = 0o600,
    durable: bool = False,
) -> None:
    """Replace `path` with `content` (bytes, or a function writing them): a reader sees the old
    file or the new one, never half of one.

    The new file is made beside it under an unguessable name, O_EXCL and O_NOFOLLOW (root never
    writes through a symlink, whoever could plant one), with exactly `mode` whatever the umask.
    `durable`: the file, then its directory, reach the disk before this returns, so after a
    crash the new file is there whole (or the old one, if the rename had not happened).

    Raises:
        OSError: it cannot be written (nothing is left behind but the old file).
    """
    staging = path.with_name(f".{path.name}.{os.urandom(8).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with os.fdopen(os.open(staging, flags, mode), "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            if isinstance(content, bytes):
                stream.write(content)
            else:
                content(stream)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)


def sync_files(directory: Path, names: Iterable[str]) -> None:
    """Make the files `names` of `directory` that exist, and their names in it (and its own
    name in its parent), reach the disk: files written without `durable`, synced together."""
    for name in names:
        try:
            fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if not directory.is_dir():
        return  # no record was written: a VM's VMI, or one with its own UUID as root's
    for each in (directory, directory.parent):
        fsync_directory(each)


def remove_tree(path: Path) -> None:
    """Remove `path` and all beneath it, never following a symlink, however deep it nests.

    shutil.rmtree recurses once per level: a tree a guest's QEMU nests 1,000 deep in its
    working directory raised RecursionError (no OSError: ignore_errors does not stop it), out of
    a VMI's removal. Here each directory found below the top's own is first moved up beside
    them, so none is ever more than one level down. What cannot be removed stays, as with
    rmtree(ignore_errors=True): the caller checks what is left.
    """
    try:
        top = os.open(path, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        return
    except OSError:  # not a directory (a symlink, a file): removed as itself
        with contextlib.suppress(OSError):
            path.unlink()
        return
    try:
        pending: list[str | None] = [None]  # None: the top itself
        while pending:
            name = pending.pop()
            _empty_level(top, name, pending)
            if name is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
    with contextlib.suppress(OSError):
        path.rmdir()


def _empty_level(top: int, name: str | None, pending: list[str | None]) -> None:
    """Unlink the files of directory `name` in `top` (None: `top`); its directories join
    `pending`, moved up into `top` first when they are deeper."""
    try:
        fd = top if name is None else os.open(name, _DIRECTORY_FLAGS, dir_fd=top)
    except OSError:
        return
    try:
        for entry in list(os.scandir(fd)):
            with contextlib.suppress(OSError):
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=fd)
                elif name is None:
                    pending.append(entry.name)
                else:
                    moved = f".removing-{os.urandom(8).hex()}"
                    os.rename(entry.name, moved, src_dir_fd=fd, dst_dir_fd=top)
                    pending.append(moved)
    finally:
        if fd != top:
            os.close(fd)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_directory(directory: Path) -> None:
    """Make the names in `directory` durable (a new file's, a rename's)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
