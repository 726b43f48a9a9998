"""Each VMI's own cgroup: the limits the plan computes as KubeVirt sizes its pod, the names and
properties machined gets, when a QEMU is put in its scope, and the one line without systemd.

The real thing (machined, `machinectl list`, `systemctl show`) runs under systemd-nspawn in
tests/test_nspawn*.py; this host has no systemd.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from jeepney import MatchRule, message_bus, new_error, new_method_return
from jeepney.io.trio import open_dbus_router

from tests.daemon import fake_config, manifest, running_daemon
from tests.test_instance import asyncio_loop, make_instance, start
from vmid.config import Accelerator, Config, Paths
from vmid.errors import LaunchError, MachineError
from vmid.host import machines
from vmid.host.machines import MACHINED, Machines, machine_name, machine_scope, scope_name
from vmid.host.storage import ImageStore
from vmid.manifests import plan_file
from vmid.plan.model import Cgroup, LaunchPlan
from vmid.runtime.instance import Instance
from vmid.runtime.network import Network
from vmid.runtime.status import Phase

MI = 1 << 20
__all__ = ["asyncio_loop"]  # the fixture the instance tests use


def plan_of(
    tmp_path: Path, domain: str, devices: str = "autoattachPodInterface: false", spec: str = ""
) -> LaunchPlan:
    path = tmp_path / "vmi.yaml"
    path.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: web}\n"
        f"spec:\n  domain:\n{domain}    devices: {{{devices}}}\n{spec}"
    )
    planned, problems = plan_file(path, Config(), Paths(tmp_path), Accelerator.TCG)
    assert not problems, problems
    return planned[0].plan


def test_limits_are_kubevirts_pod_limits(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "    resources: {limits: {cpu: '2', memory: 1Gi}}\n")
    # GetMemoryOverhead: page tables (1Gi request, defaulted from the limit: 1073742000 / 512),
    # 220Mi fixed, 8Mi x 2 vCPUs, 8Mi iothread, 32Mi video, 100Mi for QoS Guaranteed (requests
    # default to the limits); the kubelet's weight for 2000m: shares 2048 -> 79.
    overhead = 2097152 + (220 + 16 + 8 + 32 + 100) * MI
    assert plan.cgroup == Cgroup(
        cpuQuotaPerSecUSec=2_000_000, memoryMax=1073741824 + overhead, cpuWeight=79
    )


def test_memory_limit_with_exec_probe_and_no_display(tmp_path: Path) -> None:
    domain = (
        "    cpu: {cores: 2}\n    resources: {requests: {cpu: 500m}, limits: {memory: 512Mi}}\n"
    )
    plan = plan_of(tmp_path, domain)
    # 512Mi: page tables 536871000 // 512, 220Mi fixed, 16Mi for 2 vCPUs, 8Mi iothread, 32Mi
    # video; not Guaranteed (no CPU limit). 500m -> shares 512 -> weight 20. No CPU quota.
    assert plan.cgroup == Cgroup(
        cpuQuotaPerSecUSec=None,
        memoryMax=536870912 + 1048576 + (220 + 16 + 8 + 32) * MI,
        cpuWeight=20,
    )
    # No display: 32Mi less; an exec probe: 10Mi, and 100Mi for the prober, once.
    probed = plan_of(
        tmp_path,
        domain,
        "autoattachPodInterface: false, autoattachGraphicsDevice: false",
        "  readinessProbe: {exec: {command: [cat, /tmp/ready]}}\n",
    )
    assert plan.cgroup.memoryMax is not None
    assert probed.cgroup.memoryMax == plan.cgroup.memoryMax - 32 * MI + 110 * MI


def test_without_resources_only_a_weight(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "    memory: {guest: 64Mi}\n")
    # No limits: none in the scope either; the CPU request KubeVirt gives a pod without one
    # (1 vCPU / cpuAllocationRatio 10 = 100m) becomes the weight, as the kubelet maps it.
    assert plan.cgroup == Cgroup(cpuQuotaPerSecUSec=None, memoryMax=None, cpuWeight=4)


def test_machine_and_scope_names() -> None:
    assert machine_name("default/web") == "vmid-default.web"
    assert scope_name("vmid-default.web") == "machine-vmid\\x2ddefault.web.scope"
    # A namespace has no dot: `a-b/c` and `a/b-c` stay apart.
    assert machine_name("a-b/c") != machine_name("a/b-c")
    long_a, long_b = (machine_name(f"default/{'x' * 80}{end}") for end in "ab")
    assert len(long_a) <= 64
    assert len(long_b) <= 64
    assert long_a != long_b
    assert re.fullmatch(r"[a-z0-9.-]+", long_a)


def test_machine_scope_from_proc_cgroup() -> None:
    unit = "machine-vmid\\x2ddefault.web.scope"
    assert machine_scope(f"0::/machine.slice/{unit}\n") == unit
    v1 = f"12:memory:/machine.slice/{unit}\n1:name=systemd:/machine.slice/{unit}\n0::/\n"
    assert machine_scope(v1) == unit
    assert machine_scope("0::/system.slice/vmid.service\n") is None
    assert machine_scope("0::/user.slice/machine-x.scope\n") is None


def test_scope_properties_carry_only_set_limits() -> None:
    props = dict(machines.properties("default/web", Cgroup(memoryMax=5 * MI, cpuWeight=39)))
    assert props["Slice"] == ("s", "machine.slice")
    assert props["MemoryMax"] == ("t", 5 * MI)
    assert props["CPUWeight"] == ("t", 39)
    assert "CPUQuotaPerSecUSec" not in props
    # At shutdown vmid stops first (powering the VMs off), then the scopes.
    assert props["Before"] == ("as", ["vmid.service"])
    # QEMU keeps the unit's device policy in its scope, outside the unit's cgroup.
    assert props["DevicePolicy"] == ("s", "closed")
    assert ("/dev/kvm", "rw") in props["DeviceAllow"][1]
    unit = (Path(__file__).parent.parent / "systemd/vmid.service").read_text()
    allowed = re.findall(r"^DeviceAllow=(\S+) (\w+)$", unit, re.MULTILINE)
    assert sorted(props["DeviceAllow"][1]) == sorted(allowed)


def test_limits_in_systemds_words() -> None:
    cgroup = Cgroup(cpuQuotaPerSecUSec=500_000, memoryMax=5 * MI, cpuWeight=20)
    assert machines.describe(cgroup) == "CPUQuota=50% MemoryMax=5242880 CPUWeight=20"
    assert machines.describe(Cgroup()) == "no limits"


async def test_no_scopes_for_a_root_daemon_or_without_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found, line = await machines.detect(tmp_path)
    assert found is None
    assert line.startswith("VMs run without cgroups of their own: --root")
    monkeypatch.setattr(machines, "SYSTEMD_RUNTIME", tmp_path / "no-systemd")
    found, line = await machines.detect(Path("/"))
    assert found is None
    assert line == f"{machines.NO_CGROUPS}: systemd is not running here (no /run/systemd/system)"
    # systemd, but no bus to reach machined on: still no failure, one reason.
    monkeypatch.setattr(machines, "SYSTEMD_RUNTIME", tmp_path)
    found, line = await machines.detect(Path("/"), bus=f"unix:path={tmp_path}/no-bus")
    assert found is None
    assert "the system bus cannot be reached" in line


@pytest.mark.timeout(60)
def test_the_daemon_says_so_in_one_line_and_runs_its_vms(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
    lines = [line for line in daemon.log_text().splitlines() if "cgroups of their own" in line]
    assert len(lines) == 1, lines


class FakeMachined(Machines):
    """machined as the instance sees it: records each registration, or refuses them."""

    def __init__(self, refuse: str | None = None, hang: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.hang = hang
        self.calls: list[tuple[str, str, int, Cgroup, Phase]] = []
        self.instance: Instance | None = None

    async def register(
        self, key: str, machine_id: str, pid: int, cgroup: Cgroup, taps: object = ()
    ) -> str:
        assert self.instance is not None
        self.calls.append((key, machine_id, pid, cgroup, self.instance.status.phase))
        if self.refuse:
            raise MachineError(self.refuse)
        if self.hang:  # as machined for a leader that died under it
            await trio.sleep_forever()
        return scope_name(machine_name(key))


def with_machined(tmp_path: Path, fake: FakeMachined, mode: str = "obey") -> Instance:
    base = make_instance(tmp_path, mode)
    config = Config(qemu=base.plan.argv[0], accelerator=Accelerator.TCG)
    paths = Paths(tmp_path)
    store = ImageStore(paths.state / "images", config.qemuImg)
    instance = Instance(
        base.plan,
        base.status,
        store,
        config.qemuImg,
        Accelerator.TCG,
        Network(config, paths),
        machines=fake,
    )
    fake.instance = instance
    return instance


@pytest.mark.timeout(30)
async def test_qemu_enters_its_scope_before_its_guest_runs(
    tmp_path: Path, asyncio_loop: None
) -> None:
    fake = FakeMachined()
    instance = with_machined(tmp_path, fake)
    async with trio.open_nursery() as nursery:
        scope = await start(instance, nursery)
        assert instance.status.phase is Phase.RUNNING
        pid = instance.status.qemu.pid if instance.status.qemu else None
        scope.cancel()
    (call,) = fake.calls
    # Its own QEMU, its limits, and still Scheduled: `cont` (Running) comes after.
    assert call == ("default/fake", instance.plan.uuid, pid, instance.plan.cgroup, Phase.SCHEDULED)


@pytest.mark.timeout(30)
async def test_a_scope_machined_refuses_fails_the_vmi(tmp_path: Path, asyncio_loop: None) -> None:
    fake = FakeMachined(refuse="systemd-machined refused: Access denied")
    instance = with_machined(tmp_path, fake)
    with pytest.raises(LaunchError, match="cgroup of its own"):
        await instance.run()
    assert instance.status.phase is Phase.FAILED
    assert instance.status.reason == (
        "QEMU could not be given a cgroup of its own: systemd-machined refused: Access denied"
    )
    assert fake.calls[0][4] is Phase.SCHEDULED  # the guest never ran


@pytest.mark.timeout(20)
async def test_a_qemu_that_dies_while_it_gets_its_scope_fails_with_what_it_said(
    tmp_path: Path, asyncio_loop: None
) -> None:
    """machined never answers for a leader that died under it: the VMI fails at once with
    QEMU's own words, not after the bus's 25 s with machined's (found under nspawn)."""
    fake = FakeMachined(hang=True)
    instance = with_machined(tmp_path, fake, mode="refuse")
    with pytest.raises(LaunchError, match="'nope' is not a valid device model name"):
        await instance.run()
    assert instance.status.phase is Phase.FAILED


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    """A D-Bus daemon of the test's own (dbus-daemon's session configuration), its address."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is missing (Debian: dbus)")
    address = f"unix:path={tmp_path}/bus"
    daemon = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={address}"],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "bus").exists():
            assert time.monotonic() < deadline, "dbus-daemon did not start"
            time.sleep(0.01)
        yield address
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


async def test_no_machined_on_the_bus_is_said_not_raised(
    bus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machines, "SYSTEMD_RUNTIME", tmp_path)
    found, line = await machines.detect(Path("/"), bus=bus)
    assert found is None
    assert line.startswith(f"{machines.NO_CGROUPS}: systemd-machined: ")
    assert "org.freedesktop.DBus.Error.ServiceUnknown" in line


#: What the fake machined answers a call: None (created), or an error's name and message.
Answer = tuple[str, str] | None


async def fake_machined(
    bus: str, answers: list[Answer], calls: list[tuple[Any, ...]], ready: trio.Event
) -> None:
    """machined on `bus`: each CreateMachineWithNetwork gets the next answer (None: created,
    else that error name and message)."""
    async with open_dbus_router(bus) as router:
        await router.send_and_get_reply(message_bus.RequestName(MACHINED.bus_name))
        with router.filter(MatchRule(type="method_call")) as queue:
            ready.set()
            while answers:
                call = await queue.receive()
                calls.append(call.body)
                answer = answers.pop(0)
                if answer is None:
                    path = "/org/freedesktop/machine1/machine/vmid_2ddefault_2eweb"
                    await router.send(new_method_return(call, "o", (path,)))
                else:
                    await router.send(new_error(call, answer[0], "s", (answer[1],)))


async def test_register_waits_for_a_name_still_taken_then_creates(bus: str) -> None:
    calls: list[tuple[Any, ...]] = []
    taken = ("org.freedesktop.machine1.MachineExists", "Machine 'vmid-default.web' already exists")
    answers: list[Answer] = [taken, None]
    cgroup = Cgroup(cpuQuotaPerSecUSec=500_000, memoryMax=5 * MI, cpuWeight=20)
    machine_id = "5a9fc181-957e-5c32-9e5a-2de5e9673531"
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(fake_machined, bus, answers, calls, ready)
        await ready.wait()
        scope = await Machines(bus).register("default/web", machine_id, 4242, cgroup, ["lo"])
    assert scope == "machine-vmid\\x2ddefault.web.scope"
    assert len(calls) == 2  # the name was taken once (an old scope not yet gone): asked again
    name, uuid_bytes, service, class_, leader, root, nics, props = calls[1]
    assert (name, service, class_, leader, root) == ("vmid-default.web", "vmid", "vm", 4242, "")
    assert uuid_bytes == bytes.fromhex(machine_id.replace("-", ""))
    assert nics == [1]  # lo's index: the host's indexes of the VMI's taps
    assert dict(props) == dict(machines.properties("default/web", cgroup))


async def test_a_refusal_is_a_machine_error(bus: str) -> None:
    calls: list[tuple[Any, ...]] = []
    answers: list[Answer] = [("org.freedesktop.DBus.Error.AccessDenied", "Access denied")]
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(fake_machined, bus, answers, calls, ready)
        await ready.wait()
        with pytest.raises(MachineError, match=r"^systemd-machined: Access denied \("):
            await Machines(bus).register("default/web", str(uuid.uuid4()), 1, Cgroup())
    assert len(calls) == 1  # only a name still taken is asked again


def _hang_up_after_authentication(path: Path) -> threading.Thread:
    """A bus that lets the client in, then hangs up (dbus-daemon restarting, a quota)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener, listener.accept()[0] as peer:
            seen = b""
            while b"BEGIN\r\n" not in seen:
                chunk = peer.recv(4096)
                if not chunk:
                    return
                seen += chunk
                if b"AUTH" in chunk:
                    peer.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
                if b"NEGOTIATE_UNIX_FD" in chunk:
                    peer.sendall(b"AGREE_UNIX_FD\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


async def test_a_bus_that_hangs_up_is_said_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: jeepney's trio router reports a hung-up bus as trio's EndOfChannel,
    not an OSError: it escaped as an internal error (and at a take-over killed a running
    guest over bookkeeping)."""
    monkeypatch.setattr(machines, "SYSTEMD_RUNTIME", tmp_path)
    served = _hang_up_after_authentication(tmp_path / "bus")
    found, line = await machines.detect(Path("/"), bus=f"unix:path={tmp_path}/bus")
    served.join(timeout=10)
    assert found is None
    assert line.startswith(f"{machines.NO_CGROUPS}: the system bus cannot be reached: ")
