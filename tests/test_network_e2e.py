"""The pod network as a guest sees it: DHCP, the host reaching it, a forwarded port, a peer.

Real daemon, real QEMU (TCG), the test guest (tests/guest: udhcpc, httpd on port 80, and
`vmid-test-ping: ADDR`); the daemon in a network namespace of its own, looked into with nsenter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.test_e2e import SEED, SEED_IMAGE, console, guest_image  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="links and nftables need root (in a netns)"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
    pytest.mark.timeout(300),
]

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)


def guest(name: str, interface: str, user_data: str = "") -> str:
    """The seed example, renamed, with one pod-network interface and extra user-data lines."""
    text = SEED.read_text().replace("name: testvmi-nocloud", f"name: {name}")
    text = text.replace("    devices:\n", f"    devices:\n      interfaces:\n{interface}", 1)
    text = text.replace("  volumes:\n", "  networks:\n  - name: default\n    pod: {}\n  volumes:\n")
    return text.replace("        password: fedora", f"        password: fedora{user_data}")


def inside(daemon: Daemon, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{daemon.process.pid}/ns/net", "--", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


def guest_ip(daemon: Daemon, name: str) -> str:
    """The address the guest says udhcpc bound (waits for it)."""
    found: list[str] = []

    def bound() -> bool:
        # A whole line: the console log may hold the first half of one (seen: "ip=10.").
        found[:] = re.findall(r"VMID-GUEST: ip=(\S+)\r?\n", console(daemon, name))
        return bool(found)

    daemon.wait_for(f"{name} to get an address by DHCP", bound, timeout=180)
    return found[-1]


def status_ip(daemon: Daemon, name: str) -> str:
    status = daemon.status(name)
    assert status is not None
    return str(status["status"]["interfaces"][0]["ipAddress"])


@pytest.fixture
def daemon(tmp_path: Path, guest_image: Path) -> Iterator[Daemon]:  # noqa: F811
    config = "accelerator: tcg\npodNetwork: {publishPorts: {min: 80}}\n"  # the guest serves 80
    with running_daemon(tmp_path, config) as daemon:
        imported = daemon.vmid("image", "import", SEED_IMAGE, str(guest_image))
        assert imported.returncode == 0, imported.stderr
        yield daemon


def test_guests_get_their_status_address_serve_a_forwarded_port_and_reach_each_other(
    daemon: Daemon,
) -> None:
    web = "      - name: default\n        masquerade: {}\n        ports:\n        - port: 80\n"
    daemon.drop("web.yaml", guest("web", web))
    daemon.wait_phase("web", "Running")
    address = status_ip(daemon, "web")  # known before the guest asks
    assert guest_ip(daemon, "web") == address
    assert inside(daemon, BUSYBOX, "ping", "-c", "1", "-W", "5", address).returncode == 0
    # The host's own address on the bridge, port 80: forwarded to the guest's httpd.
    page = inside(daemon, sys.executable, "-c", FETCH, "http://10.0.2.1:80/")
    assert page.stdout.strip() == "VMID-GUEST-HTTP web"

    peer = "      - name: default\n        bridge: {}\n"
    daemon.drop("peer.yaml", guest("peer", peer, f"\n        # vmid-test-ping: {address}"))
    daemon.wait_phase("peer", "Running")
    assert guest_ip(daemon, "peer") == status_ip(daemon, "peer") != address
    daemon.wait_for(
        "peer to ping web",
        lambda: f"VMID-GUEST: ping {address} ok" in console(daemon, "peer"),
        timeout=120,
    )

    (daemon.spool / "web.yaml").unlink()
    (daemon.spool / "peer.yaml").unlink()
    daemon.wait_phase("web", None, timeout=60)
    daemon.wait_phase("peer", None, timeout=60)
    names = [link["ifname"] for link in json.loads(inside(daemon, "ip", "-j", "link").stdout)]
    assert [n for n in names if n.startswith("vmid") and n != "vmid0"] == []
    assert "table inet vmid" not in inside(daemon, "nft", "list", "ruleset").stdout
    registry = daemon.root / "var/lib/vmid/network/attachments.json"
    assert json.loads(registry.read_text())["attachments"] == []
