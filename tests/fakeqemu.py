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
        print(
            "qemu-system-x86_64: -device nope: 'nope' is not a valid device model name",
            file=sys.stderr,
        )
        return 1
    fd = int(option(argv, "-chardev", r"id=vmid-control,fd=(\d+)") or "-1")
    fake = FakeQemu(mode)
    qmp = option(argv, "-chardev", r"id=qmp,path=([^,]+)")
    if qmp is not None:  # as QEMU: a socket file its own user (umask 0177) may connect to
        threading.Thread(target=serve_socket, args=(qmp,), daemon=True).start()
    listener = socket.socket(fileno=fd)
    while True:  # like QEMU: a client hanging up leaves the VM running, and it may reconnect
        conn, _ = listener.accept()
        if fake.serve(conn):
            return 0


def serve_socket(path: str) -> None:
    """Greet and answer every QMP client of the socket file `path` (`vmid qmp`, attackers)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
            for request in requests(conn):
                conn.sendall(json.dumps({"return": {}, "id": request.get("id")}).encode() + b"\r\n")


class FakeQemu:
    """The fake's state across monitor connections."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.powering_off = False
        self.powerdowns = 0
        self.lock = threading.Lock()
        self.conn: socket.socket | None = None

    def send(self, message: dict[str, object]) -> None:
        with self.lock:
            if self.conn is not None:
                try:
                    self.conn.sendall(json.dumps(message).encode() + b"\r\n")
                except OSError:  # the client went away (a daemon killed): as QEMU, carry on
                    self.conn = None

    def event(self, name: str, data: dict[str, object] | None = None) -> None:
        stamp = {"seconds": 0, "microseconds": 0}
        self.send({"event": name, "data": data or {}, "timestamp": stamp})

    def power_off(self, after: float) -> None:
        time.sleep(after)
        self.event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        os._exit(0)

    def serve(self, conn: socket.socket) -> bool:
        """Answer one client until it hangs up; True once asked to quit."""
        self.conn = conn
        self.send(
            {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}
        )
        try:
            return self._serve(conn)
        except OSError:  # reset by a client that died
            return False
        finally:
            with self.lock:
                self.conn = None

    def _serve(self, conn: socket.socket) -> bool:
        for request in requests(conn):
            command, ident = request["execute"], request.get("id")
            result = {"status": "prelaunch", "running": False} if command == "query-status" else {}
            self.send({"return": result, **({"id": ident} if ident is not None else {})})
            if command == "cont" and self.mode == "crash":
                os._exit(1)
            if command == "system_powerdown":
                self.powerdown()
            if command == "quit":
                self.event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
                return True
        return False

    def powerdown(self) -> None:
        self.event("POWERDOWN")
        self.powerdowns += 1
        if self.mode == "second" and self.powerdowns == 2:
            self.power_off(0.0)
        if self.mode == "obey" or (self.mode.startswith("delay-") and not self.powering_off):
            delay = 0.0 if self.mode == "obey" else float(self.mode.removeprefix("delay-"))
            self.powering_off = True
            threading.Thread(target=self.power_off, args=(delay,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
