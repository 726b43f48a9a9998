"""vmid's nftables table and dnsmasq's inputs, rendered from the IPAM registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from ipaddress import IPv4Network
from pathlib import Path

import attrs
import pytest

from vmid.host import dnsmasq, nftables
from vmid.host.ipam import Attachment
from vmid.plan.model import Port

POOL = IPv4Network("10.0.2.0/24")


def attachment(vmi: str, ip: str | None, bridge: str = "vmid0", **kw: object) -> Attachment:
    values: dict[str, object] = {
        "vmi": vmi,
        "interface": "default",
        "device": f"vmid-{vmi}",
        "bridge": bridge,
        "mac": f"02:00:00:00:00:{len(vmi):02x}",
        "ip": ip,
        "active": True,
    }
    values.update(kw)
    return Attachment(**values)  # type: ignore[arg-type]


WEB = attachment("web", "10.0.2.2", mac="02:00:00:00:00:0b", ports=(Port(protocol="TCP", port=80),))
DNS = attachment("dns", "10.0.2.3", mac="02:00:00:00:00:0a", ports=(Port(protocol="UDP", port=53),))
LAN = attachment("lan", None, bridge="brlan")


def test_the_table_forwards_ports_masquerades_and_accepts_the_bridges() -> None:
    script = nftables.ruleset("vmid0", POOL, [WEB, DNS, LAN])
    lines = [line.strip() for line in script.splitlines()]
    # Replaced as a whole in one transaction, whether or not they existed.
    assert lines[:5] == [
        "table inet vmid {}",
        "delete table inet vmid",
        "table bridge vmid {}",
        "delete table bridge vmid",
        "table inet vmid {",
    ]
    forward = (
        "fib daddr type local ip daddr != 127.0.0.0/8 dnat ip to meta l4proto . th dport map "
        "@forwards"
    )
    assert lines.count(forward) == 2  # prerouting (from outside) and output (from the host)
    assert "elements = { udp . 53 : 10.0.2.3 . 53, tcp . 80 : 10.0.2.2 . 80 }" in lines
    assert "ip saddr 10.0.2.0/24 ip daddr != 10.0.2.0/24 masquerade" in lines
    assert 'iifname "brlan" accept' in lines
    assert 'iifname "vmid0" accept' in lines


def test_stopped_vmis_forward_nothing_and_no_vmi_means_no_table() -> None:
    stopped = attachment("web", "10.0.2.2", ports=(Port(protocol="TCP", port=80),), active=False)
    assert ". 80 :" not in nftables.ruleset("vmid0", POOL, [stopped, DNS])
    assert nftables.ruleset("vmid0", POOL, [stopped]) == (
        "table inet vmid {}\ndelete table inet vmid\n"
        "table bridge vmid {}\ndelete table bridge vmid\n"
    )


def chain(script: str, name: str) -> list[str]:
    """The rules of one chain of the script, stripped."""
    lines = [line.strip() for line in script.splitlines()]
    start = lines.index(f"chain {name} {{") + 1
    return lines[start : lines.index("}", start)]


def test_each_tap_may_send_only_from_its_own_mac_and_address() -> None:
    script = nftables.ruleset("vmid0", POOL, [WEB, DNS, LAN]).split("table bridge vmid {\n")[1]
    assert chain(script, "prerouting")[-1] == "iifname vmap @taps"
    assert (
        'elements = { "vmid-dns" : jump vmid-dns, "vmid-lan" : jump vmid-lan, '
        '"vmid-web" : jump vmid-web }'
    ) in script
    web = chain(script, "vmid-web")
    assert web[0] == "ether saddr != 02:00:00:00:00:0b drop"
    assert "arp saddr ether != 02:00:00:00:00:0b drop" in web
    # ARP and IP only from its own address; DHCP before it has one; nothing else.
    assert web[-4:] == [
        "arp saddr ip { 10.0.2.2, 0.0.0.0 } accept",
        "ip saddr 10.0.2.2 accept",
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
        "drop",
    ]
    # On a host bridge vmid does not know the address: the MAC only.
    lan = chain(script, "vmid-lan")
    assert lan[0] == "ether saddr != 02:00:00:00:00:03 drop"
    assert "arp saddr ether != 02:00:00:00:00:03 drop" in lan
    assert not any("ip" in rule.split()[:2] or rule == "drop" for rule in lan)


def test_host_bridges_alone_get_no_nat() -> None:
    script = nftables.ruleset("vmid0", POOL, [LAN])
    assert "masquerade" not in script
    assert "forwards" not in script


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft")
@pytest.mark.timeout(30)
def test_the_kernel_accepts_the_table_twice_over_in_a_private_namespace() -> None:
    script = nftables.ruleset("vmid0", POOL, [WEB, DNS, LAN])
    empty = nftables.ruleset("vmid0", POOL, [])
    no_ports = nftables.ruleset("vmid0", POOL, [attachment("x", "10.0.2.9")])  # an empty map
    shell = (
        'nft -f - <<<"$1" && nft -f - <<<"$1" && nft -f - <<<"$3" && nft -f - <<<"$2" && '
        "nft list ruleset"
    )
    done = subprocess.run(
        ["unshare", "--net", "--", "bash", "-c", shell, "-", script, empty, no_ports],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""  # the empty script removed the table it had replaced


def test_a_vmi_added_or_removed_changes_only_its_own_chain_and_elements() -> None:
    added = nftables.changes("vmid0", (WEB,), nftables.active([WEB, DNS]))
    assert added is not None
    assert "delete" not in added  # the first VMI's rules stay
    assert "vmid-web" not in added
    lines = added.splitlines()
    assert lines[0] == "create chain bridge vmid vmid-dns"  # fails if one was left over
    assert lines[-2:] == [
        'add element bridge vmid taps { "vmid-dns" : jump vmid-dns }',  # after its guard
        "add element inet vmid forwards { udp . 53 : 10.0.2.3 . 53 }",
    ]
    assert [line.split(" vmid-dns ", 1)[1] for line in lines[1:-2]] == nftables._guard(DNS)
    assert nftables.changes("vmid0", nftables.active([WEB, DNS]), (WEB,)) == (
        "delete element inet vmid forwards { udp . 53 }\n"
        'delete element bridge vmid taps { "vmid-dns" }\n'
        "delete chain bridge vmid vmid-dns\n"
    )
    # A first or last VMI, or a bridge gained or lost, changes the tables' shape.
    assert nftables.changes("vmid0", (), (WEB,)) is None
    assert nftables.changes("vmid0", (WEB,), ()) is None
    assert nftables.changes("vmid0", (WEB,), nftables.active([WEB, LAN])) is None


needs_nft = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft"
)

#: In a private network namespace: apply each script in argv[1] (a JSON list) with `nft -f`,
#: print `nft -j list ruleset` after each, as a JSON list.
APPLY = """
import json, subprocess, sys
listings = []
for script in json.loads(sys.argv[1]):
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    done = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
    listings.append(json.loads(done.stdout)["nftables"])
print(json.dumps(listings))
"""


def listed(scripts: list[str]) -> list[set[str]]:
    """What the kernel holds after each script, applied in order in a private namespace: its
    tables, chains, maps (their elements in any order) and rules, without handles."""
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", APPLY, json.dumps(scripts)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    found = []
    for listing in json.loads(done.stdout):
        items = set()
        for entry in listing:
            for kind, value in entry.items():
                if kind == "metainfo":
                    continue
                value = {k: v for k, v in value.items() if k != "handle"}
                if "elem" in value:
                    value["elem"] = sorted(json.dumps(e, sort_keys=True) for e in value["elem"])
                items.add(f"{kind} {json.dumps(value, sort_keys=True)}")
        found.append(items)
    return found


MOVED = attrs.evolve(WEB, mac="02:00:00:00:00:99", ports=(Port(protocol="TCP", port=81),))
TAKER = attachment("x", "10.0.2.9", ports=(Port(protocol="TCP", port=80),))


@needs_nft
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([WEB], [WEB, DNS]),  # a VMI added
        ([WEB, DNS], [DNS]),  # one removed
        ([WEB, DNS], [MOVED, DNS]),  # one changed (another MAC, another port)
        ([WEB, DNS], [DNS, TAKER]),  # one gone, its port forwarded to the next
        ([WEB, LAN], [DNS, LAN]),  # on a host bridge beside the pod network
    ],
)
def test_a_change_applied_on_its_own_leaves_the_tables_a_full_replace_makes(
    before: list[Attachment], after: list[Attachment]
) -> None:
    old, new = nftables.active(before), nftables.active(after)
    change = nftables.changes("vmid0", old, new)
    assert change is not None
    full = nftables.ruleset("vmid0", POOL, new)
    stepped, replaced = listed([nftables.ruleset("vmid0", POOL, old), change, full])[1:]
    assert stepped == replaced


#: In a private network namespace: vmid's bridge with the taps of argv[2:] (veths: the guard
#: keys on the bridge port's name; frames written to the peer "g-NAME" enter the bridge there),
#: an observer port, the scripts of argv[1] (JSON) applied; then the tap vmid-evil sends what
#: tests/fakeqemu.py's spoofing guest sends, claiming argv[2]'s address, until the observer has
#: seen the probe it may send and a second more. Prints the markers the observer saw, then
#: `nft list ruleset`.
SPOOF = """
import json, socket, subprocess, sys, time
from tests import fakeqemu
def ip(*args):
    subprocess.run(["ip", *args], check=True)
ip("link", "add", "vmid0", "type", "bridge")
for port, peer in [(d, "g-" + d) for d in sys.argv[3:]] + [("obs-b", "obs-g")]:
    ip("link", "add", port, "type", "veth", "peer", "name", peer)
    ip("link", "set", port, "master", "vmid0", "up")
    ip("link", "set", peer, "up")
ip("link", "set", "vmid0", "up")
for script in json.loads(sys.argv[1]):
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
watch = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
watch.bind(("obs-g", 0))
watch.settimeout(0.2)
guest = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
guest.bind(("g-vmid-evil", 0))
mac, victim, other = bytes.fromhex("02000000000e"), sys.argv[2], bytes.fromhex("02ee00000001")
frames = [
    fakeqemu.arp(mac, victim, victim, 2, b"VMID-SPOOF-ARP"),
    fakeqemu.udp(mac, victim, b"VMID-SPOOF-IP"),
    fakeqemu.udp(other, victim, b"VMID-SPOOF-MAC"),
    fakeqemu.arp(mac, "0.0.0.0", victim, 1, b"VMID-PROBE-ARP"),
]
markers = (b"VMID-SPOOF-ARP", b"VMID-SPOOF-IP", b"VMID-SPOOF-MAC", b"VMID-PROBE-ARP")
seen = set()
end = time.monotonic() + 10  # new bridge ports may take a while to forward
while time.monotonic() < end:
    for frame in frames:
        guest.send(frame)
    try:
        while True:
            frame = watch.recv(65536)
            seen.update(m.decode() for m in markers if m in frame)
    except TimeoutError:
        pass
    if "VMID-PROBE-ARP" in seen:  # the port forwards: watch the spoofed frames a while more
        end = min(end, time.monotonic() + 1)
print(" ".join(sorted(seen)))
print(subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout)
"""


@needs_nft
@pytest.mark.timeout(30)
def test_a_guest_added_on_its_own_cannot_spoof_and_one_removed_leaves_nothing() -> None:
    evil = attachment("evil", "10.0.2.14", mac="02:00:00:00:00:0e")
    old = nftables.active([WEB])
    new = nftables.active([WEB, evil])
    added, removed = nftables.changes("vmid0", old, new), nftables.changes("vmid0", new, old)
    assert added is not None
    assert removed is not None
    scripts = [nftables.ruleset("vmid0", POOL, old), added]
    done = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            sys.executable,
            "-c",
            SPOOF,
            json.dumps(scripts),
            WEB.ip or "",
            "vmid-web",
            "vmid-evil",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    seen, rules = done.stdout.split("\n", 1)
    # Its tap works (the probe passed), and what it sent as the victim or another MAC did not.
    assert seen.split() == ["VMID-PROBE-ARP"]
    assert '"vmid-evil" : jump vmid-evil' in rules
    (after,) = listed([*scripts, removed])[-1:]
    assert not [item for item in after if "vmid-evil" in item or "10.0.2.14" in item]
    assert after == listed([nftables.ruleset("vmid0", POOL, old)])[0]


def test_dnsmasq_serves_dhcp_only_on_the_bridge_from_vmids_leases(tmp_path: Path) -> None:
    conf = tmp_path / "dnsmasq.conf"
    args = dnsmasq.argv(
        "vmid0", POOL, POOL.network_address + 1, conf, tmp_path / "pid", ["9.9.9.9"], "nobody"
    )
    assert "--port=0" in args  # no DNS service
    assert "--interface=vmid0" in args
    assert "--bind-interfaces" in args
    assert "--dhcp-range=10.0.2.0,static,255.255.255.0,1h" in args
    assert "--dhcp-option=option:router,10.0.2.1" in args
    assert "--dhcp-option=option:dns-server,9.9.9.9" in args
    # Only vmid's file, never the host's /etc/dnsmasq.conf, and no file read as nobody.
    assert [a for a in args if a.startswith("--conf") or "file=" in a] == [
        f"--conf-file={conf}",
        f"--pid-file={tmp_path / 'pid'}",
    ]
    stopped = attachment("off", "10.0.2.9", mac="02:00:00:00:00:0c", active=False)
    # Stopped VMIs keep their leases: their address is theirs until they are removed.
    assert dnsmasq.leases("vmid0", [WEB, DNS, LAN, stopped]).splitlines() == [
        "dhcp-host=02:00:00:00:00:0a,10.0.2.3",
        "dhcp-host=02:00:00:00:00:0b,10.0.2.2",
        "dhcp-host=02:00:00:00:00:0c,10.0.2.9",
    ]


def test_dnsmasqs_configuration_is_replaced_only_when_it_changes(tmp_path: Path) -> None:
    conf = tmp_path / "dnsmasq.conf"
    assert dnsmasq.write_conf(conf, "dhcp-host=02:00:00:00:00:01,10.0.2.2\n")
    assert not dnsmasq.write_conf(conf, "dhcp-host=02:00:00:00:00:01,10.0.2.2\n")
    assert conf.stat().st_mode & 0o777 == 0o600  # read by dnsmasq as root, before --user


def test_the_problems_dnsmasq_logs_are_told_from_its_dhcp_chatter() -> None:
    said = [
        "dnsmasq[7]: cannot read /r/run/vmid/network/dnsmasq-vmid0.hosts: Permission denied",
        "dnsmasq-dhcp[7]: DHCP packet received on vmid0 which has no address",
        "dnsmasq[7]: failed to send packet: Network is unreachable",
        "dnsmasq-dhcp[7]: 1945665838 DHCPACK(vmid0) 10.0.2.2 02:00:00:00:00:01",
        "dnsmasq-dhcp[7]: DHCP, static leases only on 10.0.2.0, lease time 1h",
        "dnsmasq[7]: started, version 2.90 DNS disabled",
    ]
    assert [dnsmasq.problem(line) for line in said] == [
        "cannot read /r/run/vmid/network/dnsmasq-vmid0.hosts: Permission denied",
        "DHCP packet received on vmid0 which has no address",
        "failed to send packet: Network is unreachable",
        None,
        None,
        None,
    ]


def test_guests_get_the_hosts_resolvers_but_loopback_ones(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch x\n")
    missing = tmp_path / "missing"
    assert dnsmasq.host_resolvers(conf, missing) == ["192.0.2.53"]
    assert dnsmasq.host_resolvers(missing, missing) == []


def test_behind_systemd_resolved_guests_get_the_servers_it_forwards_to(tmp_path: Path) -> None:
    stub = tmp_path / "resolv.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("nameserver 192.0.2.1\nnameserver 198.51.100.7\n")
    assert dnsmasq.host_resolvers(stub, upstream) == ["192.0.2.1", "198.51.100.7"]
