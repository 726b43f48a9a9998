"""dnsmasq as the pod network's DHCP server: its argv, its static leases, a stale one.

DHCP only (`--port=0`): the address of every guest comes from vmid's IPAM as a static lease
(`MAC,IP`), so it is known before the guest asks for it. Where dnsmasq's unprivileged user can
reach vmid's runtime directory (every directory above it searchable by others, as the root
must be for each VM's QEMU uid), the leases are files of a `--dhcp-hostsdir` (root's, readable
by that user's group only): dnsmasq reads a new one by inotify, and re-reads them all on
SIGHUP after one is removed, never restarted. A freed address is released (a DHCPRELEASE on
behalf of its old MAC): dnsmasq would otherwise refuse it to its next owner while it remembers
its lease to the old one. Under a root closed to others, the leases are `dhcp-host=` lines of
the configuration file dnsmasq reads once, as root (mode 0600), before it drops to its user; a
change of leases restarts dnsmasq then. No DNS service: guests are told the DNS servers
configured (or the host's).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from vmid.errors import NetworkError
from vmid.host import safefile
from vmid.host.ipam import Attachment

LEASE_TIME = "1h"


def argv(
    bridge: str,
    pool: IPv4Network,
    gateway: IPv4Address,
    conf_file: Path,
    pid_file: Path,
    dns: Iterable[str],
    user: str,
    hosts: tuple[Path, str] | None = None,
) -> list[str]:
    """dnsmasq in the foreground, on `bridge` only, answering only the MACs `conf_file` lists,
    or those of `hosts` (its directory of leases, and the group that may read it: see
    `hosts_dir`), reading no other configuration: a `--conf-file` stops it reading
    /etc/dnsmasq.conf."""
    args = [
        "dnsmasq",
        "--keep-in-foreground",
        f"--conf-file={conf_file}",
        "--port=0",
        "--no-hosts",
        "--no-resolv",
        "--bind-interfaces",
        f"--interface={bridge}",
        "--except-interface=lo",
        f"--listen-address={gateway}",
        f"--dhcp-range={pool.network_address},static,{pool.netmask},{LEASE_TIME}",
        "--dhcp-authoritative",
        "--leasefile-ro",
        f"--dhcp-option=option:router,{gateway}",
        f"--pid-file={pid_file}",
        f"--user={user}",
        "--log-facility=-",
        "--log-dhcp",
    ]
    servers = list(dns)
    if servers:
        args.append(f"--dhcp-option=option:dns-server,{','.join(servers)}")
    if hosts is not None:
        args += [f"--dhcp-hostsdir={hosts[0]}", f"--group={hosts[1]}"]
    return args


def _pairs(bridge: str, attachments: Iterable[Attachment]) -> list[tuple[str, str]]:
    """(MAC, address) of every address on `bridge`, running or not."""
    return sorted((a.mac, a.ip) for a in attachments if a.bridge == bridge and a.ip)


def leases(bridge: str, attachments: Iterable[Attachment]) -> str:
    """dnsmasq's configuration lines for the static lease of every address on `bridge`,
    running or not."""
    return "".join(f"dhcp-host={mac},{ip}\n" for mac, ip in _pairs(bridge, attachments))


def host_files(bridge: str, attachments: Iterable[Attachment]) -> dict[str, str]:
    """The static lease of every address on `bridge`, running or not, as the files of a
    `--dhcp-hostsdir`: {name: `MAC,IP` line}. The name says what the file holds: a file is
    never changed, only added (dnsmasq adds what a file says, it never forgets) or removed."""
    return {
        f"{mac.replace(':', '-')}-{ip}": f"{mac},{ip}\n" for mac, ip in _pairs(bridge, attachments)
    }


def hosts_dir(directory: Path, user: str) -> tuple[Path, str] | None:
    """Make `directory` (empty) for dnsmasq's leases, readable by `user`'s group only, and
    return it with that group; None if `user` cannot reach it (a directory above closed to
    others) or is unknown: dnsmasq's leases go in its configuration file then."""
    try:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid)
    except KeyError:
        return None
    shutil.rmtree(directory, ignore_errors=True)  # an earlier daemon's leases
    if not all(d.stat().st_mode & stat.S_IXOTH for d in directory.parents):
        return None
    directory.mkdir(mode=0o700)
    os.chown(directory, 0, group.gr_gid)
    directory.chmod(0o2750)  # set-group-ID: each file made in it gets that group
    return directory, group.gr_name


def add_host_file(directory: Path, name: str, text: str) -> None:
    """One lease file, root's, readable by the directory's group (dnsmasq's user)."""
    try:
        safefile.write_atomically(directory / name, text.encode(), mode=0o640)
    except OSError as exc:
        raise NetworkError(f"cannot write {directory / name}: {exc.strerror}") from exc


def remove_host_file(directory: Path, name: str) -> None:
    """Remove a lease file under a dot name first: dnsmasq (2.90) ignores dot files, but
    tries to read a file it sees removed (and logs that it cannot)."""
    hidden = directory / f".{name}"
    with contextlib.suppress(FileNotFoundError):
        (directory / name).rename(hidden)
        hidden.unlink()


def release(bridge: str, server: IPv4Address, mac: str, address: str) -> None:
    """Tell dnsmasq on `bridge` (at `server`) that `mac` released its lease of `address`: a
    DHCPRELEASE, as dnsmasq's own dhcp_release sends, but broadcast on `bridge`. The kernel
    hands a copy of a broadcast to the host's own sockets as received on `bridge` (also with
    the loopback link down, where a packet to the host's own address would be lost)."""
    header = struct.pack(
        "!4BI2H4s12x16s192xI",
        1,  # BOOTREQUEST
        1,  # Ethernet
        6,
        0,
        0,
        0,
        0,
        socket.inet_aton(address),
        bytes.fromhex(mac.replace(":", "")),
        0x63825363,  # the DHCP magic cookie
    )
    options = bytes([53, 1, 7, 54, 4]) + server.packed + bytes([255])  # DHCPRELEASE, server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bridge.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(header + options, ("255.255.255.255", 67))


def write_conf(path: Path, text: str) -> bool:
    """Replace the configuration file atomically, readable by root only; changed?"""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return False
    try:
        safefile.write_atomically(path, text.encode(), mode=0o600)
    except OSError as exc:
        raise NetworkError(f"cannot write {path}: {exc.strerror}") from exc
    return True


#: What dnsmasq says, once running, about a problem it does not get over by itself (a file it
#: cannot read, a socket it cannot use, an interface without its address); never the
#: per-packet lines of --log-dhcp, which begin with a transaction number.
_PROBLEM = re.compile(
    r"^dnsmasq(?:-dhcp)?\[\d+\]: ((?:cannot|failed|could not|unknown|bad|error|warning"
    r"|no address range|DHCP packet received on).*)$"
)


def problem(line: str) -> str | None:
    """The problem a line of dnsmasq's log reports, if it reports one."""
    found = _PROBLEM.match(line.strip())
    return found.group(1) if found else None


#: Where systemd-resolved keeps the servers it forwards to: /etc/resolv.conf then names only
#: its stub (127.0.0.53), which no guest can reach. kubelet and Docker read this file too.
RESOLVED_CONF = Path("/run/systemd/resolve/resolv.conf")


def host_resolvers(
    resolv_conf: Path = Path("/etc/resolv.conf"), upstream: Path = RESOLVED_CONF
) -> list[str]:
    """The host's IPv4 nameservers, but loopback ones (a guest cannot reach the host's 127.*);
    behind a local stub resolver (systemd-resolved), the servers it forwards to."""
    servers = _nameservers(resolv_conf)
    if not servers or all(address.is_loopback for address in servers):
        servers = _nameservers(upstream)
    return [str(address) for address in servers if not address.is_loopback]


def _nameservers(path: Path) -> list[IPv4Address]:
    try:
        text = path.read_text()
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                servers.append(IPv4Address(words[1]))
            except ValueError:
                continue
    return servers


def kill_stale(pid_file: Path) -> None:
    """Stop a dnsmasq an earlier (crashed) daemon of this root left serving this bridge: the
    pid file's process, if it is a dnsmasq writing that very pid file."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if f"--pid-file={pid_file}".encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
