"""dnsmasq as the pod network's DHCP server: its argv, its static-lease file, a stale one.

DHCP only (`--port=0`): the address of every guest comes from vmid's IPAM as a static lease
(`MAC,IP` lines in a hosts file that dnsmasq re-reads on SIGHUP), so it is known before the
guest asks for it. No DNS service: guests are told the DNS servers configured (or the host's).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from vmid.host import safefile
from vmid.host.ipam import Attachment
from vmid.host.network import NetworkError

LEASE_TIME = "1h"


def argv(
    bridge: str,
    pool: IPv4Network,
    gateway: IPv4Address,
    hosts_file: Path,
    pid_file: Path,
    dns: Iterable[str],
    user: str,
) -> list[str]:
    """dnsmasq in the foreground, on `bridge` only, answering only the hosts file's MACs."""
    args = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
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
        f"--dhcp-hostsfile={hosts_file}",
        f"--dhcp-option=option:router,{gateway}",
        f"--pid-file={pid_file}",
        f"--user={user}",
        "--log-facility=-",
        "--log-dhcp",
    ]
    servers = list(dns)
    if servers:
        args.append(f"--dhcp-option=option:dns-server,{','.join(servers)}")
    return args


def hosts_lines(bridge: str, attachments: Iterable[Attachment]) -> str:
    """The static leases of every address on `bridge`, running or not (`MAC,IP` per line)."""
    leases = sorted((a.mac, a.ip) for a in attachments if a.bridge == bridge and a.ip)
    return "".join(f"{mac},{ip}\n" for mac, ip in leases)


def write_hosts(path: Path, text: str) -> bool:
    """Replace the hosts file atomically, readable by dnsmasq's unprivileged user; changed?"""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return False
    try:
        safefile.write_atomically(path, text.encode(), mode=0o644)
    except OSError as exc:
        raise NetworkError(f"cannot write {path}: {exc.strerror}") from exc
    return True


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


def kill_stale(pid_file: Path, hosts_file: Path) -> None:
    """Stop a dnsmasq an earlier (crashed) daemon left serving this bridge."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if f"--dhcp-hostsfile={hosts_file}".encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
