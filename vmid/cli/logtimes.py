"""`vmid logs --timestamps` and `--since`: when each line of a console log arrived, read from
the time index the daemon writes beside each log file (vmid/host/logfile.py)."""

from __future__ import annotations

import bisect
import datetime
import os
from pathlib import Path
from typing import BinaryIO, Protocol

from vmid.host import logfile


class Sink(Protocol):
    """Where the log's bytes go (logs.py's terminal-safe output)."""

    def write(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def finish(self) -> None: ...


class Times:
    """When the bytes of one log file arrived: its index (the one naming the file's inode,
    wherever rotation has moved it), read as far as asked; a file without one (written by an
    older vmid) is as old as its last change."""

    def __init__(self, log_file: Path, stream: BinaryIO) -> None:
        self._stream = stream
        self._header = logfile.TIMES_HEADER.pack(logfile.TIMES_MAGIC, _inode(stream))
        self._index = self._find(logfile.times_path(log_file))
        self._offsets: list[int] = []
        self._times: list[int] = []
        self._rest = b""

    def __repr__(self) -> str:
        return f"<Times {self._index} records={len(self._offsets)}>"

    def _find(self, index: Path) -> BinaryIO | None:
        for path in logfile.oldest_first(index):
            try:
                found = path.open("rb")
            except FileNotFoundError:
                continue
            if found.read(len(self._header)) == self._header:
                return found
            found.close()
        return None

    def at(self, offset: int) -> int:
        """The time (ns since the epoch) the byte at `offset` arrived."""
        if self._index is not None and (not self._offsets or self._offsets[-1] < offset):
            self._read()  # the daemon writes a batch's record before its bytes
        found = bisect.bisect_right(self._offsets, offset) - 1
        if found < 0:
            return os.fstat(self._stream.fileno()).st_mtime_ns
        return self._times[found]

    def _read(self) -> None:
        assert self._index is not None
        data = self._rest + self._index.read()
        size = logfile.TIMES_RECORD.size
        whole = len(data) - len(data) % size
        for offset, when in logfile.TIMES_RECORD.iter_unpack(data[:whole]):
            self._offsets.append(offset)
            self._times.append(when)
        self._rest = data[whole:]

    def close(self) -> None:
        if self._index is not None:
            self._index.close()


def _inode(stream: BinaryIO) -> int:
    return os.fstat(stream.fileno()).st_ino


class Stamped:
    """Between the log's bytes and `out`: each line prefixed with the time it began to arrive
    (`stamps`, as kubectl logs --timestamps), the lines that began before `since` (ns since the
    epoch) left out. A line may go on in the next file: it keeps its first byte's time."""

    def __init__(self, out: Sink, log_file: Path, since: int | None, stamps: bool) -> None:
        self._out = out
        self._log_file = log_file
        self._since = since
        self._stamps = stamps
        self._times: Times | None = None
        self._offset = 0
        self._line_start = True
        self._shown = True
        self._second, self._date = -1, b""
        self._last, self._prefix = -1, b""

    def __repr__(self) -> str:
        return f"<Stamped since={self._since} stamps={self._stamps}>"

    def begin(self, stream: BinaryIO) -> None:
        """What follows comes from `stream`, from where it is now."""
        if self._times is not None:
            self._times.close()
        self._times = Times(self._log_file, stream)
        self._offset = stream.tell()

    def write(self, data: bytes) -> None:
        assert self._times is not None
        start = 0
        while start < len(data):
            if self._line_start:
                when = self._times.at(self._offset + start)
                self._shown = self._since is None or when >= self._since
                if self._shown and self._stamps:
                    self._out.write(self._stamp(when))
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end + 1
            if self._shown:
                self._out.write(data[start:stop])
            self._line_start = end >= 0
            start = stop
        self._offset += len(data)

    def _stamp(self, when: int) -> bytes:
        """`when` as the prefix of a line; the last one and the date and time of the last second
        kept (lines come many a second: formatting a date each time costs more than the rest)."""
        if when == self._last:  # the lines of one batch
            return self._prefix
        seconds, nanoseconds = divmod(when, 1_000_000_000)
        if seconds != self._second:
            self._second, self._date = seconds, _date(seconds)
        self._last, self._prefix = when, b"%s.%09dZ " % (self._date, nanoseconds)
        return self._prefix

    def flush(self) -> None:
        self._out.flush()

    def finish(self) -> None:
        if self._times is not None:
            self._times.close()
        self._out.finish()


def _date(seconds: int) -> bytes:
    """The date and time of a stamp, as kubelet's (RFC 3339 with 9 digits, UTC: this, then
    `.NNNNNNNNNZ`)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}".encode()
