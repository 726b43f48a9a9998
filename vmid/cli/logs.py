"""`vmid logs`: a VMI's serial console log, its control characters escaped on a terminal."""

from __future__ import annotations

import argparse
import codecs
import shutil
import sys
from pathlib import Path
from typing import BinaryIO

from vmid.api import names
from vmid.cli import common, show
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.host import logfile
from vmid.paths import Paths
from vmid.runtime import status


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    logs = commands.add_parser("logs", parents=[flags], help="print a VMI's serial console log")
    logs.add_argument("name", metavar="NAME")
    logs.set_defaults(run=_logs)


def _logs(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    log_file = paths.instance_logs(names.key(common.namespace_of(args), args.name)) / "console.log"
    try:
        for path in logfile.oldest_first(log_file):  # the rotated files, then the current one
            with path.open("rb") as stream:
                if sys.stdout.isatty():
                    _copy_escaped(stream, sys.stdout.buffer)
                else:
                    shutil.copyfileobj(stream, sys.stdout.buffer)
    except FileNotFoundError:
        if not paths.logs.is_dir():
            raise status.no_state(paths.logs) from None
        print(f"vmid: no console log for {args.name!r} ({log_file})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


_CHUNK = 65536


def _copy_escaped(source: BinaryIO, target: BinaryIO) -> None:
    """Copy a guest's console output with control characters shown as `\x1b`, as journalctl
    does, so an escape sequence in it cannot drive the terminal."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    while chunk := source.readline(_CHUNK):
        text = decoder.decode(chunk)
        target.write(show.UNSAFE.sub(show.escape_char, text).encode())
    target.write(show.UNSAFE.sub(show.escape_char, decoder.decode(b"", final=True)).encode())
