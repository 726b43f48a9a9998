"""Which host sockets a port forward would take: /proc/net tables and their owners."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from vmid.errors import NetworkError
from vmid.host import listeners
from vmid.plan.model import Port

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid ...\n"


def row(local: str, state: str, inode: int, remote: str = "00000000:0000") -> str:
    queues = "00000000:00000000 00:00000000 00000000"
    return f"   0: {local} {remote} {state} {queues}     0        0 {inode} 1\n"


def fake_proc(tmp_path: Path) -> Path:
    """0.0.0.0:80 (sshd holds it), 127.0.0.1:81 and a connection from :82, all TCP; UDP
    [::]:53 and an unconnected [::ffff:127.0.0.1]:54."""
    net = tmp_path / "net"
    net.mkdir()
    # The kernel prints each 32-bit word of an address as a number in the host's byte order.
    loopback = f"{int.from_bytes(socket.inet_aton('127.0.0.1'), sys.byteorder):08X}"
    (net / "tcp").write_text(
        HEADER
        + row("00000000:0050", "0A", 11)
        + row(f"{loopback}:0051", "0A", 12)
        + row("0202000A:0052", "01", 13, "0302000A:C000")
    )
    (net / "udp6").write_text(
        HEADER
        + row("00000000000000000000000000000000:0035", "07", 14)
        + row(f"0000000000000000FFFF0000{loopback}:0036", "07", 15)
    )
    (tmp_path / "123" / "fd").mkdir(parents=True)
    (tmp_path / "123" / "comm").write_text("sshd\n")
    (tmp_path / "123" / "fd" / "3").symlink_to("socket:[11]")
    return tmp_path


def test_listening_and_unconnected_sockets_off_loopback_are_found(tmp_path: Path) -> None:
    found = {(x.protocol, x.port, x.address) for x in listeners.listeners(fake_proc(tmp_path))}
    assert found == {("TCP", 80, "0.0.0.0:80"), ("UDP", 53, "[::]:53")}


def test_a_forward_of_a_listened_port_is_refused_naming_the_process(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    with pytest.raises(
        NetworkError,
        match=r"interface web: port TCP/80 is in use on this host by sshd \(pid 123\) "
        r"listening on 0\.0\.0\.0:80",
    ):
        listeners.check_free([("web", Port(protocol="TCP", port=80))], proc)
    with pytest.raises(NetworkError, match=r"UDP/53 .* by a process vmid cannot see .* \[::\]:53"):
        listeners.check_free([("dns", Port(protocol="UDP", port=53))], proc)
    free = [Port(protocol="TCP", port=n) for n in (53, 81, 82)] + [Port(protocol="UDP", port=54)]
    listeners.check_free([("ok", port) for port in free], proc)
