"""The `vmid` command: its parser, and the edge where a verb's result or error becomes an exit
code and a message. Each verb lives in a module of its own here; only this package prints.

Global flags (`--root`, `--config`, `-n`) work before or after the subcommand, as kubectl's do.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vmid.__main__ import HELD_SIGNALS
from vmid.api import names
from vmid.cli import (
    agent,
    apply,
    completion,
    console,
    daemon,
    delete,
    describe,
    events,
    get,
    image,
    lifecycle,
    logs,
    render,
    restart,
    screenshot,
    version,
    vm,
    vnc,
)
from vmid.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from vmid.errors import VmidError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one vmid command; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):  # `vmid` alone: what it can do, as kubectl alone
        parser.print_help()
        return EXIT_OK
    try:
        if args.run is not daemon.run:  # only the daemon answers them itself (vmid.__main__)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)  # a Ctrl+C held comes now
        result: int = args.run(args)
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        _silence_stdout()
        return EXIT_ERROR
    except (VmidError, OSError) as exc:
        _report(exc)
        return EXIT_ERROR
    except ExceptionGroup as group:  # from the daemon's nurseries
        expected, bugs = group.split((VmidError, OSError))
        if bugs is not None or expected is None:
            raise
        for leaf in _leaves(expected):
            _report(leaf)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


def _report(exc: BaseException) -> None:
    """Say what failed and why, never a traceback; a file names itself."""
    if not isinstance(exc, OSError):
        print(f"vmid: {exc}", file=sys.stderr)
        return
    where = f"{exc.filename}: " if exc.filename else ""
    hint = "; run as root" if isinstance(exc, PermissionError) else ""
    print(f"vmid: {where}{exc.strerror or exc}{hint}", file=sys.stderr)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _silence_stdout() -> None:
    # What is still buffered would fail again as the interpreter exits, with a message.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    _global_flags(flags, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="vmid", description="Run KubeVirt VirtualMachineInstance manifests on this host."
    )
    _global_flags(parser, default=None)
    parser.add_argument("--version", action="version", version=f"vmid version {version.version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # In this order in `vmid --help`.
    verbs = (
        render,
        daemon,
        apply,
        delete,
        restart,
        get,
        describe,
        events,
        logs,
        lifecycle,
        agent,
        vm,
        console,
        vnc,
        screenshot,
        image,
        version,
        completion,
    )
    for module in verbs:
        module.register(commands, flags)
    return parser


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=default,
        metavar="DIR",
        help="keep every vmid path under DIR instead of / (tests, demos)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="daemon configuration (default: ROOT/etc/vmid/vmid.yaml)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=default,
        metavar="NS",
        help=f"the VMI's namespace (default: {names.DEFAULT_NAMESPACE}), as kubectl's",
    )
