"""The pod network and host bridges under the real daemon, with fake QEMUs (no guest).

The daemon runs in a network namespace of its own (tests/daemon.py); the tests look inside it
with `nsenter`. What a guest sees (DHCP, forwarded ports, pings) is in test_network_e2e.py.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, fake_config, running_daemon
from vmid.plan.nics import tap_name

BUSYBOX = shutil.which("busybox") or "/bin/busybox"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="links and nftables need root (in a netns)"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
    pytest.mark.timeout(120),
]


def vmi(
    name: str, network: str = "pod: {}", binding: str = "masquerade: {}", ports: str = ""
) -> str:
    return f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 5
  domain:
    memory: {{guest: 64Mi}}
    firmware: {{serial: obey}}
    devices:
      interfaces:
      - name: net
        {binding}
        {ports}
  networks:
  - name: net
    {network}
"""


def inside(daemon: Daemon, *command: str) -> str:
    """Run `command` in the daemon's network namespace; its stdout."""
    done = subprocess.run(
        ["nsenter", f"--net=/proc/{daemon.process.pid}/ns/net", "--", *command],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout


def links(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(inside(daemon, "ip", "-j", "-d", "link"))}


def interface(daemon: Daemon, name: str) -> dict[str, Any]:
    status = daemon.status(name)
    assert status is not None
    (first,) = status["status"]["interfaces"]
    return dict(first)


def registry(daemon: Daemon) -> list[dict[str, Any]]:
    path = daemon.root / "var/lib/vmid/network/attachments.json"
    return list(json.loads(path.read_text())["attachments"])


def assert_nothing_left(daemon: Daemon) -> None:
    assert [n for n in links(daemon) if n.startswith("vmid") and n != "vmid0"] == []
    assert registry(daemon) == []
    assert "vmid" not in inside(daemon, "nft", "list", "ruleset")  # neither table


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path, fake_config()) as daemon:
        yield daemon


def test_a_pod_interface_gets_an_address_a_tap_on_vmid0_and_a_forward(daemon: Daemon) -> None:
    daemon.drop("web.yaml", vmi("web", ports="ports: [{port: 8080}]"))
    daemon.wait_phase("web", "Running")
    nic = interface(daemon, "web")
    assert nic["ipAddress"] == "10.0.2.2"
    assert nic["ipAddresses"] == ["10.0.2.2"]
    assert nic["linkState"] == "up"
    tap = links(daemon)[nic["podInterfaceName"]]
    assert tap["master"] == "vmid0"
    assert tap["linkinfo"]["info_kind"] == "tun"
    assert "10.0.2.1/24" in inside(daemon, "ip", "-br", "addr", "show", "vmid0")
    rules = inside(daemon, "nft", "list", "table", "inet", "vmid")
    assert "tcp . 8080 : 10.0.2.2 . 8080" in rules  # the map of forwards
    lease = lease_dir(daemon) / f"{nic['mac'].replace(':', '-')}-10.0.2.2"
    assert lease.read_text() == f"{nic['mac']},10.0.2.2\n"
    assert "web" in daemon.vmid("get").stdout.split("10.0.2.2")[0]

    (daemon.spool / "web.yaml").unlink()
    daemon.wait_phase("web", None)
    assert_nothing_left(daemon)
    assert list(lease_dir(daemon).iterdir()) == []


def lease_dir(daemon: Daemon) -> Path:
    """dnsmasq's directory of lease files."""
    return daemon.root / "run/vmid/network/dnsmasq-vmid0.d"


def test_a_port_forwarded_to_one_vmi_fails_the_next_and_spares_the_first(daemon: Daemon) -> None:
    daemon.drop("a.yaml", vmi("a", ports="ports: [{port: 8000}]"))
    daemon.wait_phase("a", "Running")
    daemon.drop("b.yaml", vmi("b", ports="ports: [{port: 8000, name: http}]"))
    daemon.wait_phase("b", "Failed")
    assert "port TCP/8000 is already forwarded to VMI default/a" in daemon.reason("b")
    assert daemon.phase("a") == "Running"
    assert [r["vmi"] for r in registry(daemon)] == ["default/a"]  # b's attempt left nothing behind
    assert len([n for n in links(daemon) if n.startswith("vmid") and n != "vmid0"]) == 1


def vmid_links(daemon: Daemon) -> list[str]:
    return sorted(n for n in links(daemon) if n.startswith("vmid") and n != "vmid0")


def test_a_tap_name_collision_fails_the_second_vmi_and_spares_the_firsts_tap(
    tmp_path: Path,
) -> None:
    # Force the collision inside the daemon: VMI b's tap is named as VMI a's.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "from vmid.plan import nics\n"
        "real = nics.tap_name\n"
        "nics.tap_name = lambda vmi, iface: real('a' if vmi == 'b' else vmi, iface)\n"
    )
    env = {"PYTHONPATH": f"{shim}:{os.environ.get('PYTHONPATH', '')}"}
    with running_daemon(tmp_path, fake_config(), env=env) as daemon:
        daemon.drop("a.yaml", vmi("a"))
        daemon.wait_phase("a", "Running")
        tap = interface(daemon, "a")["podInterfaceName"]
        daemon.drop("b.yaml", vmi("b"))
        daemon.wait_phase("b", "Failed")
        assert daemon.phase("a") == "Running"
        assert links(daemon)[tap]["master"] == "vmid0"  # b's cleanup left a's tap alone
        assert (
            f"tap name {tap} collides with the tap of VMI default/a (interface net)"
            in daemon.reason("b")
        )
        assert [r["vmi"] for r in registry(daemon)] == ["default/a"]


def test_a_link_vmid_did_not_make_is_neither_taken_nor_deleted(daemon: Daemon) -> None:
    foreign = tap_name("b", "net")
    inside(daemon, "ip", "tuntap", "add", "mode", "tap", "name", foreign)
    daemon.drop("b.yaml", vmi("b"))
    daemon.wait_phase("b", "Failed")
    assert f"a link named {foreign} (this interface's tap name) exists already" in daemon.reason(
        "b"
    )
    assert "vmid did not make it for this VMI" in daemon.reason("b")
    assert "master" not in links(daemon)[foreign]  # not put on vmid's bridge
    (daemon.spool / "b.yaml").unlink()
    daemon.wait_phase("b", None)
    assert vmid_links(daemon) == [foreign]  # b's cleanup did not delete it
    assert not (daemon.root / "var/lib/vmid/network/attachments.json").exists()  # no claim


#: Listen on a link for N seconds; print the markers of tests/fakeqemu.py's frames seen there.
WATCH = """
import socket, sys, time
markers = (b"VMID-SPOOF-ARP", b"VMID-SPOOF-IP", b"VMID-SPOOF-MAC", b"VMID-PROBE-ARP")
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((sys.argv[1], 0))
sock.settimeout(0.2)
seen = set()
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        frame = sock.recv(65536)
    except TimeoutError:
        continue
    seen.update(m.decode() for m in markers if m in frame)
print(" ".join(sorted(seen)))
"""


def test_a_guest_cannot_claim_another_vmis_address_or_send_from_another_mac(
    daemon: Daemon,
) -> None:
    daemon.drop("a.yaml", vmi("a"))
    daemon.wait_phase("a", "Running")
    victim = interface(daemon, "a")["ipAddress"]
    # A guest that answers ARP for a's address and sends from it (tests/fakeqemu.py spoof-IP).
    daemon.drop("evil.yaml", vmi("evil").replace("serial: obey", f"serial: spoof-{victim}"))
    daemon.wait_phase("evil", "Running")
    # Another port on the bridge (a neighbour, as the host is) sees what the bridge lets by.
    inside(daemon, "ip", "link", "add", "obs-g", "type", "veth", "peer", "name", "obs-b")
    inside(daemon, "ip", "link", "set", "obs-b", "master", "vmid0", "up")
    inside(daemon, "ip", "link", "set", "obs-g", "up")
    seen = inside(daemon, sys.executable, "-c", WATCH, "obs-g", "3").split()
    assert seen == ["VMID-PROBE-ARP"]  # the guest's tap works; its spoofed frames went nowhere
    neighbours = inside(daemon, "ip", "neigh", "show", "dev", "vmid0")
    assert interface(daemon, "evil")["mac"] not in neighbours
    assert daemon.phase("a") == "Running"


#: Sockets as host services hold them: TCP 0.0.0.0:8080, UDP [::]:8053 (dual-stack), and TCP
#: 127.0.0.1:8082 (loopback, which no forward takes). Prints "ready" once they are bound.
LISTEN = """
import socket, sys, time
tcp = socket.create_server(("0.0.0.0", 8080))
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind(("::", 8053))
local = socket.create_server(("127.0.0.1", 8082))
print("ready", flush=True)
time.sleep(120)
"""


def test_a_port_a_host_process_listens_on_fails_the_vmi_naming_the_listener(
    daemon: Daemon,
) -> None:
    namespace = f"--net=/proc/{daemon.process.pid}/ns/net"
    service = subprocess.Popen(
        ["nsenter", namespace, "--", sys.executable, "-c", LISTEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        assert service.stdout.readline() == "ready\n"
        daemon.drop("web.yaml", vmi("web", ports="ports: [{port: 8081}, {port: 8080}]"))
        daemon.drop("dns.yaml", vmi("dns", ports="ports: [{port: 8053, protocol: UDP}]"))
        daemon.drop("ok.yaml", vmi("ok", ports="ports: [{port: 8082}, {port: 8053}]"))
        daemon.wait_phase("web", "Failed")
        daemon.wait_phase("dns", "Failed")
        daemon.wait_phase("ok", "Running")  # TCP/8053 and loopback's 8082 are free to forward
        assert re.search(
            rf"port TCP/8080 is in use on this host by \S+ \(pid {service.pid}\) listening on "
            r"0\.0\.0\.0:8080",
            daemon.reason("web"),
        ), daemon.reason("web")
        assert "port UDP/8053 is in use on this host by" in daemon.reason("dns")
        assert "listening on [::]:8053" in daemon.reason("dns")
        rules = inside(daemon, "nft", "list", "table", "inet", "vmid")
        assert ". 8080 :" not in rules
        assert ". 8081 :" not in rules
        assert "tcp . 8082 :" in rules
    finally:
        service.kill()
        service.wait()
        if service.stdout is not None:
            service.stdout.close()


def test_ports_outside_the_configured_range_and_too_many_ports_are_refused(
    tmp_path: Path,
) -> None:
    config = fake_config("podNetwork: {publishPorts: {min: 2000, max: 3000}}\n")
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("low.yaml", vmi("low", ports="ports: [{port: 2500}, {port: 80}]"))
        many = ", ".join(f"{{port: {n}}}" for n in range(10000, 11000))
        daemon.drop("many.yaml", vmi("many", ports=f"ports: [{many}]"))
        daemon.drop("ok.yaml", vmi("ok", ports="ports: [{port: 2000}, {port: 3000}]"))
        daemon.wait_phase("low", "Failed")
        daemon.wait_phase("many", "Failed")
        daemon.wait_phase("ok", "Running")
        assert (
            "spec.domain.devices.interfaces[0].ports[1].port: port 80 is outside the range of "
            "host ports vmid.yaml allows to forward (podNetwork.publishPorts: 2000-3000)"
        ) in daemon.reason("low")
        assert (
            "spec.domain.devices.interfaces[0].ports list exceeds the 256 element limit in length"
        ) in daemon.reason("many")
        rules = inside(daemon, "nft", "list", "table", "inet", "vmid")
        assert ". 2500 :" not in rules
        assert ". 10000 :" not in rules
        assert "tcp . 3000 :" in rules


def test_a_multus_network_puts_the_tap_on_the_mapped_host_bridge(tmp_path: Path) -> None:
    config = fake_config("multusBridges: {lan: brlan}\n")
    with running_daemon(tmp_path, config) as daemon:
        inside(daemon, "ip", "link", "add", "brlan", "type", "bridge")
        daemon.drop("lan.yaml", vmi("lan", "multus: {networkName: lan}", "bridge: {}"))
        daemon.drop("gone.yaml", vmi("gone", "multus: {networkName: nowhere}", "bridge: {}"))
        daemon.wait_phase("lan", "Running")
        daemon.wait_phase("gone", "Failed")
        nic = interface(daemon, "lan")
        assert "ipAddress" not in nic  # the LAN's own DHCP gives it, not vmid
        assert links(daemon)[nic["podInterfaceName"]]["master"] == "brlan"
        assert "vmid0" not in links(daemon)  # no pod network was needed
        # Its tap may send from its own MAC only, pod network or not.
        guard = inside(daemon, "nft", "list", "chain", "bridge", "vmid", nic["podInterfaceName"])
        assert f"ether saddr != {nic['mac']} drop" in guard
        assert "bridge nowhere, which does not exist on this host" in daemon.reason("gone")
        assert "multusBridges" in daemon.reason("gone")
        (daemon.spool / "lan.yaml").unlink()
        daemon.wait_phase("lan", None)
        assert "brlan" in links(daemon)  # the host's bridge is not vmid's to remove
        assert [n for n in links(daemon) if n.startswith("vmid")] == []


def test_an_exhausted_pool_fails_the_vmi_that_finds_it_so(tmp_path: Path) -> None:
    config = fake_config("podNetwork: {cidr: 10.9.0.0/30}\n")  # .1 the gateway, .2 one guest
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("one.yaml", vmi("one"))
        daemon.wait_phase("one", "Running")
        daemon.drop("two.yaml", vmi("two"))
        daemon.wait_phase("two", "Failed")
        assert "the pod network 10.9.0.0/30 has no free address" in daemon.reason("two")
        assert interface(daemon, "one")["ipAddress"] == "10.9.0.2"
        assert daemon.phase("one") == "Running"


def test_stopping_the_daemon_removes_its_bridge_rules_and_dnsmasq(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("web.yaml", vmi("web", ports="ports: [{port: 8000}]"))
        daemon.wait_phase("web", "Running")
        dnsmasq = int((tmp_path / "run/vmid/network/dnsmasq-vmid0.pid").read_text())
        namespace = f"/proc/{daemon.process.pid}/ns/net"
        keeper = subprocess.Popen(["nsenter", f"--net={namespace}", "--", "sleep", "60"])
        try:
            daemon.process.send_signal(signal.SIGTERM)
            assert daemon.process.wait(timeout=30) == 0
            done = subprocess.run(
                [
                    "nsenter",
                    f"--net=/proc/{keeper.pid}/ns/net",
                    "--",
                    "sh",
                    "-c",
                    "ip -br link; nft list ruleset",
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
        finally:
            keeper.kill()
            keeper.wait()
    assert "vmid" not in done.stdout
    assert (
        not Path(f"/proc/{dnsmasq}").exists()
        or "dnsmasq" not in Path(f"/proc/{dnsmasq}/cmdline").read_text()
    )


@pytest.fixture
def netns() -> Iterator[str]:
    """A named network namespace that outlives one daemon, for crash-and-restart tests."""
    name = f"vmid-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def test_after_a_daemon_crash_the_next_one_frees_what_the_gone_vmis_held(
    tmp_path: Path, netns: str
) -> None:
    prefix = ("ip", "netns", "exec", netns)
    with running_daemon(tmp_path, fake_config(), prefix=prefix) as daemon:
        daemon.drop("a.yaml", vmi("a", ports="ports: [{port: 8000}]"))
        daemon.drop("b.yaml", vmi("b"))
        daemon.wait_phase("a", "Running")
        daemon.wait_phase("b", "Running")
        tap_a = interface(daemon, "a")["podInterfaceName"]
        address_b = interface(daemon, "b")["ipAddress"]
        qemu_a = daemon.pid("a")
        daemon.process.kill()  # no cleanup at all
        daemon.process.wait()
        os.kill(qemu_a, signal.SIGKILL)
        (daemon.spool / "a.yaml").unlink()
    with running_daemon(tmp_path, fake_config(), prefix=prefix) as daemon:
        daemon.wait_for(
            "a's addresses to be released",
            lambda: [r["vmi"] for r in registry(daemon)] == ["default/b"],
        )
        daemon.wait_for("a's tap to go", lambda: tap_a not in links(daemon))
        assert daemon.phase("b") == "Running"  # re-adopted, its tap and address kept
        assert interface(daemon, "b")["ipAddress"] == address_b
        rules = inside(daemon, "nft", "list", "ruleset")
        assert ". 8000 :" not in rules
        (daemon.spool / "b.yaml").unlink()
        daemon.wait_phase("b", None)
        assert_nothing_left(daemon)


def test_what_a_crashed_daemon_left_goes_even_if_no_vm_needs_the_pod_network(
    tmp_path: Path, netns: str
) -> None:
    prefix = ("ip", "netns", "exec", netns)
    with running_daemon(tmp_path, fake_config(), prefix=prefix) as daemon:
        daemon.drop("a.yaml", vmi("a"))
        daemon.wait_phase("a", "Running")
        dnsmasq = int((tmp_path / "run/vmid/network/dnsmasq-vmid0.pid").read_text())
        qemu = daemon.pid("a")
        daemon.process.kill()  # no cleanup at all
        daemon.process.wait()
        os.kill(qemu, signal.SIGKILL)
        (daemon.spool / "a.yaml").unlink()
    with running_daemon(tmp_path, fake_config(), prefix=prefix) as daemon:
        daemon.wait_for("the bridge to go", lambda: "vmid0" not in links(daemon))
        assert_nothing_left(daemon)
        assert not _runs(dnsmasq, "dnsmasq")


def test_a_daemon_of_another_root_leaves_this_ones_pod_network_alone(tmp_path: Path) -> None:
    """Two vmids (two --root) in one network namespace: one starting or stopping with no pod
    VM must not take the other's bridge, tables or dnsmasq away."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with running_daemon(first, fake_config()) as daemon:
        daemon.drop("web.yaml", vmi("web"))
        daemon.wait_phase("web", "Running")
        namespace = ("nsenter", f"--net=/proc/{daemon.process.pid}/ns/net", "--")
        with running_daemon(second, fake_config(), prefix=namespace) as other:
            other.process.send_signal(signal.SIGTERM)
            assert other.process.wait(timeout=30) == 0
        assert "vmid0" in links(daemon)
        assert "table inet vmid" in inside(daemon, "nft", "list", "ruleset")
        assert daemon.phase("web") == "Running"


def _runs(pid: int, program: str) -> bool:
    try:
        return program in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def dhcp_lease(daemon: Daemon, mac: str) -> str:
    """The address vmid's dnsmasq gives `mac`: udhcpc on a veth whose peer is on vmid0."""
    script = f"""
ip link add vmidtest-g type veth peer name vmidtest-b
ip link set vmidtest-b master vmid0 up
ip link set vmidtest-g address {mac} up
{BUSYBOX} udhcpc -i vmidtest-g -n -q -f -t 10 -T 1 -s /bin/true 2>&1
status=$?
ip link del vmidtest-g
exit $status
"""
    out = inside(daemon, "sh", "-ec", script)
    found = re.search(r"lease of (\S+) obtained", out)
    assert found, out
    return found.group(1)


def test_dnsmasq_gives_each_vmi_its_address_and_a_freed_one_to_the_next(tmp_path: Path) -> None:
    config = fake_config("podNetwork: {cidr: 10.0.2.0/29}\n")  # .2-.6 for guests
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("a.yaml", vmi("a"))
        daemon.wait_phase("a", "Running")
        first = interface(daemon, "a")
        assert dhcp_lease(daemon, first["mac"]) == first["ipAddress"] == "10.0.2.2"
        serving = dnsmasq_pid(daemon)
        daemon.drop("b.yaml", vmi("b"))
        daemon.wait_phase("b", "Running")
        assert dhcp_lease(daemon, interface(daemon, "b")["mac"]) == "10.0.2.3"
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_phase("a", None)
        for name in ("c", "d", "e"):  # a freed address is handed out last: .4, .5, .6
            daemon.drop(f"{name}.yaml", vmi(name))
            daemon.wait_phase(name, "Running")
        assert interface(daemon, "e")["ipAddress"] == "10.0.2.6"
        # The pool wraps: a's old address, which dnsmasq remembered leasing to a until vmid
        # released it (the same dnsmasq serves all along: no restart forgot it).
        daemon.drop("f.yaml", vmi("f"))
        daemon.wait_phase("f", "Running")
        last = interface(daemon, "f")
        assert last["ipAddress"] == "10.0.2.2"
        assert last["mac"] != first["mac"]
        assert dhcp_lease(daemon, last["mac"]) == "10.0.2.2"
        assert dhcp_lease(daemon, interface(daemon, "b")["mac"]) == "10.0.2.3"
        assert dnsmasq_pid(daemon) == serving
        assert "dnsmasq on vmid0:" not in daemon.log_text()  # no problem reported


def dnsmasq_pid(daemon: Daemon) -> int:
    return int((daemon.root / "run/vmid/network/dnsmasq-vmid0.pid").read_text())


def dhcp_condition(daemon: Daemon, name: str) -> dict[str, str] | None:
    status = daemon.status(name)
    assert status is not None
    found = [c for c in status["status"]["conditions"] if c["type"] == "DHCPReady"]
    return found[0] if found else None


def dhcp_events(daemon: Daemon, name: str) -> list[str]:
    """The DHCP events of VMI `name` (`vmid events NAME`, as `describe` shows them), oldest
    first, as `TYPE REASON MESSAGE`."""
    listed = daemon.vmid("events", name, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)["items"]
    return [
        f"{e['type']} {e['reason']} {e['message']}" for e in found if "DHCPServer" in e["reason"]
    ]


def test_new_leases_reach_dnsmasq_without_a_restart_in_files_only_its_group_reads(
    daemon: Daemon,
) -> None:
    daemon.drop("a.yaml", vmi("a"))
    daemon.wait_phase("a", "Running")
    serving = dnsmasq_pid(daemon)
    daemon.drop("b.yaml", vmi("b"))
    daemon.wait_phase("b", "Running")
    nic = interface(daemon, "b")
    assert dhcp_lease(daemon, nic["mac"]) == nic["ipAddress"]
    assert dnsmasq_pid(daemon) == serving  # it read b's lease as it runs
    nobody = pwd.getpwnam("nobody")
    hosts = lease_dir(daemon).stat()
    assert (hosts.st_uid, hosts.st_gid, stat.S_IMODE(hosts.st_mode)) == (0, nobody.pw_gid, 0o2750)
    lease = (lease_dir(daemon) / f"{nic['mac'].replace(':', '-')}-{nic['ipAddress']}").stat()
    assert (lease.st_uid, lease.st_gid, stat.S_IMODE(lease.st_mode)) == (0, nobody.pw_gid, 0o640)
    network = (daemon.root / "run/vmid/network").stat()
    assert stat.S_IMODE(network.st_mode) == 0o711  # searchable, listed by root only
    assert "dnsmasq on vmid0:" not in daemon.log_text()  # it could read them


def test_a_root_closed_to_others_still_gives_guests_their_dhcp_leases(tmp_path: Path) -> None:
    # A --root made by `mktemp -d` (0700): dnsmasq, once it has dropped to nobody, cannot reach
    # anything under it, and must not need to. (QEMU's own uid could not reach it either.)
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    with running_daemon(root, fake_config("qemuAsRoot: true\n"), open_root=False) as daemon:
        assert root.stat().st_mode & 0o777 == 0o700
        for name in ("a", "b"):  # the first start of dnsmasq, then a restart for b's lease
            daemon.drop(f"{name}.yaml", vmi(name))
            daemon.wait_phase(name, "Running")
            nic = interface(daemon, name)
            assert dhcp_lease(daemon, nic["mac"]) == nic["ipAddress"]
        assert "dnsmasq on vmid0:" not in daemon.log_text()  # no problem reported
        conf = root / "run/vmid/network/dnsmasq-vmid0.conf"
        assert conf.stat().st_mode & 0o777 == 0o600  # dnsmasq's user cannot read it at all
        assert f"dhcp-host={nic['mac']},{nic['ipAddress']}" in conf.read_text()
        assert not lease_dir(daemon).exists()  # no lease file its user could not reach
        assert stat.S_IMODE((root / "run/vmid/network").stat().st_mode) == 0o700


def test_a_killed_dnsmasq_is_reported_restarted_and_serves_again(daemon: Daemon) -> None:
    daemon.drop("a.yaml", vmi("a"))
    daemon.wait_phase("a", "Running")
    first = dnsmasq_pid(daemon)
    os.kill(first, signal.SIGKILL)

    def served_again() -> bool:
        condition = dhcp_condition(daemon, "a")
        return condition is not None and condition["status"] == "True"

    daemon.wait_for("a new dnsmasq serving a", served_again)
    assert dnsmasq_pid(daemon) != first
    said = [line for line in daemon.log_text().splitlines() if "dnsmasq on vmid0:" in line]
    assert len(said) == 1, said  # one line for the one event
    assert said[0].endswith(
        "ERROR vmid.runtime.network: dnsmasq on vmid0: killed by SIGKILL; restarting in 1 s"
    )
    assert "dnsmasq on vmid0 serves again" in daemon.log_text()
    failed, recovered = dhcp_events(daemon, "a")
    assert failed.split(None, 2) == [
        "Warning",
        "DHCPServerFailed",
        "vmid's DHCP server (dnsmasq): killed by SIGKILL; restarting in 1 s",
    ]
    assert recovered.split()[:2] == ["Normal", "DHCPServerRecovered"]
    nic = interface(daemon, "a")
    assert dhcp_lease(daemon, nic["mac"]) == nic["ipAddress"]


def test_a_dnsmasq_that_cannot_start_again_is_reported_and_fails_new_vmis(daemon: Daemon) -> None:
    daemon.drop("a.yaml", vmi("a"))
    daemon.wait_phase("a", "Running")
    os.kill(dnsmasq_pid(daemon), signal.SIGKILL)
    # Another program takes the DHCP port before dnsmasq is restarted (a second later).
    squat = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        s.bind(('0.0.0.0', 67)); break\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
        "print('bound', flush=True); time.sleep(120)\n"
    )
    namespace = f"--net=/proc/{daemon.process.pid}/ns/net"
    squatter = subprocess.Popen(
        ["nsenter", namespace, "--", sys.executable, "-c", squat],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline() == "bound\n"

        def told() -> bool:
            condition = dhcp_condition(daemon, "a")
            return condition is not None and "failed to bind" in condition["message"]

        daemon.wait_for("a to be told dnsmasq cannot start", told)
        condition = dhcp_condition(daemon, "a")
        assert condition is not None
        assert condition["status"] == "False"
        assert condition["reason"] == "DHCPServerFailed"
        assert "failed to bind DHCP server socket: Address already in use" in condition["message"]
        assert daemon.phase("a") == "Running"  # its guest keeps the lease it has
        # A new VMI would show an address its guest never gets: it fails, saying why.
        daemon.drop("b.yaml", vmi("b"))
        daemon.wait_phase("b", "Failed")
        assert "DHCP server for the pod network (dnsmasq on vmid0) does not serve" in (
            daemon.reason("b")
        )
        assert "Address already in use" in daemon.reason("b")
    finally:
        squatter.kill()
        squatter.communicate()

    def served_again() -> bool:
        condition = dhcp_condition(daemon, "a")
        return condition is not None and condition["status"] == "True"

    daemon.wait_for("dnsmasq to serve again", served_again, timeout=60)
    nic = interface(daemon, "a")
    assert dhcp_lease(daemon, nic["mac"]) == nic["ipAddress"]


def test_a_problem_dnsmasq_logs_is_reported_once_until_it_serves_again(daemon: Daemon) -> None:
    daemon.drop("a.yaml", vmi("a"))
    daemon.wait_phase("a", "Running")
    nic = interface(daemon, "a")
    inside(daemon, "ip", "addr", "flush", "dev", "vmid0")  # the gateway address, gone
    script = f"""
ip link add vmidtest-g type veth peer name vmidtest-b
ip link set vmidtest-b master vmid0 up
ip link set vmidtest-g address {nic["mac"]} up
{BUSYBOX} udhcpc -i vmidtest-g -n -q -f -t 3 -T 1 -s /bin/true 2>&1 || true
ip link del vmidtest-g
"""
    assert "no lease" in inside(daemon, "sh", "-ec", script)  # three DISCOVERs unanswered

    def told() -> bool:
        condition = dhcp_condition(daemon, "a")
        return condition is not None and condition["status"] == "False"

    daemon.wait_for("a to be told", told)
    problem = "DHCP packet received on vmid0 which has no address"
    condition = dhcp_condition(daemon, "a")
    assert condition is not None
    assert condition["message"] == f"vmid's DHCP server (dnsmasq): {problem}"
    said = [line for line in daemon.log_text().splitlines() if "dnsmasq on vmid0:" in line]
    assert [line.split(" ", 2)[2] for line in said] == [
        f"ERROR vmid.runtime.network: dnsmasq on vmid0: {problem}"
    ]
    assert [e.split(None, 1)[0] for e in dhcp_events(daemon, "a")] == ["Warning"]
    # Mended; the next start of dnsmasq (here for b's lease) serves again, and says so.
    inside(daemon, "ip", "addr", "add", "10.0.2.1/24", "dev", "vmid0")
    daemon.drop("b.yaml", vmi("b"))
    daemon.wait_phase("b", "Running")
    condition = dhcp_condition(daemon, "a")
    assert condition is not None
    assert condition["status"] == "True"
    assert dhcp_lease(daemon, nic["mac"]) == nic["ipAddress"]


def test_a_pod_network_changed_by_a_reload_waits_for_a_restart(daemon: Daemon) -> None:
    daemon.drop("a.yaml", vmi("a"))
    daemon.wait_phase("a", "Running")
    config = daemon.root / "etc/vmid/vmid.yaml"
    config.write_text(config.read_text() + "podNetwork: {bridge: vmid9, cidr: 10.9.0.0/24}\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("the reload", lambda: "configuration reloaded" in daemon.log_text())
    assert "podNetwork changes apply after a restart of vmid" in daemon.log_text()
    daemon.drop("b.yaml", vmi("b"))
    daemon.wait_phase("b", "Running")  # planned and attached on the running pod network
    nic = interface(daemon, "b")
    assert nic["ipAddress"].startswith("10.0.2.")
    assert links(daemon)[nic["podInterfaceName"]]["master"] == "vmid0"


def test_dnsmasq_logging_every_dhcp_request_keeps_its_log_bounded(tmp_path: Path) -> None:
    config = fake_config("logs: {maxSize: 4Ki, maxBackups: 1}\n")
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("a.yaml", vmi("a"))
        daemon.wait_phase("a", "Running")
        nic = interface(daemon, "a")
        log = tmp_path / "var/log/vmid/dnsmasq-vmid0.log"
        for _ in range(4):  # --log-dhcp: a score of lines per lease, ~1.2 KiB
            assert dhcp_lease(daemon, nic["mac"]) == nic["ipAddress"]
        daemon.wait_for("a rotation", lambda: log.with_name(f"{log.name}.1").exists())
        files = sorted(log.parent.glob("dnsmasq-vmid0.log*"))
        assert [f.name for f in files] == ["dnsmasq-vmid0.log", "dnsmasq-vmid0.log.1"]
        assert all(f.stat().st_size <= 4096 for f in files)
        assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
        assert "DHCPACK(vmid0)" in "".join(f.read_text() for f in files)
