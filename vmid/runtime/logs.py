"""vmid's log pipes: a task per pipe drains what QEMU or dnsmasq writes into a bounded file.

Each pipe has its own task and the file writes run in worker threads of their own, so a VM
flooding its console, or a slow disk, never holds up the event loop or another VM. A VM's pipes
are FIFOs (host/logfile.py) that outlive the daemon: the next one reopens them on re-adoption.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Set
from pathlib import Path

import trio

from vmid.config import Logs
from vmid.host import logfile
from vmid.plan.model import Access, LaunchPlan

log = logging.getLogger(__name__)

#: Read at most this much per wake-up, then pause: a chatty guest's bytes come in batches, and
#: one log costs vmid at most READ_BYTES / BATCH_SECONDS (20 MiB/s, ~60 times what a serial
#: port can print); a QEMU writing faster waits on its full pipe.
READ_BYTES = 1 << 20
BATCH_SECONDS = 0.05
#: The last bytes of a log kept in memory: QEMU's last words when it refuses to start.
TAIL_BYTES = 4096
#: Once its QEMU is gone, a VM's pipes get this long to be read to their end.
DRAIN_TIMEOUT = 5.0
#: Concurrent file writes; the default thread limiter stays free for everything else.
WRITER_THREADS = 4
#: QEMU's stderr: a FIFO too, so that QEMU's messages after a re-adoption still reach qemu.log.
QEMU_FIFO = "qemu.log.pipe"
#: How often removed VMIs' log directories are looked at, at most and at least.
SWEEP_MIN_SECONDS = 1.0
SWEEP_MAX_SECONDS = 600.0

_writers: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("vmid_log_writers")


def _limiter() -> trio.CapacityLimiter:
    try:
        return _writers.get()
    except LookupError:
        _writers.set(trio.CapacityLimiter(WRITER_THREADS))
        return _writers.get()


class LogPipe:
    """A pipe's read end drained into a RotatingFile until every writer has closed it;
    `watch`, if given, is called with each line (in the event loop's thread)."""

    def __init__(
        self, fd: int, file: logfile.RotatingFile, watch: Callable[[str], None] | None = None
    ) -> None:
        self._fd = fd
        self._file = file
        self._watch = watch
        #: The start of a line not yet ended (bounded: a longer one is cut there).
        self._partial = b""
        self._tail = b""
        self._failing = False
        #: Shielded: a VM being stopped still has its last words logged; see `VmLogs.end`.
        self.scope = trio.CancelScope(shield=True)
        self.closed = trio.Event()

    def __repr__(self) -> str:
        return f"<LogPipe fd={self._fd} {self._file!r}>"

    def stop(self, after: float) -> None:
        """Stop draining `after` seconds from now (the writers should be gone by then)."""
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + after)

    async def said(self) -> str:
        """The last line written, once every writer is gone (or a moment has passed)."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            await self.closed.wait()
        return self.last_line()

    def last_line(self) -> str:
        lines = self._tail.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    async def drain(self) -> None:
        """Copy the pipe into the file until its end (or until `scope` is cancelled)."""
        with self.scope:
            try:
                while True:
                    data, end = self._read()
                    if data:
                        when = time.time_ns()  # when it arrived: its lines' time (vmid logs)
                        await trio.to_thread.run_sync(self._write, data, when, limiter=_limiter())
                        self._lines(data)
                    if end:
                        return
                    if data:
                        await trio.sleep(BATCH_SECONDS)
                    else:
                        await trio.lowlevel.wait_readable(self._fd)
            finally:
                trio.lowlevel.notify_closing(self._fd)
                os.close(self._fd)
                self._file.close()
                self.closed.set()

    def _lines(self, data: bytes) -> None:
        if self._watch is None:
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        self._partial = self._partial[:TAIL_BYTES]
        for line in lines:
            self._watch(line.decode(errors="replace"))

    def _read(self) -> tuple[bytes, bool]:
        """What the pipe holds now (up to READ_BYTES), and whether its writers are all gone."""
        chunks: list[bytes] = []
        size = 0
        while size < READ_BYTES:
            try:
                chunk = os.read(self._fd, READ_BYTES - size)
            except BlockingIOError:
                return b"".join(chunks), False
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), False

    def _write(self, data: bytes, when: int) -> None:
        self._tail = (self._tail + data)[-TAIL_BYTES:]
        try:
            self._file.write(data, when)
        except OSError as exc:  # a full disk: the bytes are dropped, the pipe still drained
            if not self._failing:
                log.error("%s: log bytes dropped: %s", self._file.path, exc)
            self._failing = True
            return
        if self._failing:
            log.info("%s: logging again", self._file.path)
        self._failing = False


def open_pipe(
    path: Path, limits: Logs, watch: Callable[[str], None] | None = None
) -> tuple[LogPipe, int]:
    """An anonymous pipe into the bounded file `path`: (its drain, the write end to pass on);
    `watch` sees each line.

    Raises OSError: `path` cannot be opened (nothing is left open then).
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        os.set_blocking(read_end, False)
        return LogPipe(read_end, _rotating(path, limits), watch), write_end
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise


def _rotating(path: Path, limits: Logs, timed: bool = False) -> logfile.RotatingFile:
    return logfile.RotatingFile(path, limits.maxSize.value(), limits.maxBackups, timed)


class VmLogs:
    """One VM's log pipes: QEMU's stderr into qemu.log, its serial console into console.log."""

    def __init__(self, plan: LaunchPlan, limits: Logs) -> None:
        self._plan = plan
        self._limits = limits
        self._fifos = Path(plan.sockets.control).parent  # root's: QEMU's user cannot swap them
        self._qemu: LogPipe | None = None
        self._pipes: list[LogPipe] = []

    def __repr__(self) -> str:
        return f"<VmLogs {self._plan.name} pipes={self._pipes!r}>"

    def _wanted(self) -> list[tuple[str, str, int | None, int | None]]:
        """(FIFO name, log file, pipe size, fdset) of each log: QEMU's stderr (no fdset), and
        each log its argv names (its serial console's)."""
        wanted: list[tuple[str, str, int | None, int | None]] = [
            (QEMU_FIFO, self._plan.qemuLog, None, None)
        ]
        for file in self._plan.files:
            if file.access is Access.LOG:
                fifo = f"{Path(file.path).name}.pipe"
                wanted.append((fifo, file.path, logfile.CONSOLE_PIPE_BYTES, file.fdset))
        return wanted

    def open(self, nursery: trio.Nursery) -> tuple[int, dict[int, int]]:
        """New FIFOs, drained in `nursery`: the write ends for QEMU, its stderr's and one per
        fdset; close them once QEMU has them.

        Raises OSError: a log file cannot be opened (a symlink planted in its place).
        """
        writers: dict[int | None, int] = {}
        try:
            for fifo, path, size, fdset in self._wanted():
                reader = logfile.open_fifo(self._fifos / fifo, create=True)
                self._start(nursery, reader, path)
                writers[fdset] = logfile.open_fifo_writer(self._fifos / fifo, size)
        except BaseException:
            for fd in writers.values():
                os.close(fd)
            self.end(detached=True)
            raise
        stderr = writers.pop(None)
        return stderr, {fdset: fd for fdset, fd in writers.items() if fdset is not None}

    def reopen(self, nursery: trio.Nursery) -> None:
        """Drain the FIFOs a QEMU left running by an earlier daemon still writes to."""
        for fifo, path, _, _ in self._wanted():
            try:
                reader = logfile.open_fifo(self._fifos / fifo, create=False)
                self._start(nursery, reader, path)
            except FileNotFoundError:
                log.info("%s: %s has no pipe (an older vmid started it)", self._plan.name, path)
            except OSError as exc:  # the VM runs on, unlogged, rather than be stopped for it
                log.error("%s: %s cannot be reopened: %s", self._plan.name, path, exc)

    def _start(self, nursery: trio.Nursery, reader: int, path: str) -> None:
        try:
            # A console's lines get their times (vmid logs --timestamps); QEMU's stderr not.
            timed = path != self._plan.qemuLog
            pipe = LogPipe(reader, _rotating(Path(path), self._limits, timed))
        except BaseException:
            os.close(reader)
            raise
        if path == self._plan.qemuLog:
            self._qemu = pipe
        self._pipes.append(pipe)
        nursery.start_soon(pipe.drain)

    async def qemu_said(self) -> str:
        """QEMU's last line on stderr, once it has closed it (or a moment has passed)."""
        return "" if self._qemu is None else await self._qemu.said()

    def end(self, detached: bool) -> None:
        """QEMU is gone: its pipes get a moment to be read to their end. `detached`: QEMU runs
        on without vmid; its pipes are left at once (the next daemon reopens them)."""
        for pipe in self._pipes:
            pipe.stop(0 if detached else DRAIN_TIMEOUT)


async def tidy(
    logs: Path, limits: Callable[[], Logs], alive: Callable[[], Set[str] | None]
) -> None:
    """Forever: delete the log directories of removed VMIs once `limits().keepAfterRemovalSeconds`
    have passed. `alive()`: the VMIs that exist, or None while that is not yet known."""
    while True:
        retention = limits().keepAfterRemovalSeconds
        names = alive()
        if names is None:
            await trio.sleep(SWEEP_MIN_SECONDS)
            continue
        # In the event loop's thread, between two awaits: no VMI of a name being deleted
        # can start meanwhile.
        for name in logfile.sweep(logs, names, retention, time.time()):
            log.info("%s: logs deleted (removed over %d s ago)", name, retention)
        await trio.sleep(min(max(retention / 2, SWEEP_MIN_SECONDS), SWEEP_MAX_SECONDS))
