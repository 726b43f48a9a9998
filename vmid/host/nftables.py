"""vmid's nftables tables: `inet vmid` (masquerade, port forwards, forward-accept) and
`bridge vmid` (each tap sends only from its own MAC and pod-network address: no spoofing).

Both are rendered from the running VMIs' attachments and replaced in one `nft -f`
transaction, so they are always exactly what the VMIs need; with no VMI left they are deleted.
What one VMI adds or removes (its tap's guard chain, its entry in the map of taps, its ports in
the map of forwards) is also applied on its own, in one small transaction (`changes`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network

import trio

from vmid.errors import NetworkError
from vmid.host.ipam import Attachment

TABLE = "vmid"
FAMILIES = ("inet", "bridge")
NFT_TIMEOUT = 10.0


def active(attachments: Iterable[Attachment]) -> tuple[Attachment, ...]:
    """The attachments the tables are rendered from: the active ones, in a stable order."""
    return tuple(sorted((a for a in attachments if a.active), key=lambda a: (a.vmi, a.interface)))


def ruleset(pod_bridge: str, pool: IPv4Network, attachments: Iterable[Attachment]) -> str:
    """The `nft -f` script that replaces vmid's tables with ones for these active attachments."""
    running = active(attachments)
    bridges = sorted({a.bridge for a in running})
    # Each table is created (a no-op if it exists) and deleted, then written anew.
    lines = [x for f in FAMILIES for x in (f"table {f} {TABLE} {{}}", f"delete table {f} {TABLE}")]
    if not running:
        return "\n".join(lines) + "\n"
    # One map, not a rule per port: 50 VMIs of 256 ports apply in 0.1 s instead of 3 s.
    elements = ", ".join(_forwards(running))
    forward = "fib daddr type local ip daddr != 127.0.0.0/8 dnat ip to meta l4proto . th dport map"
    lines += [
        f"table inet {TABLE} {{",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        *(f'        iifname "{b}" accept' for b in bridges),
        *(f'        oifname "{b}" ct state established,related accept' for b in bridges),
        *(f'        oifname "{b}" ct status dnat accept' for b in bridges),
        "    }",
    ]
    if any(a.bridge == pod_bridge for a in running):
        lines += [
            "    map forwards {",
            "        type inet_proto . inet_service : ipv4_addr . inet_service",
            *([f"        elements = {{ {elements} }}"] if elements else []),
            "    }",
            "    chain prerouting {",
            "        type nat hook prerouting priority dstnat; policy accept;",
            f"        {forward} @forwards",
            "    }",
            # Connections the host itself opens to one of its addresses are forwarded too.
            "    chain output {",
            "        type nat hook output priority -100; policy accept;",
            f"        {forward} @forwards",
            "    }",
            "    chain postrouting {",
            "        type nat hook postrouting priority srcnat; policy accept;",
            f"        ip saddr {pool} ip daddr != {pool} masquerade",
            "    }",
        ]
    lines.append("}")
    lines += _bridge_table(running)
    return "\n".join(lines) + "\n"


def changes(
    pod_bridge: str, before: Sequence[Attachment], after: Sequence[Attachment]
) -> str | None:
    """The `nft -f` script (one transaction) that turns the tables `ruleset` rendered for the
    active attachments `before` into the ones it renders for `after`, only what differs; None
    when the tables change shape (the first or the last VMI, a bridge gained or lost), which
    only `ruleset` does."""
    if not before or not after or _shape(pod_bridge, before) != _shape(pod_bridge, after):
        return None
    gone = sorted(set(before) - set(after), key=lambda a: a.device)
    new = sorted(set(after) - set(before), key=lambda a: a.device)
    # Deletions first: a changed attachment's tap, or a port moved between VMIs, is re-added.
    lines = [
        *(f"delete element inet {TABLE} forwards {{ {k} }}" for k in _forwards(gone, keys=True)),
        *(f'delete element bridge {TABLE} taps {{ "{a.device}" }}' for a in gone),
        *(f"delete chain bridge {TABLE} {a.device}" for a in gone),
    ]
    for item in new:  # `create`: a chain left over (the tables drifted) fails the change
        lines.append(f"create chain bridge {TABLE} {item.device}")
        lines += (f"add rule bridge {TABLE} {item.device} {rule}" for rule in _guard(item))
        lines.append(f'add element bridge {TABLE} taps {{ "{item.device}" : jump {item.device} }}')
    lines += (f"add element inet {TABLE} forwards {{ {e} }}" for e in _forwards(new))
    return "\n".join(lines) + "\n"


def _shape(pod_bridge: str, running: Sequence[Attachment]) -> tuple[tuple[str, ...], bool]:
    """What the tables' chains and maps depend on: the bridges, NAT for the pod bridge."""
    bridges = {a.bridge for a in running}
    return tuple(sorted(bridges)), pod_bridge in bridges


def _forwards(running: Iterable[Attachment], keys: bool = False) -> list[str]:
    """The elements (or only the keys) of the map of forwards for these attachments."""
    return [
        f"{p.protocol.lower()} . {p.port}" + ("" if keys else f" : {a.ip} . {p.port}")
        for a in running
        if a.ip
        for p in a.ports
    ]


def _bridge_table(running: Sequence[Attachment]) -> list[str]:
    """Frames a tap sends into its bridge go through that tap's chain of `_guard` rules (a
    named map, so that a VMI's tap is added and removed on its own: `changes`)."""
    jumps = ", ".join(f'"{a.device}" : jump {a.device}' for a in running)
    lines = [f"table bridge {TABLE} {{"]
    for item in running:  # before the map that jumps to them
        lines += [f"    chain {item.device} {{", *(f"        {r}" for r in _guard(item)), "    }"]
    return [
        *lines,
        "    map taps {",
        "        type ifname : verdict",
        f"        elements = {{ {jumps} }}",
        "    }",
        "    chain prerouting {",
        "        type filter hook prerouting priority filter; policy accept;",
        "        iifname vmap @taps",
        "    }",
        "}",
    ]


def _guard(item: Attachment) -> list[str]:
    """libvirt's clean-traffic for one tap: its MAC only (ARP of the Ethernet/IPv4 shape only,
    whose fields the rules read); on the pod network its IPAM address only, ARP only for it
    (or an address probe from 0.0.0.0), DHCP before it has it, no other protocol (the pod
    network is IPv4: IPv6 would let a guest claim a neighbour's address). On a host bridge
    vmid knows only the MAC: the LAN's DHCP gives the address."""
    rules = [
        f"ether saddr != {item.mac} drop",
        "arp htype != 1 drop",
        "arp ptype != ip drop",
        "arp hlen != 6 drop",
        "arp plen != 4 drop",
        f"arp saddr ether != {item.mac} drop",
    ]
    if item.ip is None:
        return rules
    return [
        *rules,
        "arp operation != { request, reply } drop",
        f"arp saddr ip {{ {item.ip}, 0.0.0.0 }} accept",
        f"ip saddr {item.ip} accept",
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
        "drop",
    ]


async def apply(script: str) -> None:
    """Run `nft -f -` with `script` (one atomic transaction).

    Raises:
        NetworkError: nft is missing or refused the script; its message is included.
    """
    try:
        with trio.fail_after(NFT_TIMEOUT):
            await trio.run_process(
                ["nft", "-f", "-"], stdin=script.encode(), capture_stdout=True, capture_stderr=True
            )
    except FileNotFoundError as exc:
        raise NetworkError("nft not found: install Debian's nftables package") from exc
    except subprocess.CalledProcessError as exc:
        said = exc.stderr.decode(errors="replace").strip()
        raise NetworkError(f"nft refused vmid's ruleset: {said}") from exc
    except trio.TooSlowError as exc:
        raise NetworkError(f"nft did not finish within {NFT_TIMEOUT:g} s") from exc
