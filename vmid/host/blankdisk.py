"""Empty qcow2 files, as `qemu-img create` makes them, kept by size: each launch makes a new
overlay (and an emptyDisk its first), and writing the bytes qemu-img wrote the first time costs
0.1 ms where running it costs 10-15 ms (it is deterministic: same size, same bytes)."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

#: Sizes kept (least recently used goes), and the largest file kept: an empty qcow2 of 1 GiB is
#: 192 KiB, of 64 TiB 1.2 MiB; a larger one is made by qemu-img each time.
KEPT = 8
MAX_BYTES = 2 << 20


class BlankDisks:
    """The empty qcow2 files of the sizes used lately, as bytes and file mode."""

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[tuple[str, int], tuple[bytes, int]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()  # written from worker threads

    def __repr__(self) -> str:
        return f"<BlankDisks sizes={[size for _, size in self._kept]}>"

    async def make(
        self,
        path: Path,
        size: int,
        binary: str,
        create: Callable[[], Awaitable[object]],
        durable: bool,
    ) -> None:
        """Make `path` (absent) an empty qcow2 of `size` bytes: from the bytes kept for qemu-img
        `binary`, or by `create` (which runs it), keeping what it wrote. `durable`: on the disk
        before this returns, as qemu-img's (a disk kept across runs: a power cut must not leave
        it empty, which QEMU would refuse at every start after)."""
        key = (binary, size)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
        if kept is not None:
            await trio.to_thread.run_sync(_write, path, *kept, durable)
            return
        await create()
        found = await trio.to_thread.run_sync(_read, path)
        if found is not None:
            with self._lock:
                self._kept[key] = found
                while len(self._kept) > KEPT:
                    self._kept.popitem(last=False)


def _write(path: Path, data: bytes, mode: int, durable: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask, as qemu-img's file
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _read(path: Path) -> tuple[bytes, int] | None:
    """What qemu-img wrote, if it is there to keep (else QEMU says what is wrong with it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size > MAX_BYTES:
            return None
        data = os.pread(fd, st.st_size, 0)
        return (data, st.st_mode & 0o777) if len(data) == st.st_size else None
    finally:
        os.close(fd)
