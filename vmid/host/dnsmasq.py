"""dnsmasq as the pod network's DHCP server: its argv, its static leases, a stale one.

DHCP only (`--port=0`): the address of every guest comes from vmid's IPAM as a static lease
(a `dhcp-host=MAC,IP` line), so it is known before the guest asks for it. The leases are in a
configuration file dnsmasq reads once, as root, before it drops to its unprivileged user: that
user never has to reach anything under vmid's root (a `--root` may be closed to others), and
cannot read the file at all (mode 0600). A change of leases restarts dnsmasq.
No DNS service: guests are told the DNS servers configured (or the host's).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
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
) -> list[str]:
    """dnsmasq in the foreground, on `bridge` only, answering only the MACs `conf_file` lists
    (and reading no other configuration: a `--conf-file` stops it reading /etc/dnsmasq.conf)."""
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
    return args


def leases(bridge: str, attachments: Iterable[Attachment]) -> str:
    """dnsmasq's configuration lines for the static lease of every address on `bridge`,
    running or not."""
    pairs = sorted((a.mac, a.ip) for a in attachments if a.bridge == bridge and a.ip)
    return "".join(f"dhcp-host={mac},{ip}\n" for mac, ip in pairs)


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
