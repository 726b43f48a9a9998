"""Links: vmid's bridge, the guests' taps, the host's bridges. The only user of pyroute2.

Every function here is synchronous (pyroute2's IPRoute is): the runtime calls them through
`trio.to_thread.run_sync`. Errors come out as NetworkError with the kernel's reason.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Interface
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmid.errors import LinkExists, NetworkError

#: Every link vmid creates is named with this prefix, and vmid only ever deletes such links.
PREFIX = "vmid"

_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_TUNSETOWNER = 0x400454CC
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
#: TUNSETIFF fails (EBUSY) rather than attach to a tap that exists already.
_IFF_TUN_EXCL = 0x8000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCBRADDIF = 0x89A2
_IFF_UP = 0x1


@contextmanager
def _ipr(action: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise NetworkError(f"{action}: {os.strerror(exc.code)}") from exc
    except OSError as exc:
        raise NetworkError(f"{action}: {exc.strerror or exc}") from exc


def _index(name: str) -> int | None:
    """The link's index, asked by name (an ioctl: 5 us, where a netlink dump of every link
    costs 0.3 ms and more with each VM's tap)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _kind(ipr: IPRoute, index: int) -> str | None:
    (link,) = ipr.get_links(index)
    info = link.get_attr("IFLA_LINKINFO")
    return None if info is None else str(info.get_attr("IFLA_INFO_KIND"))


def ensure_bridge(name: str, address: IPv4Interface) -> None:
    """Create bridge `name` with `address` and bring it up; a no-op when it is already so."""
    with _ipr(f"cannot set up bridge {name}") as ipr:
        index = _index(name)
        if index is None:
            ipr.link("add", ifname=name, kind="bridge")
            index = _index(name)
            assert index is not None
        elif _kind(ipr, index) != "bridge":
            raise NetworkError(f"{name} exists and is not a bridge; rename podNetwork.bridge")
        addresses = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
        if (str(address.ip), address.network.prefixlen) not in addresses:
            ipr.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        ipr.link("set", index=index, state="up")


def bridge_exists(name: str) -> bool:
    """Whether a bridge of that name exists (multus networks attach to existing bridges)."""
    with _ipr(f"cannot look up bridge {name}") as ipr:
        index = _index(name)
        return index is not None and _kind(ipr, index) == "bridge"


def ensure_tap(name: str, bridge: str, owner: int, reuse: bool) -> None:
    """A persistent tap owned by uid `owner` (QEMU's user), enslaved to `bridge`, up.

    With `reuse`, an existing tap (this VMI's, e.g. re-adopted: QEMU holds it open) is only
    re-enslaved and set up; without, a link of that name is refused (LinkExists).
    """
    if not name.startswith(PREFIX):
        raise ValueError(f"vmid only manages links named {PREFIX}*: {name}")
    action = f"cannot set up tap {name} on bridge {bridge}"
    master = _index(bridge)
    if master is None:
        raise NetworkError(f"bridge {bridge} does not exist")
    if _index(name) is None:
        try:
            _create_tap(name, owner)
            _enslave_new(name, bridge)
        except OSError as exc:
            raise NetworkError(f"{action}: {exc.strerror or exc}") from exc
        return
    if not reuse:
        raise LinkExists(f"a link named {name} exists already")
    with _ipr(action) as ipr:  # it may be another bridge's port: moved over
        index = _index(name)
        assert index is not None
        ipr.link("set", index=index, master=master, state="up")


def _enslave_new(name: str, bridge: str) -> None:
    """Make the new tap `name` a port of `bridge` and bring it up, by ioctls (0.25 ms, where
    opening pyroute2's netlink socket for one `link set` took 2.7 ms of a launch's path)."""
    index = _index(name)
    if index is None:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, _SIOCBRADDIF, _ifreq(bridge, struct.pack("i", index)))
        flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, _ifreq(name)), 16)[0]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | _IFF_UP)))


def _ifreq(name: str, data: bytes = b"") -> bytes:
    """A `struct ifreq`: the interface's name, then its union (40 bytes in all)."""
    return struct.pack("16s24s", name.encode(), data)


def open_tap(name: str) -> int:
    """An fd on the existing tap `name`, for QEMU to inherit (close it once QEMU has it)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"vmid only manages links named {PREFIX}*: {name}")
    request = struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, request)
    except OSError as exc:
        os.close(fd)
        raise NetworkError(f"cannot open tap {name}: {exc.strerror}") from exc
    return fd


def _create_tap(name: str, owner: int) -> None:
    # A plain ioctl: pyroute2's tuntap helper does not pass IFF_VNET_HDR through. EXCL: a tap
    # made by someone else between the lookup and here is not taken over.
    flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR | _IFF_TUN_EXCL
    request = struct.pack("16sH", name.encode(), flags)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.ioctl(fd, _TUNSETIFF, request)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise LinkExists(f"a link named {name} exists already") from exc
            raise
        fcntl.ioctl(fd, _TUNSETOWNER, owner)
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def delete_link(name: str) -> None:
    """Delete a link vmid created (a tap or vmid's bridge); gone already is fine."""
    if not name.startswith(PREFIX):
        raise ValueError(f"vmid only deletes links named {PREFIX}*: {name}")
    with _ipr(f"cannot delete {name}") as ipr:
        index = _index(name)
        if index is None:
            return
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


def existing(names: Iterable[str]) -> set[str]:
    """Those of `names` that name a link (of any kind) now."""
    return {name for name in names if _index(name) is not None}


def vmid_taps() -> set[str]:
    """The names of every tap (tun) link named with vmid's prefix."""
    with _ipr("cannot list links") as ipr:
        names = set()
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            kind = None if info is None else info.get_attr("IFLA_INFO_KIND")
            if name and name.startswith(PREFIX) and kind == "tun":
                names.add(str(name))
        return names


def enable_ip_forward(proc: Path = Path("/proc/sys/net/ipv4/ip_forward")) -> None:
    """Turn on IPv4 forwarding (in vmid's network namespace)."""
    try:
        if proc.read_text().strip() != "1":
            proc.write_text("1\n")
    except OSError as exc:
        raise NetworkError(
            f"cannot turn on {proc}: {exc.strerror}; set net.ipv4.ip_forward=1 on the host "
            "(under systemd, the unit's ProtectKernelTunables= keeps vmid from doing it), or "
            "podNetwork.ipForward: false in vmid.yaml to run without it"
        ) from exc
