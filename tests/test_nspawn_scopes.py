"""Each VMI's QEMU in a scope of its own under a real systemd (tests/nspawn.py), registered with
systemd-machined, with the limits the plan computed; the daemon's journal, one VMI at a time.

This host has cgroup v1: inside nspawn the controllers are read-only, so systemd records the
limits on the scope (`systemctl show`) without writing them to its cgroup files; the test checks
the properties, and that the QEMU's cgroup is the scope's.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import nspawn
from tests.daemon import manifest
from vmid.config import Accelerator, Config, Paths
from vmid.manifests import plan_file

pytestmark = [pytest.mark.timeout(300)]

FAKE_QEMU = f"{nspawn.SOURCE}/tests/fakeqemu.py"
SCOPE = "machine-vmid\\x2ddefault.vm\\x2da.scope"
LIMITED = manifest("vm-a").replace(
    "    memory: {guest: 64Mi}\n",
    "    memory: {guest: 64Mi}\n    resources: {limits: {cpu: 500m, memory: 128Mi}}\n",
)


@functools.cache
def _unavailable() -> str | None:
    return nspawn.unavailable()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    """A booted container with vmid installed by `make install`, running two VMIs (vm-a with
    limits) with `onDaemonStop: keep`."""
    if reason := _unavailable():
        pytest.skip(reason)
    wheels = nspawn.wheels()
    workdir = tmp_path_factory.mktemp("nspawn")
    name = f"vmid-scopes-{os.getpid()}"
    with nspawn.booted(name, workdir, (f"--bind-ro={wheels}:{nspawn.WHEELS}",)) as box:
        box.copy_in(nspawn.REPO, nspawn.SOURCE)
        box.run(
            "env", "PIP_NO_INDEX=1", f"PIP_FIND_LINKS={nspawn.WHEELS}",
            "make", "-C", nspawn.SOURCE, "install", timeout=600,
        )  # fmt: skip
        config = f"accelerator: tcg\nqemu: {FAKE_QEMU}\nonDaemonStop: keep\n"
        box.write("/etc/vmid/vmid.yaml", config)
        box.write("/etc/vmid/instances/a.yaml", LIMITED)
        box.write("/etc/vmid/instances/b.yaml", manifest("vm-b"))
        box.systemctl("enable", "--now", "vmid")
        yield box


def qemu_pid(box: nspawn.Container, name: str) -> int:
    status = json.loads(box.run("cat", f"/run/vmid/namespaces/default/{name}/status.json").stdout)
    pid: int = status["status"]["qemu"]["pid"]
    return pid


def cgroup_of(box: nspawn.Container, pid: int) -> str:
    return box.run("cat", f"/proc/{pid}/cgroup").stdout


def test_each_qemu_in_its_scope_under_machine_slice(container: nspawn.Container) -> None:
    pid = qemu_pid(container, "vm-a")
    assert f"/machine.slice/{SCOPE}\n" in cgroup_of(container, pid)
    assert "/machine.slice/machine-vmid\\x2ddefault.vm\\x2db.scope\n" in cgroup_of(
        container, qemu_pid(container, "vm-b")
    )
    assert "/system.slice/vmid.service" not in cgroup_of(container, pid)
    assert container.show(SCOPE, "Slice") == "machine.slice"
    # The unit's device policy holds for QEMU in its scope too.
    assert container.show(SCOPE, "DevicePolicy") == "closed"
    assert "/dev/kvm rw" in container.show(SCOPE, "DeviceAllow")
    # Registered with machined: what `machinectl list` shows (its name, class and service).
    listed = container.run("machinectl", "list", "--no-legend", "--no-pager").stdout
    rows = {line.split()[0]: line.split()[1:3] for line in listed.splitlines()}
    assert rows == {"vmid-default.vm-a": ["vm", "vmid"], "vmid-default.vm-b": ["vm", "vmid"]}


def test_the_scope_has_the_limits_the_plan_computed(
    container: nspawn.Container, tmp_path: Path
) -> None:
    (tmp_path / "a.yaml").write_text(LIMITED)
    planned, problems = plan_file(tmp_path / "a.yaml", Config(), Paths(Path("/")), Accelerator.TCG)
    assert not problems
    cgroup = planned[0].plan.cgroup
    assert cgroup.memoryMax is not None
    assert container.show(SCOPE, "CPUQuotaPerSecUSec") == "500ms"  # limits.cpu: 500m
    assert container.show(SCOPE, "MemoryMax") == str(cgroup.memoryMax)  # 128Mi + overhead
    assert cgroup.memoryMax > 128 << 20
    assert container.show(SCOPE, "CPUWeight") == "20"  # the request 500m, as the kubelet maps it
    # vm-b asked for nothing: no quota, no ceiling, the weight of KubeVirt's 100m request.
    other = "machine-vmid\\x2ddefault.vm\\x2db.scope"
    assert container.show(other, "CPUQuotaPerSecUSec") == "infinity"
    assert container.show(other, "MemoryMax") == "infinity"
    assert container.show(other, "CPUWeight") == "4"


def test_journalctl_selects_one_vmi(container: nspawn.Container) -> None:
    mine = container.journal("-u", "vmid", "VMID_VMI=default/vm-a", "-o", "cat")
    assert f"in scope {SCOPE}" in mine
    assert "running" in mine
    assert "vm-b" not in mine
    # Supervisor lines name theirs too; the daemon's own lines carry none.
    every = container.journal("-u", "vmid", "-o", "cat")
    assert every.count("each VMI's QEMU runs in a scope of its own under machine.slice") == 1
    fields = container.journal("-u", "vmid", "-o", "json", "--output-fields=VMID_VMI,MESSAGE")
    ready = [json.loads(line) for line in fields.splitlines() if "vmid ready" in line]
    assert ready
    assert all("VMID_VMI" not in record for record in ready)


def test_a_restart_with_keep_keeps_the_scope(container: nspawn.Container) -> None:
    pid = qemu_pid(container, "vm-a")
    container.systemctl("restart", "vmid")
    container.wait_for("vm-a re-adopted", lambda: "re-adopted" in container.journal(
        "-u", "vmid", "VMID_VMI=default/vm-a", "-o", "cat"))  # fmt: skip
    assert qemu_pid(container, "vm-a") == pid
    assert f"/machine.slice/{SCOPE}\n" in cgroup_of(container, pid)
    mine = container.journal("-u", "vmid", "VMID_VMI=default/vm-a", "-o", "cat")
    assert f"QEMU pid {pid} keeps its scope {SCOPE}" in mine
    assert mine.count("in scope") == 1  # never registered again
    assert "vmid-default.vm-a" in container.run("machinectl", "list", "--no-legend").stdout


def test_a_vmi_removed_takes_its_machine_along(container: nspawn.Container) -> None:
    container.run("rm", "/etc/vmid/instances/b.yaml")
    container.wait_for(
        "vm-b's machine gone",
        lambda: "vm-b" not in container.run("machinectl", "list", "--no-legend").stdout,
    )
    assert container.show("machine-vmid\\x2ddefault.vm\\x2db.scope", "ActiveState") == "inactive"


def phase(box: nspawn.Container, name: str) -> tuple[str, str]:
    path = f"/run/vmid/namespaces/default/{name}/status.json"
    status = json.loads(box.run("cat", path).stdout)["status"]
    return status.get("phase", ""), status.get("reason", "")


def test_a_scope_machined_refuses_fails_the_vmi_before_its_guest_runs(
    container: nspawn.Container,
) -> None:
    # Another program holds the machine name vm-d's QEMU would get.
    container.run("systemd-run", "--unit=impostor", "--quiet", "sleep", "1000")
    leader = container.show("impostor.service", "MainPID")
    container.run(
        "busctl", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
        "org.freedesktop.machine1.Manager", "CreateMachine", "sayssusa(sv)",
        "vmid-default.vm-d", "0", "impostor", "vm", leader, "", "0",
    )  # fmt: skip
    container.write("/etc/vmid/instances/d.yaml", manifest("vm-d"))
    container.wait_for(
        "vm-d failed",
        lambda: container.run("test", "-e", "/run/vmid/namespaces/default/vm-d/status.json",
                              check=False).returncode == 0
        and phase(container, "vm-d")[0] == "Failed",
        timeout=30,
    )  # fmt: skip
    assert phase(container, "vm-d")[1] == (
        "QEMU could not be given a cgroup of its own: systemd-machined still has a machine "
        "'vmid-default.vm-d' after 5 s (another VM of that name?): "
        "`machinectl terminate vmid-default.vm-d` ends it"
    )
    # Its QEMU is gone (it never got `cont`); the other machine is untouched.
    assert "fakeqemu" not in container.sh("ps -eo args | grep 'guest=default/vm-d' || true")
    listed = container.run("machinectl", "list", "--no-legend").stdout
    assert "vmid-default.vm-d vm impostor" in " ".join(listed.split())
    container.run("rm", "/etc/vmid/instances/d.yaml")
    container.systemctl("stop", "impostor")


def test_without_machined_one_line_then_a_scope_at_re_adoption(
    container: nspawn.Container,
) -> None:
    # A host without systemd-machined (or a vmid from before scopes): VMs in vmid's cgroup.
    container.systemctl("stop", "vmid")  # onDaemonStop: keep
    container.systemctl("mask", "--now", "systemd-machined.service")
    container.write("/etc/vmid/instances/c.yaml", manifest("vm-c"))
    container.systemctl("start", "vmid")
    pid = qemu_pid(container, "vm-c")
    assert "/system.slice/vmid.service\n" in cgroup_of(container, pid)
    said = container.journal("-u", "vmid", "-o", "cat", "--since=-30s")
    lines = [line for line in said.splitlines() if "cgroups of their own" in line]
    assert len(lines) == 1, said
    assert lines[0].startswith("vmid.runtime.daemon: VMs run without cgroups of their own: ")
    # machined back: the next vmid gives the QEMU it re-adopts a scope (KillMode=process kept
    # it through the restart), without stopping it.
    container.systemctl("unmask", "systemd-machined.service")
    container.systemctl("restart", "vmid")
    assert qemu_pid(container, "vm-c") == pid
    scope = "/machine.slice/machine-vmid\\x2ddefault.vm\\x2dc.scope\n"
    container.wait_for("vm-c in a scope", lambda: scope in cgroup_of(container, pid), timeout=30)
    assert phase(container, "vm-c")[0] == "Running"
