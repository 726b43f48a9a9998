"""The guest agent end to end: the daemon, QEMU (TCG), and the test guest's real qemu-ga.

The test guest (tests/guest) runs Debian's qemu-ga on its virtio-serial port (restarted by its
init whenever it ends), unless its user-data says `vmid-test: no-agent`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from tests.test_e2e import SEED_IMAGE, UNSHARE, console, guest_image  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="taps need root (in a private netns)"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
    pytest.mark.timeout(300),
]

#: A host bridge for a multus network, made in the daemon's network namespace.
MULTUS_BRIDGE = "br-static"


def manifest(
    name: str, user_data: list[str], multus: bool = False, probes: str = "", data: bool = False
) -> str:
    """The test guest; `data`: with a blank disk of serial DATA (`vmid-test-fs: DATA` puts a
    file system on it)."""
    interfaces = "      - name: default\n        masquerade: {}\n"
    networks = "  - name: default\n    pod: {}\n"
    disks = volumes = ""
    if data:
        disks = "      - name: data\n        serial: DATA\n        disk: {bus: virtio}\n"
        volumes = "  - name: data\n    emptyDisk: {capacity: 16Mi}\n"
    if multus:
        interfaces += "      - name: net1\n        bridge: {}\n"
        networks += f"  - name: net1\n    multus: {{networkName: {MULTUS_BRIDGE}}}\n"
    lines = "".join(f"        {line}\n" for line in ["#cloud-config", *user_data])
    return f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 30
{probes}  domain:
    memory: {{guest: 256Mi}}
    devices:
      disks:
      - name: root
        disk: {{bus: virtio}}
      - name: cloudinit
        disk: {{bus: virtio}}
{disks}      interfaces:
{interfaces}  networks:
{networks}  volumes:
  - name: root
    containerDisk: {{image: {SEED_IMAGE}}}
{volumes}  - name: cloudinit
    cloudInitNoCloud:
      userData: |-
{lines}"""


@pytest.fixture
def daemon(tmp_path: Path, guest_image: Path) -> Iterator[Daemon]:  # noqa: F811
    with running_daemon(tmp_path, "accelerator: tcg\n", prefix=UNSHARE) as daemon:
        imported = daemon.vmid("image", "import", SEED_IMAGE, str(guest_image))
        assert imported.returncode == 0, imported.stderr
        yield daemon


def inside(daemon: Daemon, *command: str) -> None:
    subprocess.run(
        ["nsenter", f"--net=/proc/{daemon.process.pid}/ns/net", "--", *command],
        check=True,
        timeout=30,
    )


def conditions(daemon: Daemon, name: str) -> dict[str, dict[str, Any]]:
    data = daemon.status(name) or {}
    return {c["type"]: c for c in data.get("status", {}).get("conditions", [])}


def agent_connected(daemon: Daemon, name: str) -> bool:
    return conditions(daemon, name).get("AgentConnected", {}).get("status") == "True"


def interfaces(daemon: Daemon, name: str) -> dict[str, dict[str, Any]]:
    data = daemon.status(name) or {}
    return {i.get("name", i.get("interfaceName")): i for i in data["status"]["interfaces"]}


def verb(daemon: Daemon, *args: str) -> Any:
    done = daemon.vmid(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_agent_status_verbs_static_address_and_soft_reboot(daemon: Daemon) -> None:
    inside(daemon, "ip", "link", "add", MULTUS_BRIDGE, "type", "bridge")
    inside(daemon, "ip", "link", "set", MULTUS_BRIDGE, "up")
    user_data = ["# vmid-test-ip: eth1 192.0.2.5/24", "# vmid-test-user: alice"]
    daemon.drop("ga.yaml", manifest("ga", user_data, multus=True))
    daemon.wait_phase("ga", "Running")
    daemon.wait_for("AgentConnected", lambda: agent_connected(daemon, "ga"), timeout=150)
    assert "AgentVersionNotSupported" not in conditions(daemon, "ga")
    daemon.wait_for("the guest's addresses", lambda: "guest-agent" in str(interfaces(daemon, "ga")))
    status = daemon.status("ga")["status"]  # type: ignore[index]
    os_info = status["guestOSInfo"]
    assert os_info["name"] == "vmid test guest"
    assert os_info["id"] == "vmid-guest"
    assert os_info["prettyName"] == "vmid test guest 1"
    assert os_info["versionId"] == "1"
    assert os_info["machine"] == "x86_64"
    assert os_info["kernelRelease"].endswith("-amd64")
    pod, multus = interfaces(daemon, "ga")["default"], interfaces(daemon, "ga")["net1"]
    # KubeVirt's merge: the pod NIC keeps vmid's address (the one NAT and DHCP serve), and
    # no link-local IPv6 (masquerade); the multus NIC shows the address the guest set itself.
    assert pod["infoSource"] == "domain, guest-agent"
    assert pod["interfaceName"] == "eth0"
    assert pod["ipAddresses"] == [pod["ipAddress"]]
    assert pod["ipAddress"].startswith("10.")
    assert multus["infoSource"] == "domain, guest-agent, multus-status"
    assert (multus["interfaceName"], multus["ipAddress"]) == ("eth1", "192.0.2.5")

    info = verb(daemon, "guestosinfo", "ga")
    assert info["hostname"] == "ga"
    assert info["timezone"] == "UTC, 0"
    assert info["os"] == os_info
    assert info["guestAgentVersion"].startswith("7.2")
    assert {"name": "guest-exec", "enabled": True} in info["supportedCommands"]
    assert [u["userName"] for u in info["userList"]] == ["alice"]
    users = verb(daemon, "userlist", "ga")["items"]
    assert users[0]["userName"] == "alice"
    assert users[0]["loginTime"] > 1e9
    filesystems = verb(daemon, "fslist", "ga")["items"]
    cidata = next(f for f in filesystems if f["mountPoint"] == "/mnt/cidata")
    assert cidata["fileSystemType"] == "iso9660"
    assert cidata["disk"][0]["busType"] == "virtio"
    assert info["fsInfo"]["disks"] == filesystems

    # Only root and this VM's QEMU reach the agent; only root the daemon's agent requests.
    runtime = daemon.root / "run/vmid/namespaces/default/ga"
    qga, requests = (runtime / "qemu/qga.sock").stat(), (runtime / "agent.sock").stat()
    assert (qga.st_uid, qga.st_mode & 0o777) == (status["qemu"]["uid"], 0o600)
    assert (requests.st_uid, requests.st_mode & 0o777) == (0, 0o600)

    # soft-reboot goes through the agent (guest-shutdown mode=reboot), not ACPI; the guest
    # boots again in the same QEMU and its agent reconnects (VSERPORT_CHANGE).
    pid = daemon.pid("ga")
    assert daemon.vmid("soft-reboot", "ga").returncode == 0
    daemon.wait_for("the reboot", lambda: "VMID-GUEST: agent reboot" in console(daemon, "ga"))
    daemon.wait_for(
        "the agent to reconnect",
        lambda: len(re.findall("guest agent connected", daemon.log_text())) == 2,
        timeout=150,
    )
    assert "guest agent disconnected" in daemon.log_text()
    assert agent_connected(daemon, "ga")
    assert daemon.pid("ga") == pid
    assert daemon.phase("ga") == "Running"


def data_writes(daemon: Daemon, name: str) -> int:
    """How many lines the guest's writer has written to its data file system so far."""
    return len(re.findall(r"VMID-GUEST: data \d+", console(daemon, name)))


def freeze_status(daemon: Daemon, name: str) -> str | None:
    value = (daemon.status(name) or {}).get("status", {}).get("fsFreezeStatus")
    return None if value is None else str(value)


def test_freeze_and_unfreeze_a_real_guests_file_systems(daemon: Daemon) -> None:
    """fsfreeze through the real qemu-ga: the guest's writer on its ext4 disk stops while it is
    frozen and goes on once thawed, by `vmid unfreeze`, by the unfreeze timeout with no client
    left, and by the daemon itself before it powers the VM off."""
    daemon.drop("fz.yaml", manifest("fz", ["# vmid-test-fs: DATA"], data=True))
    daemon.wait_for("AgentConnected", lambda: agent_connected(daemon, "fz"), timeout=150)
    daemon.wait_for("the guest's writes", lambda: data_writes(daemon, "fz") >= 2, timeout=60)
    assert "VMID-GUEST: data fs on vdc" in console(daemon, "fz")

    frozen = daemon.vmid("freeze", "fz", "--unfreeze-timeout", "2m")
    assert frozen.returncode == 0, frozen.stderr
    assert frozen.stdout == (
        "VMI fz was frozen (1 file system), thawed automatically in 120 s unless unfrozen first\n"
    )
    assert freeze_status(daemon, "fz") == "frozen"
    assert verb(daemon, "guestosinfo", "fz")["fsFreezeStatus"] == "frozen"
    described = daemon.vmid("describe", "fz").stdout.splitlines()
    assert [line.split() for line in described if line.startswith("FS Freeze:")] == [
        ["FS", "Freeze:", "frozen"]
    ]
    time.sleep(3)  # a line written just before the freeze may still be said
    held = data_writes(daemon, "fz")
    time.sleep(5)
    assert data_writes(daemon, "fz") == held  # the writer waits on the frozen file system
    again = daemon.vmid("freeze", "fz")
    assert again.stdout == "VMI fz is frozen already (its unfreeze timeout is unchanged)\n"

    thawed = daemon.vmid("unfreeze", "fz")
    assert (thawed.returncode, thawed.stdout) == (0, "VMI fz was unfrozen\n")
    assert freeze_status(daemon, "fz") is None
    daemon.wait_for("writes again", lambda: data_writes(daemon, "fz") > held + 1)

    # The unfreeze timeout: the daemon thaws the guest with no client left.
    assert daemon.vmid("freeze", "fz", "--unfreeze-timeout", "3s").returncode == 0
    held = data_writes(daemon, "fz") + 1
    daemon.wait_for("the automatic unfreeze", lambda: freeze_status(daemon, "fz") is None)
    daemon.wait_for("writes again", lambda: data_writes(daemon, "fz") > held + 1)
    assert "UnfreezeTimeout: Unfreeze was not called for more than 3 s: thawing the guest" in (
        event_messages(daemon, "fz")
    )

    # Frozen when the VMI stops: thawed first, then the ACPI power-off.
    assert daemon.vmid("freeze", "fz").returncode == 0
    deleted = daemon.vmid("delete", "vmi", "fz")
    assert deleted.returncode == 0, deleted.stderr
    messages = event_messages(daemon, "fz")
    unfrozen = messages.index(
        "Unfrozen: the guest's file systems were frozen and vmid stops supervising the VMI: thawed"
    )
    assert unfrozen < messages.index("ShuttingDown: Signaled Graceful Shutdown (ACPI)")
    assert "fz: ended Succeeded the guest powered off" in daemon.log_text()


def test_an_agent_killed_in_the_guest_reconnects(daemon: Daemon) -> None:
    """An agent lacking a required command (KubeVirt's AgentVersionNotSupported), killed in
    the guest and restarted: the conditions go with it and come back."""
    user_data = ["# vmid-test-agent-kill: 20", "# vmid-test-agent-block: guest-get-osinfo"]
    daemon.drop("kill.yaml", manifest("kill", user_data))
    daemon.wait_for("AgentConnected", lambda: agent_connected(daemon, "kill"), timeout=150)
    unsupported = conditions(daemon, "kill")["AgentVersionNotSupported"]
    assert (unsupported["status"], unsupported["reason"]) == (
        "True",
        "This guest agent doesn't support required basic commands",
    )
    daemon.wait_for("the kill", lambda: "VMID-GUEST: agent killed" in console(daemon, "kill"))
    daemon.wait_for("AgentConnected gone", lambda: not agent_connected(daemon, "kill"))
    assert "AgentVersionNotSupported" not in conditions(daemon, "kill")
    daemon.wait_for("AgentConnected again", lambda: agent_connected(daemon, "kill"), timeout=60)
    assert console(daemon, "kill").count("VMID-GUEST: agent started") == 2
    assert conditions(daemon, "kill")["AgentVersionNotSupported"]["status"] == "True"


def test_a_guest_without_an_agent(daemon: Daemon) -> None:
    probe = """  readinessProbe:
    exec: {command: ["/bin/true"]}
    periodSeconds: 2
"""
    daemon.drop("bare.yaml", manifest("bare", ["# vmid-test: no-agent"], probes=probe))
    daemon.wait_for(
        "the guest", lambda: "VMID-GUEST: ready" in console(daemon, "bare"), timeout=150
    )
    assert "AgentConnected" not in conditions(daemon, "bare")
    assert "guestOSInfo" not in daemon.status("bare")["status"]  # type: ignore[index]
    done = daemon.vmid("guestosinfo", "bare")
    assert done.returncode == 1
    assert done.stderr == "vmid: VMI does not have guest agent connected\n"
    # A probe that needs the agent fails, saying why: the VMI is never Ready.
    assert ready(daemon, "bare")["reason"] == "ContainersNotReady"
    assert "Unhealthy: Readiness probe failed: the guest agent is not connected" in (
        event_messages(daemon, "bare")
    )
    frozen = daemon.vmid("freeze", "bare")
    assert frozen.returncode == 1
    assert frozen.stderr == (
        "vmid: Failed to freeze VMI: Guest agent is not responding: "
        "QEMU guest agent is not connected\n"
    )
    # soft-reboot falls back to the ACPI power button (the guest powers off: vmid resets it).
    assert daemon.vmid("soft-reboot", "bare").returncode == 0
    assert "VMID-GUEST: powering off" in console(daemon, "bare")


def ready(daemon: Daemon, name: str) -> dict[str, Any]:
    return conditions(daemon, name).get("Ready", {})


def event_messages(daemon: Daemon, name: str) -> list[str]:
    listed = json.loads(daemon.vmid("events", name, "-o", "json").stdout)
    return [f"{e['reason']}: {e['message']}" for e in listed["items"]]


def test_readiness_http_get_drives_ready_and_a_passing_exec_liveness_keeps_it(
    daemon: Daemon,
) -> None:
    probes = """  readinessProbe:
    httpGet: {port: 80}
    periodSeconds: 2
  livenessProbe:
    exec: {command: ["/bin/sh", "-c", "test -e /www/index.html"]}
    periodSeconds: 2
    failureThreshold: 60
"""
    daemon.drop("web.yaml", manifest("web", [], probes=probes))
    daemon.wait_phase("web", "Running")
    # Running but not Ready until its httpd answers: the pod's container is not ready.
    assert ready(daemon, "web")["status"] == "False"
    assert ready(daemon, "web")["reason"] == "ContainersNotReady"
    daemon.wait_for("Ready", lambda: ready(daemon, "web").get("status") == "True", timeout=150)
    assert any(
        m.startswith("Unhealthy: Readiness probe failed: ") for m in event_messages(daemon, "web")
    )
    assert "READY" in daemon.vmid("get").stdout
    # The exec liveness probe (guest-exec) passes once the agent runs: the VMI lives on.
    daemon.wait_for("the agent", lambda: agent_connected(daemon, "web"), timeout=60)
    time.sleep(6)
    assert daemon.phase("web") == "Running"
    assert ready(daemon, "web")["status"] == "True"


def test_liveness_tcp_socket_on_a_closed_port_fails_the_vmi(daemon: Daemon) -> None:
    probes = """  livenessProbe:
    tcpSocket: {port: 81}
    initialDelaySeconds: 20
    periodSeconds: 3
    failureThreshold: 2
"""
    daemon.drop("dead.yaml", manifest("dead", [], probes=probes))
    daemon.wait_phase("dead", "Running")
    running = time.monotonic()
    daemon.wait_phase("dead", "Failed", timeout=60)
    took = time.monotonic() - running
    # initialDelaySeconds, then failureThreshold failures periodSeconds apart: within one period.
    assert 20 + 3 <= took <= 20 + 2 * 3 + 3, took
    assert daemon.reason("dead") in (
        "Liveness probe failed: dial tcp 10.0.2.2:81: connect: connection refused",
        "Liveness probe failed: timeout: no answer within 1s",  # the guest still booting
    )
    messages = event_messages(daemon, "dead")
    assert "Killing: Container compute failed liveness probe, will be restarted" in messages
