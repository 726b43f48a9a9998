#!/usr/bin/env python3
"""A stand-in for qemu-system-x86_64 that speaks just enough QMP on vmid's control socket.

Its behaviour comes from the VMI's firmware serial (`-smbios type=1,...,serial=MODE`):
  obey       power off on system_powerdown (the default)
  ignore     never react to system_powerdown
  delay-N    power off N seconds after the first system_powerdown
  second     power off on the second system_powerdown only (a guest still booting)
  crash      exit with status 1 right after `cont`
  refuse     print an error like QEMU's and exit 1 before opening the monitor
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


def option(argv: list[str], flag: str, pattern: str) -> str | None:
    for index, arg in enumerate(argv[:-1]):
        if arg == flag and (match := re.search(pattern, argv[index + 1])):
            return match.group(1)
    return None


def requests(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """QMP commands as they arrive; QMP needs no newline between messages."""
    decoder, buffer = json.JSONDecoder(), ""
    while chunk := conn.recv(65536):
        buffer += chunk.decode()
        while buffer.strip():
            try:
                request, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break
            buffer = buffer.lstrip()[end:]
            yield request


def main(argv: list[str]) -> int:
    mode = option(argv, "-smbios", r"serial=([^,]+)") or "obey"
    if mode == "refuse":
        print("qemu-system-x86_64: -device nope: 'nope' is not a valid device model name",
              file=sys.stderr)  # fmt: skip
        return 1
    fd = int(option(argv, "-chardev", r"id=vmid-control,fd=(\d+)") or "-1")
    listener = socket.socket(fileno=fd)
    conn, _ = listener.accept()
    lock = threading.Lock()

    def send(message: dict[str, object]) -> None:
        with lock:
            conn.sendall(json.dumps(message).encode() + b"\r\n")

    def event(name: str, data: dict[str, object] | None = None) -> None:
        send({"event": name, "data": data or {}, "timestamp": {"seconds": 0, "microseconds": 0}})

    def power_off(after: float) -> None:
        time.sleep(after)
        event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        os._exit(0)

    send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}})
    powering_off = False
    powerdowns = 0
    for request in requests(conn):
        command, ident = request["execute"], request.get("id")
        send({"return": {"status": "prelaunch", "running": False} if command == "query-status"
              else {}, **({"id": ident} if ident is not None else {})})  # fmt: skip
        if command == "cont" and mode == "crash":
            os._exit(1)
        if command == "system_powerdown":
            event("POWERDOWN")
            powerdowns += 1
            if mode == "second" and powerdowns == 2:
                power_off(0.0)
            if mode == "obey" or (mode.startswith("delay-") and not powering_off):
                delay = 0.0 if mode == "obey" else float(mode.removeprefix("delay-"))
                powering_off = True
                threading.Thread(target=power_off, args=(delay,), daemon=True).start()
        if command == "quit":
            event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
