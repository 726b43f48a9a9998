"""The VM controller's start-failure back-off, as KubeVirt computes it, on trio's autojump clock
with a stand-in for the supervisor (VMIs that fail to start, or run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from vmid.config import Accelerator, Config, Paths
from vmid.manifests import Entry, plan_data
from vmid.runtime import vms, vmstate
from vmid.runtime.events import EventStore
from vmid.runtime.spool import Desired
from vmid.runtime.status import Phase, Status

pytestmark = pytest.mark.timeout(30)

VM = b"""apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices: {autoattachPodInterface: false}
        memory: {guest: 64Mi}
"""


@pytest.mark.parametrize(
    ("count", "low", "high"),
    [
        (0, 10, 15),
        (1, 10, 15),
        (2, 40, 60),
        (3, 90, 135),
        (4, 160, 240),
        (5, 250, 300),
        (9, 300, 300),
    ],
)
def test_backoff_is_interval_times_n_squared_plus_half_at_most_300(
    count: int, low: int, high: int
) -> None:
    assert vms.backoff_seconds(count, lambda n: 0) == low
    assert vms.backoff_seconds(count, lambda n: n - 1) == high


class Supervisor:
    """What the controller asks of the supervisor: each VMI a status the test moves on."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.statuses: dict[str, Status] = {}
        self.started: list[float] = []
        self.changed = trio.Event()
        self.new = trio.Event()
        self.events = EventStore(Paths(tmp).events)

    def apply(self, desired: Desired) -> None:
        for key in desired.vmis:
            if key not in self.statuses:
                self._new(key)

    def _new(self, key: str) -> None:
        # Each VMI made at another time, as the supervisor's are (the back-off spaces them).
        metadata = {"creationTimestamp": f"VMI {len(self.started)}"}
        self.statuses[key] = Status(self.tmp / "status.json", {"metadata": metadata})
        self.started.append(trio.current_time())
        self.new.set()
        self.new = trio.Event()

    async def wait_changed(self) -> None:
        await self.changed.wait()

    def vmi_status(self, key: str) -> Status | None:
        return self.statuses.get(key)

    def replace(self, key: str, entry: Entry, grace: int | None = None) -> None:
        self._new(key)

    def set_grace(self, key: str, grace: int | None) -> None:
        pass

    def end(self, key: str, ran: bool) -> None:
        status = self.statuses[key]
        if ran:
            status.transition(Phase.SCHEDULED)
            status.transition(Phase.RUNNING)
            self.tell()
        status.transition(Phase.FAILED, "crashed")
        self.tell()

    def tell(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


async def test_start_failures_back_off_and_a_run_resets_them(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    paths = Paths(tmp_path)
    [entry] = plan_data("vm.yaml", VM, Config(), paths, Accelerator.TCG)
    supervisor = Supervisor(tmp_path)
    controller = vms.Controller(supervisor, paths, Config())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        controller.apply(Desired({}, {}, (), vms={"default/web": entry}))
        nursery.start_soon(controller.run)
        await trio.testing.wait_all_tasks_blocked()
        waits: list[float] = []
        for _ in range(3):  # never reached Running: 10-15 s, 40-60 s, 90-135 s
            failed_at = trio.current_time()
            started = supervisor.new
            supervisor.end("default/web", ran=False)
            await started.wait()
            waits.append(supervisor.started[-1] - failed_at)
            [status] = vmstate.read_vms(paths)
            assert status["status"]["startFailure"]["consecutiveFailCount"] == len(waits)
            assert status["status"]["printableStatus"] == "Starting"  # a new VMI is starting
        assert 10 <= waits[0] <= 16
        assert 40 <= waits[1] <= 61
        assert 90 <= waits[2] <= 136
        # A VMI that ran, then failed: restarted at once, and the count starts again.
        supervisor.end("default/web", ran=True)
        await trio.sleep(1)
        assert supervisor.started[-1] - supervisor.started[-2] <= 1
        [status] = vmstate.read_vms(paths)
        assert "startFailure" not in status["status"]
        nursery.cancel_scope.cancel()


def taken_over(old: Status) -> Status:
    """The status a new daemon reads of a VMI an earlier one left (a new object, same data)."""
    status = Status(old.path, old.manifest)
    status.phase, status.reason, status.transitions = old.phase, old.reason, list(old.transitions)
    return status


async def test_a_daemon_restart_keeps_the_start_failures_and_their_back_off(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    paths = Paths(tmp_path)
    [entry] = plan_data("vm.yaml", VM, Config(), paths, Accelerator.TCG)
    desired = Desired({}, {}, (), vms={"default/web": entry})
    supervisor = Supervisor(tmp_path)
    async with trio.open_nursery() as nursery:
        controller = vms.Controller(supervisor, paths, Config())  # type: ignore[arg-type]
        controller.apply(desired)
        nursery.start_soon(controller.run)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(2):
            started = supervisor.new
            supervisor.end("default/web", ran=False)
            await started.wait()
        supervisor.end("default/web", ran=False)  # the third: next start in 90-135 s
        await trio.testing.wait_all_tasks_blocked()
        [before] = vmstate.read_vms(paths)
        assert before["status"]["startFailure"]["consecutiveFailCount"] == 3
        nursery.cancel_scope.cancel()  # the daemon is killed during the back-off
    again = Supervisor(tmp_path)
    again.statuses = {k: taken_over(v) for k, v in supervisor.statuses.items()}
    restarted_at = trio.current_time()
    async with trio.open_nursery() as nursery:
        controller = vms.Controller(again, paths, Config())  # type: ignore[arg-type]
        controller.apply(desired)
        nursery.start_soon(controller.run)
        await trio.testing.wait_all_tasks_blocked()
        [after] = vmstate.read_vms(paths)
        assert after["status"]["printableStatus"] == "CrashLoopBackOff"
        assert after["status"]["startFailure"] == before["status"]["startFailure"]
        assert again.started == []  # not started at once, nor counted a fourth time
        started = again.new
        await started.wait()
        assert again.started[0] - restarted_at >= 85  # the back-off went on
        again.end("default/web", ran=False)
        await trio.testing.wait_all_tasks_blocked()
        [last] = vmstate.read_vms(paths)
        assert last["status"]["startFailure"]["consecutiveFailCount"] == 4
        nursery.cancel_scope.cancel()


async def test_a_vmi_waiting_for_its_image_shows_err_image_pull_then_back_off(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    paths = Paths(tmp_path)
    [entry] = plan_data("vm.yaml", VM, Config(), paths, Accelerator.TCG)
    supervisor = Supervisor(tmp_path)
    controller = vms.Controller(supervisor, paths, Config())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        controller.apply(Desired({}, {}, (), vms={"default/web": entry}))
        nursery.start_soon(controller.run)
        await trio.testing.wait_all_tasks_blocked()
        status = supervisor.statuses["default/web"]
        for reason in ("ErrImagePull", "ImagePullBackOff"):  # as vmid/runtime/pull.py shows it
            status.reason = reason
            status.condition("Ready", False, reason, f'{reason}: "example.org/disk:1"')
            supervisor.tell()
            await trio.testing.wait_all_tasks_blocked()
            [vm] = vmstate.read_vms(paths)
            assert vm["status"]["printableStatus"] == reason
            [ready] = [c for c in vm["status"]["conditions"] if c["type"] == "Ready"]
            assert ready == {
                "type": "Ready",
                "status": "False",
                "reason": reason,
                "message": f'{reason}: "example.org/disk:1"',
            }
        status.reason = ""  # pulled
        status.conditions.pop("Ready")
        supervisor.tell()
        await trio.testing.wait_all_tasks_blocked()
        [vm] = vmstate.read_vms(paths)
        assert vm["status"]["printableStatus"] == "Starting"
        nursery.cancel_scope.cancel()
