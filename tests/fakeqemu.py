#!/usr/bin/env python3
"""A stand-in for qemu-system-x86_64 that speaks just enough QMP on vmid's control socket.

Its behaviour comes from the VMI's firmware serial (`-smbios type=1,...,serial=MODE`):
  obey       power off on system_powerdown (the default)
  ignore     never react to system_powerdown
  delay-N    power off N seconds after the first system_powerdown
  second     power off on the second system_powerdown only (a guest still booting)
  crash      exit with status 1 right after `cont`
  refuse     print an error like QEMU's and exit 1 before opening the monitor
  stall      never answer its first client's `cont` (a daemon that dies before the guest runs)
  slow-takeover  answer a later client's query-status (a daemon taking it over) after 2 s
  spoof-IP   a hostile guest on its tap (net0): it claims address IP (an ARP reply and a UDP
             packet from IP) and sends from another MAC, every 0.2 s; plus one frame the
             anti-spoofing rules let through (an ARP probe), so an observer sees the tap works
  flood-N    write N MiB to its serial console's log and N MiB to stderr as fast as it can,
             then `flood done` to each, then obey
  tick       write a numbered line (1 KiB) to its serial console's log every 10 ms; obey
  drip       write an empty line (one byte) to its serial console's log every 10 ms; obey
  halt-N     power off by itself N seconds after `cont` (a guest that shuts down)
  ioerror    0.2 s after `cont`, a write to its first disk fails with ENOSPC and, as with
             werror=stop, the guest stops: BLOCK_IO_ERROR, then STOP, runstate io-error
             (query-block says which disk); the next `cont` resumes it for good; obey

Its serial console's socket serves one client at a time and echoes what it gets, as QEMU's
queues a second one; its qmp.sock answers query-chardev (the console attached or not) and
screendump (a PNG header) and human-monitor-command (its text) as QEMU does, and every
other command with `{}`.

Its run state (prelaunch until `cont`, running, paused after `stop`) is answered by
query-status and kept in the file `runstate` in its working directory, for tests to read.
`stop` and `cont` on either monitor (vmid's control socket, or qmp.sock as `vmid pause` uses
it) pause and resume it, with QEMU's STOP and RESUME events on the control monitor.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import struct
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
    if mode.startswith("spoof-"):
        threading.Thread(
            target=spoof, args=(argv, mode.removeprefix("spoof-")), daemon=True
        ).start()
    fd = int(option(argv, "-chardev", r"id=vmid-control,fd=(\d+)") or "-1")
    if mode.startswith("flood-"):
        megabytes = int(mode.removeprefix("flood-"))
        threading.Thread(target=flood, args=(console_log(argv), megabytes), daemon=True).start()
        threading.Thread(target=flood, args=(2, megabytes), daemon=True).start()
    if mode in ("tick", "drip"):
        target = tick if mode == "tick" else drip
        threading.Thread(target=target, args=(console_log(argv),), daemon=True).start()
    fake = FakeQemu("obey" if mode.startswith("flood-") or mode in ("tick", "drip") else mode)
    fake.disk = option(argv, "-device", r"drive=([^,]+),id=ua-disk-") or "disk0"
    path = option(argv, "-chardev", r"id=charserial0,path=([^,]+)")
    console = None if path is None else Console(path)
    if console is not None:
        threading.Thread(target=console.serve, daemon=True).start()
    qmp = option(argv, "-chardev", r"id=qmp,path=([^,]+)")
    if qmp is not None:  # as QEMU: a socket file its own user (umask 0177) may connect to
        threading.Thread(target=serve_socket, args=(qmp, fake, console), daemon=True).start()
    listener = socket.socket(fileno=fd)
    while True:  # like QEMU: a client hanging up leaves the VM running, and it may reconnect
        conn, _ = listener.accept()
        if fake.serve(conn):
            return 0


BROADCAST = b"\xff" * 6


def arp(mac: bytes, sender: str, target: str, operation: int, marker: bytes) -> bytes:
    """An Ethernet broadcast ARP frame (`marker` in its padding, for an observer to find)."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, operation)
    body += mac + socket.inet_aton(sender) + BROADCAST + socket.inet_aton(target)
    return BROADCAST + mac + b"\x08\x06" + body + marker


def udp(mac: bytes, source: str, marker: bytes) -> bytes:
    """An Ethernet and IPv4 broadcast UDP datagram from `source` carrying `marker`."""
    length = 20 + 8 + len(marker)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, length, 0, 0, 64, 17, 0, socket.inet_aton(source), BROADCAST[:4]
    )
    words = struct.unpack("!10H", header)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
    datagram = struct.pack("!HHHH", 9999, 9999, 8 + len(marker), 0) + marker
    return BROADCAST + mac + b"\x08\x00" + header + datagram


def spoof(argv: list[str], victim: str) -> None:
    fd = int(option(argv, "-netdev", r"tap,id=net0,fd=(\d+)") or "-1")
    mac = bytes.fromhex((option(argv, "-device", r"mac=([0-9a-f:]+)") or "").replace(":", ""))
    other = bytes.fromhex("02ee00000001")
    frames = [
        arp(mac, victim, victim, 2, b"VMID-SPOOF-ARP"),  # "the victim's address is at my MAC"
        udp(mac, victim, b"VMID-SPOOF-IP"),
        udp(other, victim, b"VMID-SPOOF-MAC"),
        arp(mac, "0.0.0.0", victim, 1, b"VMID-PROBE-ARP"),  # a probe: allowed
    ]
    while True:
        for frame in frames:
            os.write(fd, bytes(10) + frame)  # vmid opens taps with IFF_VNET_HDR: a zero header
        time.sleep(0.2)


def console_log(argv: list[str]) -> int:
    """An fd on the serial console's log file, as QEMU opens it (`/dev/fdset/N`: a passed fd)."""
    target = option(argv, "-chardev", r"id=charserial0,.*logfile=([^,]+)")
    assert target is not None, "the VMI has no serial console log"
    if target.startswith("/dev/fdset/"):
        fdset = target.removeprefix("/dev/fdset/")
        fd = option(argv, "-add-fd", rf"fd=(\d+),set={fdset}\b")
        assert fd is not None, f"no -add-fd for fdset {fdset}"
        return os.dup(int(fd))
    return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def write(fd: int, data: bytes) -> None:
    """As QEMU's log writes: bytes nobody reads (EPIPE) are dropped."""
    with contextlib.suppress(BrokenPipeError):
        os.write(fd, data)


def flood(fd: int, megabytes: int) -> None:
    line = b"x" * 99 + b"\n"
    chunk = line * 655  # 65 500 bytes
    for _ in range(megabytes * (1 << 20) // len(chunk)):
        write(fd, chunk)
    write(fd, b"flood done\n")


def tick(fd: int) -> None:
    for number in itertools.count():
        write(fd, f"tick {number:08d} ".encode().ljust(1023, b".") + b"\n")
        time.sleep(0.01)


def drip(fd: int) -> None:
    """A line of one byte every 10 ms: as many lines, each timed, for as few bytes as can be."""
    while True:
        write(fd, b"\n")
        time.sleep(0.01)


def serve_socket(path: str, fake: FakeQemu, console: Console | None) -> None:
    """Greet and answer every QMP client of the socket file `path` (`vmid qmp`, attackers)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
            for request in requests(conn):
                if request.get("execute") in ("stop", "cont"):
                    fake.run(request["execute"] == "cont", client=True)
                result = answer(request, console)
                conn.sendall(
                    json.dumps({"return": result, "id": request.get("id")}).encode() + b"\r\n"
                )


def answer(request: dict[str, Any], console: Console | None) -> object:
    """What QEMU returns for the few commands whose answer tests read."""
    if request["execute"] == "query-chardev":
        return [console.chardev()] if console else []
    if request["execute"] == "screendump":  # a 1x1 PNG's signature and header is enough here
        with open(request["arguments"]["filename"], "wb") as stream:
            stream.write(b"\x89PNG\r\n\x1a\n" + bytes(8) + (1).to_bytes(4, "big") * 2)
    if request["execute"] == "human-monitor-command":  # as QEMU: the monitor's text
        return f"fake monitor: {request['arguments']['command-line']}\r\n"
    return {}


class Console:
    """The serial console's socket served as QEMU serves it: one client at a time (a second
    one's connect() succeeds, and it waits unaccepted until the first leaves); what a client
    types is echoed back."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.attached = False

    def chardev(self) -> dict[str, object]:
        """The console in query-chardev's answer, as QEMU 7.2 gives it."""
        filename = f"unix:{self.path},server=on"
        if not self.attached:
            filename = "disconnected:" + filename
        return {"label": "charserial0", "filename": filename, "frontend-open": True}

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(self.path)
        listener.listen()
        while True:
            conn, _ = listener.accept()
            self.attached = True
            with conn, contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    conn.sendall(data)
            self.attached = False


class FakeQemu:
    """The fake's state across monitor connections."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.powering_off = False
        self.powerdowns = 0
        self.lock = threading.Lock()
        self.conn: socket.socket | None = None
        self.clients = 0
        self.runstate = "prelaunch"
        self.set_runstate("prelaunch")
        self.disk = "disk0"  # the block node of its first disk
        self.io_errors = 0

    def set_runstate(self, state: str) -> None:
        self.runstate = state
        with open("runstate", "w") as stream:
            stream.write(state)

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
        self.clients += 1
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
            if command == "cont" and self.mode == "stall" and self.clients == 1:
                continue
            if command == "query-status" and self.mode == "slow-takeover" and self.clients > 1:
                time.sleep(2)
            result: object = {}
            if command == "query-status":
                result = {"status": self.runstate, "running": self.runstate == "running"}
            if command == "query-block":
                status = "nospace" if self.runstate == "io-error" else "ok"
                result = [{"device": "", "io-status": status, "inserted": {"node-name": self.disk}}]
            self.send({"return": result, **({"id": ident} if ident is not None else {})})
            if command == "cont" and self.mode == "crash":
                os._exit(1)
            if command in ("cont", "stop"):
                self.run(command == "cont")
            if command == "cont" and self.mode.startswith("halt-"):
                after = float(self.mode.removeprefix("halt-"))
                threading.Thread(target=self.power_off, args=(after,), daemon=True).start()
            if command == "system_powerdown":
                self.powerdown()
            if command == "quit":
                self.event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
                return True
        return False

    def run(self, running: bool, client: bool = False) -> None:
        """`cont` or `stop`: QEMU's RESUME or STOP when its run state changes (a `cont` out of
        prelaunch too when a client sends it: `vmid unpause` of a VMI started paused)."""
        was = self.runstate
        self.set_runstate("running" if running else "paused")
        if (was != "prelaunch" or client) and (was == "running") != running:
            self.event("RESUME" if running else "STOP")
        if running and self.mode == "ioerror" and self.io_errors == 0:
            self.io_errors += 1
            threading.Thread(target=self.io_error, daemon=True).start()

    def io_error(self) -> None:
        """As QEMU on ENOSPC with werror=stop (block/block-backend.c): the event, then STOP."""
        time.sleep(0.2)
        data = {
            "device": "",
            "node-name": self.disk,
            "operation": "write",
            "action": "stop",
            "nospace": True,
            "reason": "No space left on device",
        }
        self.event("BLOCK_IO_ERROR", data)
        self.set_runstate("io-error")
        self.event("STOP")

    def powerdown(self) -> None:
        self.event("POWERDOWN")
        self.powerdowns += 1
        if self.mode == "second" and self.powerdowns == 2:
            self.power_off(0.0)
        obey = self.mode in ("obey", "ioerror")
        if obey or (self.mode.startswith("delay-") and not self.powering_off):
            delay = 0.0 if obey else float(self.mode.removeprefix("delay-"))
            self.powering_off = True
            threading.Thread(target=self.power_off, args=(delay,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
