"""`vmid vnc`: a running VMI's VNC display served on a localhost TCP port, behind a one-time
password."""

from __future__ import annotations

import argparse
import secrets
import select
import signal
import socket
import string
import sys
import threading
from pathlib import Path

from vmid import control
from vmid.cli import common
from vmid.cli.common import EXIT_OK, Commands
from vmid.errors import ControlError
from vmid.host import unixsock


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    vnc = commands.add_parser(
        "vnc",
        parents=[flags],
        help="serve a VMI's VNC display on a localhost TCP port, with a one-time password",
    )
    vnc.add_argument("name", metavar="NAME")
    vnc.add_argument("--port", type=_port, default=0, help="TCP port (default: any free one)")
    vnc.set_defaults(run=_vnc)
    common.explain(
        vnc,
        "Serve VMI NAME's display on 127.0.0.1:PORT behind a one-time VNC password, printed "
        "here, until Ctrl+C.",
        "vmid vnc web                 # then: vncviewer 127.0.0.1::PORT\nvmid vnc web --port 5901",
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 to 65535)")
    return int(text)


#: VNC authentication is DES keyed by the password: QEMU uses its first 8 characters only.
VNC_PASSWORD_LENGTH = 8
_PASSWORD_ALPHABET = string.ascii_letters + string.digits  # 62**8: about 2**47.6


def _vnc(args: argparse.Namespace) -> int:
    qmp_socket, qemu, _ = common.running(args)
    path = qemu.vncSocket
    if not path:
        raise ControlError(f"VMI {args.name} has no graphics device")
    password = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(VNC_PASSWORD_LENGTH))
    try:
        server = socket.create_server(("127.0.0.1", args.port))
    except OSError as exc:
        raise ControlError(
            f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}"
        ) from exc
    with server:
        port = server.getsockname()[1]
        # Any local user can connect to the port: the password is what only this user knows.
        _set_vnc_password(args.name, qmp_socket, password)
        try:
            print(
                f"VNC of {args.name} on 127.0.0.1:{port} (e.g. vncviewer 127.0.0.1::{port}); "
                f"Ctrl+C to stop\npassword: {password} (one-time: VNC passwords are DES keys "
                "of 8 characters; it expires when this command ends)",
                flush=True,
            )
            _serve_vnc(server, Path(path))
        finally:
            _expire_vnc_password(qmp_socket)
    return EXIT_OK


def _set_vnc_password(name: str, qmp_socket: Path, password: str) -> None:
    arguments = {"protocol": "vnc", "password": password}
    try:
        control.execute(qmp_socket, "set_password", arguments)
    except ControlError as exc:
        # A QEMU started by an older vmid serves VNC without a password: never relay it.
        raise ControlError(
            f"cannot set a VNC password on {name} ({exc}); a VMI started by an older vmid "
            "has a display without password: recreate it to use vmid vnc"
        ) from exc


def _expire_vnc_password(qmp_socket: Path) -> None:
    try:
        control.execute(qmp_socket, "expire_password", {"protocol": "vnc", "time": "now"})
    except ControlError as exc:  # the VM is gone, and its password with it
        print(f"vmid: the VNC password was not expired: {exc}", file=sys.stderr)


def _serve_vnc(server: socket.socket, vnc_socket: Path) -> None:
    """Relay every viewer to the VM's socket until Ctrl+C, SIGTERM or SIGHUP."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, common.interrupt)  # so the password is expired on those too
    try:
        while True:
            client, _ = server.accept()
            threading.Thread(target=_proxy, args=(client, vnc_socket), daemon=True).start()
    except KeyboardInterrupt:
        return


def _proxy(client: socket.socket, vnc_socket: Path) -> None:
    """One viewer's connection, relayed to the VM's VNC unix socket until either side closes."""
    with client:
        try:
            upstream = unixsock.connect(vnc_socket)
        except OSError:
            return
        with upstream:
            peers = {client.fileno(): upstream, upstream.fileno(): client}
            while True:
                ready, _, _ = select.select(list(peers), [], [])
                for fd in ready:
                    source = client if fd == client.fileno() else upstream
                    data = source.recv(65536)
                    if not data:
                        return
                    peers[fd].sendall(data)
