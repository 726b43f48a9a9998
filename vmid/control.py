"""The client side of a VM's public QMP socket (`qmp.sock`), for `vmid qmp`, pause, and the like.

Blocking and minimal on purpose: one command per connection, as a person at a shell would do
with socat. vmid's daemon never uses this socket, so nothing here can block it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmid.errors import VmidError
from vmid.host import unixsock

TIMEOUT = 10.0


class ControlError(VmidError):
    """The VM's QMP socket could not be reached, or QEMU refused the command."""


def execute(qmp_socket: Path, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
    """Run one QMP command on `qmp_socket` and return QEMU's answer."""
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
            return _request(stream, command, arguments)
        except (OSError, ValueError) as exc:
            raise ControlError(f"{command}: the QMP connection failed: {exc}") from exc


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
