"""One VMI's life against a fake QEMU: phases, the shutdown ladder, launch failures.

The fake QEMU (tests/fakeqemu.py) is a real process speaking QMP on the inherited control
socket. Real time, short grace periods: trio's autojump clock never jumps while trio-asyncio's
loop is running, so a mock clock cannot skip the waits here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio

from vmid import cli, control
from vmid.api.dump import to_data
from vmid.api.load import load_text
from vmid.config import Accelerator, Config, Paths
from vmid.errors import LaunchError
from vmid.host.storage import ImageStore
from vmid.plan.build import build
from vmid.runtime.instance import Instance
from vmid.runtime.network import Network
from vmid.runtime.status import IllegalTransition, Phase, Status, now

FAKE_QEMU = str(Path(__file__).with_name("fakeqemu.py"))


@pytest.fixture
async def asyncio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


#: A disk the fake's `ioerror` mode fails on (emptyDisk: no image needed).
SCRATCH_DISK = (
    "disks: [{name: scratch, disk: {bus: virtio}}]",
    "volumes: [{name: scratch, emptyDisk: {capacity: 1Mi}}]",
)


def make_instance(
    tmp_path: Path,
    mode: str,
    grace: int | None = 30,
    acpi: bool = True,
    disk: tuple[str, str] = ("", ""),
) -> Instance:
    manifest = f"""
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: fake}}
spec:
  {"" if grace is None else f"terminationGracePeriodSeconds: {grace}"}
  domain:
    memory: {{guest: 64Mi}}
    firmware: {{serial: {mode}}}
    features: {{acpi: {{enabled: {str(acpi).lower()}}}}}
    devices: {{autoattachPodInterface: false, {disk[0]}}}
  {disk[1]}
"""
    (manifest_obj,), problems = load_text("fake.yaml", manifest.encode())
    assert problems == []
    config = Config(qemu=FAKE_QEMU, accelerator=Accelerator.TCG)
    paths = Paths(tmp_path)
    plan, findings = build(manifest_obj.vmi, config, paths, Accelerator.TCG)
    assert plan is not None, findings
    status = Status(
        paths.instance_runtime("default/fake") / "status.json", to_data(manifest_obj.vmi)
    )
    store = ImageStore(paths.state / "images", config.qemuImg)
    # No taps (autoattachPodInterface: false): the network service is never needed.
    network = Network(config, paths)
    return Instance(plan, status, store, config.qemuImg, Accelerator.TCG, network)


async def start(instance: Instance, nursery: trio.Nursery) -> trio.CancelScope:
    """Start the instance in its own cancel scope (cancelling it is the stop request)."""
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await instance.run(task_status=task_status)

    await nursery.start(run)
    return scope


async def stop_and_time(instance: Instance) -> float:
    """Start the instance, ask it to stop, and return how long stopping took."""
    async with trio.open_nursery() as nursery:
        scope = await start(instance, nursery)
        assert instance.status.phase is Phase.RUNNING
        began = trio.current_time()
        scope.cancel()
    return trio.current_time() - began


def left_behind(path: str) -> bool:
    return os.path.lexists(path)


def phases(instance: Instance) -> list[str]:
    return [str(t.phase) for t in instance.status.transitions]


def written(instance: Instance) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(instance.status.path.read_text())
    return data


@pytest.mark.timeout(30)
async def test_guest_that_obeys_acpi_ends_succeeded(tmp_path: Path, asyncio_loop: None) -> None:
    instance = make_instance(tmp_path, "obey")
    elapsed = await stop_and_time(instance)
    assert elapsed < 1
    assert phases(instance) == ["Pending", "Scheduled", "Running", "Succeeded"]
    status = written(instance)["status"]
    assert status["phase"] == "Succeeded"
    assert status["reason"] == "the guest powered off"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "False"
    assert conditions["SoftwareEmulation"] == "True"


@pytest.mark.timeout(30)
async def test_guest_ignoring_acpi_is_killed_when_the_grace_ends(
    tmp_path: Path, asyncio_loop: None
) -> None:
    instance = make_instance(tmp_path, "ignore", grace=2)
    elapsed = await stop_and_time(instance)
    assert 2 <= elapsed < 4
    assert instance.status.phase is Phase.FAILED
    assert "grace period" in instance.status.reason


@pytest.mark.timeout(30)
async def test_powerdown_is_resent_every_five_seconds(tmp_path: Path, asyncio_loop: None) -> None:
    instance = make_instance(tmp_path, "second", grace=8)
    elapsed = await stop_and_time(instance)
    assert 5 <= elapsed < 6
    assert instance.status.phase is Phase.SUCCEEDED


@pytest.mark.timeout(30)
async def test_grace_zero_kills_at_once_and_succeeds(tmp_path: Path, asyncio_loop: None) -> None:
    instance = make_instance(tmp_path, "ignore", grace=0)
    elapsed = await stop_and_time(instance)
    assert elapsed < 1
    assert instance.status.phase is Phase.SUCCEEDED


@pytest.mark.timeout(30)
async def test_qemu_crash_ends_failed_with_its_exit_status(
    tmp_path: Path, asyncio_loop: None
) -> None:
    instance = make_instance(tmp_path, "crash")
    with trio.fail_after(10):
        await instance.run()
    assert instance.status.phase is Phase.FAILED
    assert "exit status 1" in instance.status.reason


@pytest.mark.timeout(30)
async def test_qemu_killed_from_outside_ends_failed(tmp_path: Path, asyncio_loop: None) -> None:
    instance = make_instance(tmp_path, "obey")
    async with trio.open_nursery() as nursery:
        await start(instance, nursery)
        os.kill(written(instance)["status"]["qemu"]["pid"], signal.SIGKILL)
    assert instance.status.phase is Phase.FAILED
    assert instance.status.reason == "QEMU ended unexpectedly: killed by SIGKILL"


@pytest.mark.timeout(30)
async def test_launch_failure_reports_what_qemu_said(tmp_path: Path, asyncio_loop: None) -> None:
    instance = make_instance(tmp_path, "refuse")
    async with trio.open_nursery() as nursery:
        with pytest.raises(LaunchError, match="'nope' is not a valid device model name"):
            await start(instance, nursery)
    status = written(instance)["status"]
    assert status["phase"] == "Failed"
    assert "'nope' is not a valid device model name" in status["reason"]


@pytest.mark.timeout(30)
async def test_sockets_are_removed_when_the_vm_ends(tmp_path: Path, asyncio_loop: None) -> None:
    instance = make_instance(tmp_path, "obey")
    await stop_and_time(instance)
    assert not left_behind(instance.plan.sockets.control)


def test_illegal_phase_transitions_are_bugs(tmp_path: Path) -> None:
    status = Status(tmp_path / "status.json", {})
    status.transition(Phase.SCHEDULED)
    status.transition(Phase.RUNNING)
    status.transition(Phase.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        status.transition(Phase.RUNNING)
    with pytest.raises(IllegalTransition):
        Status(tmp_path / "s.json", {}).transition(Phase.RUNNING)


def test_a_status_closed_for_removal_never_brings_its_directory_back(tmp_path: Path) -> None:
    """Found by tests/chaos.py (seed 102): a broken edit of a VMI's file reached it while its
    files were being removed; writing Synchronized=False recreated its status, which stayed
    after the VMI was gone."""
    directory = tmp_path / "namespaces/default/vm-a"
    status = Status(directory / "status.json", {})
    status.write()
    status.close()
    shutil.rmtree(directory)
    status.condition("Synchronized", False, "InvalidManifest", "vm-a.yaml:13:1: invalid YAML")
    status.write()
    assert not directory.exists()


@pytest.mark.parametrize(
    ("said", "shown"), [("frozen", "frozen"), ("thawed", ""), ("x" * 1000, "")]
)
def test_fs_freeze_status_is_only_the_word_kubevirt_sets(
    tmp_path: Path, said: str, shown: str
) -> None:
    """Found in review: a guest's agent could put any string (up to its 1 MiB answer) into
    the status, rewritten at every poll."""
    instance = make_instance(tmp_path, "obey")
    instance.status.transition(Phase.SCHEDULED)
    instance.status.transition(Phase.RUNNING)
    instance._agent.connected = True
    instance._agent.report.answers["guest-fsfreeze-status"] = said
    instance._on_agent()
    assert instance.status.fs_freeze_status == shown


def conditions(instance: Instance) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in written(instance)["status"]["conditions"]}


async def wait_condition(instance: Instance, kind: str, status: str) -> dict[str, str]:
    """The condition as written once it has `status` (the status file, as a user reads it)."""
    for _ in range(250):  # 5 s
        if conditions(instance).get(kind, {}).get("status") == status:
            return conditions(instance)[kind]
        await trio.sleep(0.02)
    raise AssertionError(f"{kind} never became {status}: {conditions(instance)}")


async def qmp(instance: Instance, command: str) -> None:
    """A command on the VMI's qmp.sock, as `vmid pause` / `vmid unpause` send it."""
    await trio.to_thread.run_sync(control.execute, Path(instance.plan.sockets.qmp), command)


@pytest.mark.timeout(30)
async def test_a_vmi_being_stopped_shows_terminating_and_is_not_ready(
    tmp_path: Path, asyncio_loop: None, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = make_instance(tmp_path, "ignore", grace=3)
    async with trio.open_nursery() as nursery:
        scope = await start(instance, nursery)
        assert conditions(instance)["Ready"]["status"] == "True"
        began = now()
        scope.cancel()  # the stop request: the guest ignores ACPI for the whole grace
        await trio.sleep(0.5)
        data = written(instance)
        assert data["metadata"]["deletionTimestamp"] in (began, now())
        assert data["metadata"]["deletionGracePeriodSeconds"] == 3
        assert data["status"]["phase"] == "Running"  # still, as KubeVirt's: QEMU runs
        ready = conditions(instance)["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "PodTerminating")
        assert cli.main(["get", "--root", str(tmp_path)]) == 0
        row = capsys.readouterr().out.splitlines()[1].split()
        assert (row[0], row[2], row[-1]) == ("fake", "Terminating", "False")
        assert cli.main(["describe", "fake", "--root", str(tmp_path)]) == 0
        described = capsys.readouterr().out
        assert re.search(r"Status: +Terminating \(lasts [12]s\)", described)  # whole seconds
        assert f"Deletion:   {data['metadata']['deletionTimestamp']}, grace period 3s" in described
    assert instance.status.phase is Phase.FAILED  # killed after the grace: no longer Terminating
    assert cli.main(["get", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == "Failed"


@pytest.mark.timeout(30)
async def test_a_paused_vmi_is_not_ready_until_unpaused(tmp_path: Path, asyncio_loop: None) -> None:
    instance = make_instance(tmp_path, "obey")
    async with trio.open_nursery() as nursery:
        scope = await start(instance, nursery)
        await qmp(instance, "stop")
        paused = await wait_condition(instance, "Paused", "True")
        assert (paused["reason"], paused["message"]) == ("PausedByUser", "VMI was paused by user")
        ready = conditions(instance)["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "ReadinessGatesNotReady")
        assert "kubevirt.io/virtual-machine-unpaused" in ready["message"]
        await qmp(instance, "cont")
        await wait_condition(instance, "Paused", "False")
        assert conditions(instance)["Ready"]["status"] == "True"
        scope.cancel()


@pytest.mark.timeout(30)
async def test_a_guest_stopped_by_a_disk_error_is_paused_io_error_naming_the_disk(
    tmp_path: Path, asyncio_loop: None
) -> None:
    instance = make_instance(tmp_path, "ioerror", disk=SCRATCH_DISK)
    async with trio.open_nursery() as nursery:
        scope = await start(instance, nursery)
        paused = await wait_condition(instance, "Paused", "True")
        assert paused["reason"] == "PausedIOError"
        assert paused["message"] == (
            "VMI was paused, low-level IO error detected: "
            "disk 'scratch': write failed: No space left on device"
        )
        assert conditions(instance)["Ready"]["status"] == "False"
        await qmp(instance, "cont")  # `vmid unpause`: QEMU retries the write
        await wait_condition(instance, "Paused", "False")
        assert conditions(instance)["Ready"]["status"] == "True"
        scope.cancel()
