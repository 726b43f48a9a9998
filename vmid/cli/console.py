"""`vmid console`: this terminal attached to a running VMI's serial console (Ctrl+] leaves), one
client at a time."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import signal
import socket
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

from vmid import control
from vmid.cli import common
from vmid.cli.common import EXIT_OK, Commands
from vmid.errors import ControlError
from vmid.host import unixsock


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    console = commands.add_parser(
        "console", parents=[flags], help="attach to a VMI's serial console (Ctrl+] leaves)"
    )
    console.add_argument("name", metavar="NAME")
    console.set_defaults(run=_console)
    common.explain(
        console,
        "Attach this terminal (raw mode) to VMI NAME's serial console; Ctrl+] leaves. One "
        "client at a time: a second one is refused.",
        "vmid console web",
    )


ESCAPE = b"\x1d"  # Ctrl+], as virtctl console and telnet


def _console(args: argparse.Namespace) -> int:
    qmp_socket, qemu, _ = common.running(args)
    path = qemu.consoleSocket
    if not path:
        raise ControlError(f"VMI {args.name} has no serial console")
    with _console_lock(args.name, Path(path)):
        # QEMU serves one client at a time: a second one's connect() succeeds, and what it
        # types waits unread until the first leaves.
        if control.console_attached(qmp_socket):
            raise ControlError(
                f"{args.name}: its console is already attached (another client is connected "
                f"to {path})"
            )
        try:
            sock = unixsock.connect(Path(path))
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        print(
            f"Successfully connected to {args.name} console. Press Ctrl+] to exit console.",
            file=sys.stderr,
            flush=True,
        )
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, common.interrupt)  # so the terminal is restored on those too
        with sock, _raw_terminal(sys.stdin.fileno()):
            _relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
    print(f"\r\nDisconnected from {args.name} console.", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _console_lock(name: str, console_socket: Path) -> Iterator[None]:
    """Held while attached, on the socket's directory: two `vmid console` started at once
    would both find the console free before QEMU accepts either."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(console_socket.parent, flags)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ControlError(
                f"{name}: its console is already attached (another vmid console is connected)"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _relay(sock: socket.socket, stdin: int, stdout: int) -> None:
    """Copy both ways until Ctrl+] on stdin, or the console closes (the VM is gone)."""
    readers: list[int] = [sock.fileno(), stdin]
    while True:
        ready, _, _ = select.select(readers, [], [])
        if sock.fileno() in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 65536)
            if ESCAPE in data:
                sock.sendall(data[: data.index(ESCAPE)])
                return
            if not data:
                readers.remove(stdin)  # stdin ended: keep showing the console
                continue
            sock.sendall(data)
