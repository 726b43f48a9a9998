"""`vmid logs`: a VMI's serial console log, its control characters escaped on a terminal;
`-f` follows it across rotations and restarts until the VMI is deleted, as kubectl logs -f;
`--timestamps` and `--since` read when each line arrived (logtimes.py)."""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

from vmid.api import names
from vmid.cli import common, show
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.host import logfile
from vmid.paths import Paths
from vmid.runtime import status

if TYPE_CHECKING:
    from vmid.cli import logtimes

#: How often `-f` looks for more (the log is a file the daemon appends to).
POLL_SECONDS = 0.2
#: `-f` ends once the VMI has had no status this long: deleted (a restart has none for
#: milliseconds, between its two incarnations).
GONE_SECONDS = 2.0
_CHUNK = 65536

EXAMPLES = """examples:
  vmid logs web               # the whole serial console log (rotated files first)
  vmid logs web --tail 20     # its last 20 lines
  vmid logs web -f            # then what comes, across rotations and restarts, until deleted
  vmid logs web --since 5m --timestamps   # the lines of the last 5 minutes, with their times
"""


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    logs = commands.add_parser(
        "logs",
        parents=[flags],
        help="print a VMI's serial console log",
        description="Print VMI NAME's serial console log, its rotated files first. On a "
        "terminal, control characters are shown escaped (\\x1b), as journalctl does, so a "
        "guest cannot drive the terminal; into a pipe the bytes pass unchanged.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    logs.add_argument("name", metavar="NAME", help="the VMI's name (in the namespace -n names)")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="go on printing what the guest writes, across log rotations and restarts, until "
        "the VMI is deleted or Ctrl+C",
    )
    logs.add_argument(
        "--tail", type=_count, metavar="N", help="only the last N lines (then what comes, -f)"
    )
    since = logs.add_mutually_exclusive_group()
    since.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help="only the lines that arrived in the last DURATION (5s, 2m, 3h, 1h30m), as "
        "kubectl's; 0: every line",
    )
    since.add_argument(
        "--since-time",
        type=_time,
        metavar="TIME",
        help="only the lines that arrived at or after TIME (RFC 3339: 2026-01-31T10:00:00Z)",
    )
    logs.add_argument(
        "--timestamps",
        action="store_true",
        help="begin each line with the time it arrived (RFC 3339, ns, UTC), as kubectl's",
    )
    logs.set_defaults(run=_logs)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lines (0 or more)")
    return int(text)


#: Go's duration units (time.ParseDuration, which kubectl's --since takes), in nanoseconds.
_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_UNITS["h"] = 60 * _UNITS["m"]
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _duration(text: str) -> int:
    """A Go duration (`90s`, `5m`, `1h30m`, `1.5h`; `0`) in nanoseconds."""
    parts = _PART.findall(text)
    if text != "0" and (not parts or "".join(n + u for n, u in parts) != text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a number and a unit (ns, us, ms, s, m, h), e.g. 5m, 1h30m"
        )
    return sum(int(float(number) * _UNITS[unit]) for number, unit in parts)


def _time(text: str) -> int:
    """An RFC 3339 time with its offset (`Z`) in nanoseconds since the epoch."""
    import datetime  # here: the other verbs start without it

    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time with its offset, e.g. 2026-01-31T10:00:00Z"
        )
    seconds = moment.replace(microsecond=0).timestamp()
    return int(seconds) * 10**9 + moment.microsecond * 1000


def _logs(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    key = names.key(common.namespace_of(args), args.name)
    log_file = paths.instance_logs(key) / "console.log"
    out = _sink(args, log_file, _Output(sys.stdout.buffer, sys.stdout.isatty()))
    streams = _open_all(log_file)
    if not streams:
        if not paths.logs.is_dir():
            raise status.no_state(paths.logs)
        print(f"vmid: no console log for {args.name!r} ({log_file})", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.tail is not None:
            streams[:] = _tail(streams, args.tail)
        for stream in streams:
            out.begin(stream)
            while data := stream.read(_CHUNK):
                out.write(data)
        if args.follow:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how -f ends: done
                status_file = paths.instance_runtime(key) / status.STATUS_FILE
                _follow(log_file, status_file, streams.pop(), out)
    finally:
        for stream in streams:
            stream.close()
    out.finish()
    return EXIT_OK


def _sink(args: argparse.Namespace, log_file: Path, out: _Output) -> _Sink:
    """Where the log goes: `out`, through a filter if lines are stamped or left out by time."""
    since = args.since_time
    if args.since:  # 0: every line, as kubectl's --since=0
        since = time.time_ns() - args.since
    if since is None and not args.timestamps:
        return out
    from vmid.cli import logtimes  # here: reading the time index is for these flags only

    return logtimes.Stamped(out, log_file, since, args.timestamps)


def _open_all(log_file: Path) -> list[BinaryIO]:
    """The log's files, oldest first, opened at one moment (none rotated meanwhile)."""
    while True:
        streams: list[BinaryIO] = []
        for path, identity in _snapshot(log_file):
            try:
                streams.append(path.open("rb"))
            except FileNotFoundError:
                break
            if _identity_of(streams[-1]) != identity:
                break
        else:
            return streams
        for stream in streams:
            stream.close()


def _identity_of(stream: BinaryIO) -> tuple[int, int]:
    st = os.fstat(stream.fileno())
    return st.st_dev, st.st_ino


def _tail(streams: list[BinaryIO], count: int) -> list[BinaryIO]:
    """The log's files from where its last `count` lines begin, the first one there (the files
    before it closed); the log is bounded: a few MiB."""
    starts: collections.deque[tuple[int, int]] = collections.deque(maxlen=count)
    in_line = False  # whether a line has begun and not yet ended
    for number, stream in enumerate(streams):
        offset = 0
        while chunk := stream.read(_CHUNK):
            start = 0
            while start < len(chunk):
                if not in_line:
                    starts.append((number, offset + start))
                end = chunk.find(b"\n", start)
                in_line = end < 0
                start = len(chunk) if end < 0 else end + 1
            offset += len(chunk)
    number, offset = starts[0] if starts else (len(streams) - 1, streams[-1].tell())
    for stream in streams[:number]:
        stream.close()
    for stream in streams[number + 1 :]:
        stream.seek(0)
    streams[number].seek(offset)
    return streams[number:]


def _follow(log_file: Path, status_file: Path, stream: BinaryIO | None, out: _Sink) -> None:
    """Print what is appended to `log_file` after `stream` (its newest file, read to its end);
    once rotated, the rest of the old file, then each newer one in turn (nothing lost however
    often it rotated meanwhile; a restarted VMI appends to the same log). Ends when the VMI is
    gone (deleted)."""
    missing_since: float | None = None
    try:
        while True:
            data = stream.read(_CHUNK) if stream else b""
            if data:
                out.write(data)
                continue
            out.flush()
            newer = _next(log_file, stream, out)
            if newer is not None:
                if stream:
                    stream.close()
                stream = newer
                out.begin(stream)
                continue
            now = time.monotonic()
            missing_since = None if status_file.exists() else (missing_since or now)
            if missing_since is not None and now - missing_since > GONE_SECONDS:
                return
            time.sleep(POLL_SECONDS)
    finally:
        if stream:
            stream.close()


def _next(log_file: Path, stream: BinaryIO | None, out: _Sink) -> BinaryIO | None:
    """The file to read after `stream` (read to its end): the oldest file of the log newer
    than it, or None while `stream` is the current one (rewound if it was cut short)."""
    if stream is None:  # there was no log yet
        with contextlib.suppress(FileNotFoundError):
            return log_file.open("rb")
        return None
    mine = os.fstat(stream.fileno())
    while True:
        files = _snapshot(log_file)
        identities = [identity for _, identity in files]
        if identities and identities[-1] == (mine.st_dev, mine.st_ino):
            if mine.st_size < stream.tell():
                stream.seek(0)
                out.begin(stream)
            return None
        # Not there: rotated past the backups kept, so every file there is newer.
        found = (mine.st_dev, mine.st_ino) in identities
        after = files[identities.index((mine.st_dev, mine.st_ino)) + 1 :] if found else files
        if not after:
            return None  # rotated, the new file not made yet
        path, (device, inode) = after[0]
        with contextlib.suppress(FileNotFoundError):
            newer = path.open("rb")
            st = os.fstat(newer.fileno())
            if (st.st_dev, st.st_ino) == (device, inode):
                return newer
            newer.close()  # rotated again meanwhile: look again


def _snapshot(log_file: Path) -> list[tuple[Path, tuple[int, int]]]:
    """The log's files, oldest first, with their identities, as they were at one moment: read
    until two readings agree (the daemon rotates in microseconds, a few times a second)."""
    last: list[tuple[Path, tuple[int, int]]] | None = None
    while True:
        now = []
        for path in logfile.oldest_first(log_file):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                now.append((path, (st.st_dev, st.st_ino)))
        if now == last:
            return now
        last = now


class _Output:
    """Where the log goes: unchanged into a pipe; on a terminal with control characters shown
    as `\\x1b`, as journalctl does, so an escape sequence in it cannot drive the terminal."""

    def __init__(self, target: BinaryIO, escape: bool) -> None:
        self._target = target
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._escape = escape
        #: A carriage return that ended the last write: a line's end if a newline follows.
        self._held = ""

    def __repr__(self) -> str:
        return f"<_Output escape={self._escape}>"

    def begin(self, stream: BinaryIO) -> None:
        """What follows is `stream`'s: nothing to do here (logtimes.Stamped looks up times)."""

    def write(self, data: bytes) -> None:
        if not self._escape:
            self._target.write(data)
            return
        self._shown(self._decoder.decode(data))

    def _shown(self, text: str, final: bool = False) -> None:
        text = self._held + text
        self._held = "\r" if text.endswith("\r") and not final else ""
        text = text.removesuffix(self._held)
        self._target.write(show.UNSAFE.sub(show.escape_char, text).encode())

    def flush(self) -> None:
        self._target.flush()

    def finish(self) -> None:
        """Print what is held back (an incomplete character, a last carriage return)."""
        if self._escape:
            self._shown(self._decoder.decode(b"", final=True), final=True)
        self._target.flush()


_Sink: TypeAlias = "_Output | logtimes.Stamped"
