"""The client side of a VM's public QMP socket (`qmp.sock`), for `vmid qmp`, pause, and the like.

Blocking and minimal on purpose: one command per connection, as a person at a shell would do
with socat. vmid's daemon never uses this socket, so nothing here can block it.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vmid.errors import ControlError
from vmid.host import unixsock
from vmid.plan.ids import CONSOLE_CHARDEV

TIMEOUT = 10.0


def execute(qmp_socket: Path, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
    """Run one QMP command on `qmp_socket` and return QEMU's answer."""
    with _session(qmp_socket, command) as (_, stream):
        return _request(stream, command, arguments)


def console_attached(qmp_socket: Path) -> bool:
    """Whether a client is connected to the serial console's socket; QEMU names a socket
    chardev with no client `disconnected:...`."""
    for chardev in execute(qmp_socket, "query-chardev"):
        if chardev.get("label") == CONSOLE_CHARDEV:
            return not str(chardev.get("filename", "")).startswith("disconnected:")
    return False


def soft_reboot(qmp_socket: Path, timeout: float) -> None:
    """Reboot through the ACPI power button, as libvirt's ACPI reboot does.

    The guest shuts down cleanly; QEMU, told to pause instead of exiting, is then reset and
    continued, so the same VMI (same QEMU) boots again.
    """
    with _session(qmp_socket, "soft-reboot") as (sock, stream):
        _request(stream, "set-action", {"shutdown": "pause"})
        try:
            _request(stream, "system_powerdown", None)
            sock.settimeout(timeout)
            try:
                _wait_event(stream, "SHUTDOWN")
            except TimeoutError:
                raise ControlError(
                    f"the guest did not power off within {timeout:g} s of the ACPI power button"
                ) from None
            sock.settimeout(TIMEOUT)
            _request(stream, "system_reset", None)
            _request(stream, "cont", None)
        finally:
            _request(stream, "set-action", {"shutdown": "poweroff"})


@contextlib.contextmanager
def _session(qmp_socket: Path, what: str) -> Iterator[tuple[socket.socket, Any]]:
    try:
        sock = unixsock.connect(qmp_socket)
    except OSError as exc:
        raise ControlError(f"cannot connect to {qmp_socket}: {exc.strerror or exc}") from exc
    with sock:
        sock.settimeout(TIMEOUT)
        stream = sock.makefile("rw", encoding="utf-8")
        try:
            json.loads(stream.readline())  # the greeting
            _request(stream, "qmp_capabilities", None)
            yield sock, stream
        except (OSError, ValueError) as exc:
            raise ControlError(f"{what}: the QMP connection failed: {exc}") from exc


def _wait_event(stream: Any, name: str) -> None:
    while line := stream.readline():
        if json.loads(line).get("event") == name:
            return
    raise ControlError(f"QEMU closed the connection before {name}")


def _request(stream: Any, command: str, arguments: Mapping[str, Any] | None) -> Any:
    message: dict[str, Any] = {"execute": command}
    if arguments:
        message["arguments"] = dict(arguments)
    stream.write(json.dumps(message) + "\n")
    stream.flush()
    while True:
        line = stream.readline()
        if not line:
            raise ControlError(f"{command}: QEMU closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            error = reply["error"]
            raise ControlError(f"{command}: {error.get('class')}: {error.get('desc')}")
        if "return" in reply:
            return reply["return"]
