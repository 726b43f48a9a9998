"""The `vmid` command: its parser, and the edge where a verb's result or error becomes an exit
code and a message. Each verb lives in a module of its own here; only this package prints.

Global flags (`--root`, `--config`, `-n`) work before or after the subcommand, as kubectl's do.
Only the module of the verb being run is imported (`VERBS`): a command starts in a few tens of
milliseconds instead of paying for every verb's imports and parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from vmid.__main__ import HELD_SIGNALS
from vmid.api import names
from vmid.errors import VmidError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "VERBS", "main"]

#: Every command: 0 done, 1 failed (a bad file or name, the daemon or a VM, an I/O error),
#: 2 a usage error (argparse's own: a bad flag or argument), 130 interrupted by Ctrl+C.
#: Here, not in common.py, which `vmid --help` does not import; the verbs import them from there.
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130

#: Every verb, in the order of `vmid --help`: its module (vmid/cli/MODULE.py, whose `register`
#: adds its parser) and its one-line summary, which `vmid --help` lists without importing it
#: (tests/test_cli.py checks it is the summary the module registers).
VERBS: tuple[tuple[str, str, str], ...] = (
    ("validate", "render", "check manifests as KubeVirt would admit them"),
    ("render", "render", "print the QEMU command line vmid would run"),
    ("daemon", "daemon", "run the vmid daemon"),
    ("apply", "apply", "install manifests in the spool, as kubectl apply"),
    ("delete", "delete", "remove VMIs from the spool, wait until gone (kubectl delete)"),
    ("restart", "restart", "stop a VMI gracefully and start it again (virtctl restart)"),
    ("get", "get", "list VMIs, like kubectl get vmi"),
    ("describe", "describe", "a VMI's spec, conditions, phase history and events"),
    ("events", "events", "VMIs' events, like kubectl get events (kept 1 h after)"),
    ("logs", "logs", "print a VMI's serial console log"),
    ("qmp", "lifecycle", "run a QMP command on a VMI's qmp.sock"),
    ("pause", "lifecycle", "pause a running VMI"),
    ("unpause", "lifecycle", "resume a paused VMI"),
    ("reset", "lifecycle", "hard-reset a VMI, as the reset button does"),
    (
        "soft-reboot",
        "lifecycle",
        "reboot the guest cleanly (its guest agent, else the ACPI power button)",
    ),
    (
        "guestosinfo",
        "agent",
        "the guest agent's view of the guest: OS, host name, time zone, users, disks",
    ),
    ("userlist", "agent", "the users logged in to the guest, from its guest agent"),
    ("fslist", "agent", "the guest's file systems, from its guest agent"),
    ("freeze", "agent", "freeze the guest's file systems (backups, snapshots)"),
    ("unfreeze", "agent", "thaw the guest's file systems after vmid freeze"),
    ("start", "vm", "start a VirtualMachine"),
    ("stop", "vm", "stop a VirtualMachine"),
    ("console", "console", "attach to a VMI's serial console (Ctrl+] leaves)"),
    ("vnc", "vnc", "serve a VMI's VNC display on a localhost TCP port, with a one-time password"),
    ("screenshot", "screenshot", "save the VMI's screen as a PNG file"),
    ("image", "image", "the containerDisk image store"),
    ("version", "version", "print vmid's version"),
    ("completion", "completion", "print a shell completion script (bash, zsh, fish)"),
)

#: Verbs that need every verb's parser (the completion script is made from them).
_NEEDS_ALL = frozenset({"completion"})

#: Global flags that take a value: what follows them is not the verb.
_VALUED = frozenset({"--root", "--config", "-n", "--namespace"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run one vmid command; returns the process exit status."""
    parser, args = _parse(list(sys.argv[1:] if argv is None else argv))
    if not hasattr(args, "run"):  # `vmid` alone: what it can do, as kubectl alone
        parser.print_help()
        return EXIT_OK
    try:
        if args.command != "daemon":  # only the daemon answers them itself (vmid.__main__)
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


def _parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse with the parser of the verb `argv` names only (the others listed by name); when
    the verb parsed is another (a flag's value looked like a verb), with every verb's."""
    verb = _verb_in(argv)
    parser = _parser(None if verb in _NEEDS_ALL else {verb} if verb else set())
    args, extras = parser.parse_known_args(argv)
    if args.command is not None and args.command != verb:
        parser = _parser()
        return parser, parser.parse_args(argv)
    if extras:  # as parse_args says it
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return parser, args


def _verb_in(argv: list[str]) -> str | None:
    """The first word of `argv` that is neither a flag nor a global flag's value."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return next(words, None)
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


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


def _parser(verbs: Collection[str] | None = None) -> argparse.ArgumentParser:
    """vmid's parser, with the full parser of `verbs` (every verb's: None); any other verb is
    only its name and summary, which parses nothing (`_parse` then parses again with all)."""
    flags = argparse.ArgumentParser(add_help=False)
    _global_flags(flags, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="vmid", description="Run KubeVirt VirtualMachineInstance manifests on this host."
    )
    _global_flags(parser, default=None)
    parser.add_argument("--version", action=_Version, help="show program's version number and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {module for verb, module, _ in VERBS if verbs is None or verb in verbs}
    for verb, module, summary in VERBS:
        if verb in commands.choices:  # its module registered it with another verb
            continue
        if module in modules:
            importlib.import_module(f"vmid.cli.{module}").register(commands, flags)
        else:
            commands.add_parser(verb, help=summary, add_help=False)
    return parser


class _Version(argparse.Action):
    """`--version`: importlib.metadata (~20 ms to import) is asked only when it is given."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from vmid.cli import version

        print(f"vmid version {version.version()}")
        parser.exit()


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
