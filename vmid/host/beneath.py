"""Opening the files QEMU gets by fd: beneath their root, never through a symlink.

A manifest names hostDisk paths and claims; a directory beneath hostDiskRoots or volumesDir
may be writable by others, who could plant a symlink to /etc there. So each path is walked one
component at a time from its root with O_NOFOLLOW on directory fds: a symlink anywhere is
refused (except the documented claim case: a root-owned symlink to a block device).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Iterable

from vmid.errors import DiskFileError
from vmid.plan.model import Access, PassedFile

_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FLAGS = {
    Access.READ: os.O_RDONLY,
    Access.WRITE: os.O_RDWR,
}
DIRECTORY_MODE = 0o755
FILE_MODE = 0o600
#: A hostDisk vmid creates is root's: QEMU gets it by fd, and a per-VMI uid is released with
#: its VMI while the disk stays (a later VMI given that uid must not own it).
CREATED_MODE = 0o600


def open_file(file: PassedFile) -> int:
    """An fd on `file` for QEMU to inherit, opened as its access says.

    Raises:
        DiskFileError: a symlink on the way, or not a regular file or block device.
        OSError: the file cannot be opened (missing, permissions).
    """
    flags = _FLAGS[file.access]
    if file.root is None:  # vmid.yaml's own paths (firmware): the admin's, symlinks and all
        return _checked(
            os.open(file.path, flags | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE), file.path
        )
    return open_beneath(file.root, file.path, flags, block_device_link=file.blockDeviceLink)


def open_files(files: Iterable[PassedFile]) -> dict[int, int]:
    """An fd per fdset for every file but logs (pipes); all closed again if one cannot be opened.

    Raises:
        DiskFileError: naming the file and why.
    """
    fds: dict[int, int] = {}
    try:
        for file in files:
            if file.access is Access.LOG:
                continue  # a pipe vmid's logs make (runtime/logs.py), not a file
            try:
                fds[file.fdset] = open_file(file)
            except DiskFileError:
                raise
            except OSError as exc:
                raise DiskFileError(f"cannot open {file.path}: {exc.strerror}") from exc
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def open_beneath(root: str, path: str, flags: int, *, block_device_link: bool = False) -> int:
    """Open `path` (absolute, beneath `root`) without following any symlink below `root`."""
    directory, name = _parent(root, path, make_dirs=False)
    try:
        return _last(directory, name, flags, path, block_device_link)
    finally:
        os.close(directory)


def create_beneath(root: str, path: str, size: int) -> bool:
    """Create `path` sparse with `size` bytes, making missing directories.

    Never through a symlink, never over an existing file (False then), and never leaving a
    partial file behind.
    """
    directory, name = _parent(root, path, make_dirs=True)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, CREATED_MODE, dir_fd=directory)
        except FileExistsError:
            return False
        try:
            os.ftruncate(fd, size)  # sparse, like KubeVirt's createSparseRaw
        except BaseException:
            os.unlink(name, dir_fd=directory)
            raise
        finally:
            os.close(fd)
        return True
    finally:
        os.close(directory)


def _parent(root: str, path: str, make_dirs: bool) -> tuple[int, str]:
    """An fd on `path`'s directory, reached from `root` without symlinks, and its last name."""
    parts = _components(root, path)
    directory = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # the admin's root
    try:
        for index, part in enumerate(parts[:-1]):
            shown = posixpath.join(root, *parts[: index + 1])
            step = _step(directory, part, shown, path, make_dirs)
            os.close(directory)
            directory = step
    except BaseException:
        os.close(directory)
        raise
    return directory, parts[-1]


def _components(root: str, path: str) -> list[str]:
    relative = posixpath.relpath(path, root)
    parts = relative.split("/")
    if not path.startswith(posixpath.join(root, "")) or any(p in ("", ".", "..") for p in parts):
        raise DiskFileError(f"{path} is not a plain path beneath {root}")
    return parts


def _step(directory: int, part: str, shown: str, path: str, make_dirs: bool) -> int:
    try:
        return os.open(part, _DIRECTORY, dir_fd=directory)
    except FileNotFoundError:
        if not make_dirs:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        _refuse_link(directory, part, shown, path)
        raise DiskFileError(f"{path}: {shown} is not a directory") from None
    with contextlib.suppress(FileExistsError):
        os.mkdir(part, DIRECTORY_MODE, dir_fd=directory)
    return _step(directory, part, shown, path, False)


def _last(directory: int, name: str, flags: int, path: str, block_device_link: bool) -> int:
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block vmid
    try:
        return _checked(os.open(name, flags, FILE_MODE, dir_fd=directory), path)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    # The link is pinned by an O_PATH fd: what is checked (root's) is what is followed, even if
    # someone swaps the name meanwhile; its target is read from that very link.
    link = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    try:
        if not (block_device_link and os.fstat(link).st_uid == 0):
            _refuse_link(directory, name, path, path)
        target = os.readlink("", dir_fd=link)
    finally:
        os.close(link)
    fd = os.open(target, flags & ~os.O_NOFOLLOW & ~os.O_CREAT, dir_fd=directory)
    if not stat.S_ISBLK(os.fstat(fd).st_mode):
        os.close(fd)
        raise DiskFileError(
            f"{path} is a symbolic link to {target}, which is not a block device: a claim may "
            "only be a root-owned symlink to a block device"
        )
    return _checked(fd, path)


def _refuse_link(directory: int, name: str, shown: str, path: str) -> None:
    try:
        target = os.readlink(name, dir_fd=directory)
    except OSError:
        return
    raise DiskFileError(
        f"{path}: {shown} is a symbolic link (to {target}); vmid follows no symlink beneath "
        "hostDiskRoots or volumesDir: name the real file"
    )


def _checked(fd: int, path: str) -> int:
    """`fd` if it is a regular file or block device, blocking again; closed and refused if not."""
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise DiskFileError(f"{path} is neither a regular file nor a block device")
    os.set_blocking(fd, True)
    return fd
