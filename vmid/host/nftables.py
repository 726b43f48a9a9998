"""vmid's nftables table (`inet vmid`): masquerade, port forwards, forward-accept.

The whole table is rendered from the running VMIs' attachments and replaced in one `nft -f`
transaction, so it is always exactly what the VMIs need; with no VMI left it is deleted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Network

import trio

from vmid.host.ipam import Attachment
from vmid.host.network import NetworkError

TABLE = "vmid"
NFT_TIMEOUT = 10.0


def ruleset(pod_bridge: str, pool: IPv4Network, attachments: Iterable[Attachment]) -> str:
    """The `nft -f` script that replaces vmid's table with one for these active attachments."""
    active = sorted((a for a in attachments if a.active), key=lambda a: (a.vmi, a.interface))
    bridges = sorted({a.bridge for a in active})
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}"]
    if not active:
        return "\n".join(lines) + "\n"
    forwards = [
        f"        fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto {p.protocol.lower()} "
        f"th dport {p.port} dnat ip to {a.ip}:{p.port}"
        for a in active
        if a.ip
        for p in a.ports
    ]
    lines += [
        f"table inet {TABLE} {{",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        *(f'        iifname "{b}" accept' for b in bridges),
        *(f'        oifname "{b}" ct state established,related accept' for b in bridges),
        *(f'        oifname "{b}" ct status dnat accept' for b in bridges),
        "    }",
    ]
    if any(a.bridge == pod_bridge for a in active):
        lines += [
            "    chain prerouting {",
            "        type nat hook prerouting priority dstnat; policy accept;",
            *forwards,
            "    }",
            # Connections the host itself opens to one of its addresses are forwarded too.
            "    chain output {",
            "        type nat hook output priority -100; policy accept;",
            *forwards,
            "    }",
            "    chain postrouting {",
            "        type nat hook postrouting priority srcnat; policy accept;",
            f"        ip saddr {pool} ip daddr != {pool} masquerade",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


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
