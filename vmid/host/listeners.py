"""Host sockets on a port a VMI wants forwarded: /proc/net/{tcp,udp}{,6} and /proc/*/fd.

A forward takes every connection to the host's non-loopback addresses on its port, so it must
never be set up over a service listening there. Read in vmid's own network namespace.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import attrs

from vmid.errors import NetworkError
from vmid.plan.model import Port

#: /proc/net file -> (protocol, state of a socket that receives new traffic: TCP's LISTEN,
#: UDP's unconnected "close").
TABLES = {"tcp": ("TCP", "0A"), "tcp6": ("TCP", "0A"), "udp": ("UDP", "07"), "udp6": ("UDP", "07")}


@attrs.frozen
class Listener:
    """A socket a host process receives new connections or datagrams on."""

    protocol: str
    port: int
    #: As `ss` shows it: 0.0.0.0:80, [::]:80.
    address: str
    inode: int


def check_free(ports: Iterable[tuple[str, Port]], proc: Path = Path("/proc")) -> None:
    """Refuse forwarding a port (with the interface that wants it) a host process listens on.

    Raises:
        NetworkError: naming the port, the process (when /proc shows it) and its address.
    """
    wanted = {(port.protocol, port.port): interface for interface, port in ports}
    if not wanted:
        return
    for listener in listeners(proc):
        interface = wanted.get((listener.protocol, listener.port))
        if interface is not None:
            raise NetworkError(
                f"interface {interface}: port {listener.protocol}/{listener.port} is in use on "
                f"this host by {owner(listener.inode, proc)} listening on {listener.address}; "
                "a forward would take its traffic: forward another port, or stop that service"
            )


def listeners(proc: Path = Path("/proc")) -> Iterator[Listener]:
    """Every listening TCP and unconnected UDP socket on a non-loopback address."""
    for name, (protocol, state) in TABLES.items():
        try:
            text = (proc / "net" / name).read_text()
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        except OSError as exc:
            raise NetworkError(f"cannot read {proc / 'net' / name}: {exc.strerror}") from exc
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != state:
                continue
            hexaddress, _, hexport = fields[1].partition(":")
            address = _address(hexaddress)
            if not _loopback(address):
                shown = f"[{address}]" if address.version == 6 else str(address)
                yield Listener(
                    protocol, int(hexport, 16), f"{shown}:{int(hexport, 16)}", int(fields[9])
                )


def owner(inode: int, proc: Path = Path("/proc")) -> str:
    """`sshd (pid 123)`: the first process holding socket `inode`, as far as /proc shows."""
    target = f"socket:[{inode}]"
    for pid in sorted((p for p in os.listdir(proc) if p.isdigit()), key=int):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to look into
            for fd in os.listdir(proc / pid / "fd"):
                if os.readlink(proc / pid / "fd" / fd) == target:
                    command = (proc / pid / "comm").read_text().strip()
                    return f"{command} (pid {pid})"
    return f"a process vmid cannot see (socket inode {inode})"


def _address(text: str) -> IPv4Address | IPv6Address:
    """The kernel prints each 32-bit word of the address in the host's byte order."""
    words = [int(text[i : i + 8], 16) for i in range(0, len(text), 8)]
    return ip_address(struct.pack(f"={len(words)}I", *words))


def _loopback(address: IPv4Address | IPv6Address) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
