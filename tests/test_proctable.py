"""The process table kept between launches (vmid/runtime/proctable.py): a launch reads /proc
only when a process vmid ran has ended since the last read, and never decides on a stale
snapshot that shows something in a VMI's way."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vmid.config import QemuUids
from vmid.runtime import proctable
from vmid.runtime.proctable import ProcessTable

pytestmark = pytest.mark.timeout(30)

UID = QemuUids().first + QemuUids().count - 300  # no other test's


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "300"], user=UID, group=UID, extra_groups=[])
    yield process
    process.kill()
    process.wait()


def _uids(snapshot: proctable.Snapshot) -> set[int]:
    return set().union(*snapshot.ids.values())


async def test_a_snapshot_is_kept_until_a_process_vmid_ran_ends(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    table = ProcessTable(tmp_path, "qemu")
    first = await table.current()
    assert sleeper.pid in first.in_the_way("default/vm-a", UID)
    sleeper.kill()
    sleeper.wait()
    # Nothing vmid ran has ended: the launches to come use the same snapshot, no read.
    assert await table.current() is first
    table.ended()
    again = await table.current()
    assert again is not first
    assert UID not in _uids(again)
    assert again.in_the_way("default/vm-a", UID) == []


async def test_after_an_end_the_table_is_read_again_off_the_launch_path(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proctable, "SETTLE_SECONDS", 0)
    table = ProcessTable(tmp_path, "qemu")
    first = await table.current()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.keep_current)
        sleeper.kill()
        sleeper.wait()
        table.ended()
        with trio.fail_after(10):
            # The refresh reads in a worker thread: nothing to wait on but its result.
            while (kept := table._snapshot) is first or kept is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert await table.current() is kept  # read before any launch asked
        assert UID not in _uids(kept)
        nursery.cancel_scope.cancel()


async def test_an_end_during_a_read_makes_that_read_stale(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path, "qemu")
    read = table._read

    def read_then_an_end_meanwhile() -> proctable.Snapshot:
        snapshot = read()
        table.ended()  # a QEMU ended while /proc was being read: the read may predate it
        return snapshot

    table._reads._read = read_then_an_end_meanwhile
    stale = await table.current()
    table._reads._read = read
    assert await table.current() is not stale


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose working directory is VMI default/vm-a's QEMU directory."""
    qemu_dir = tmp_path / "default/vm-a/qemu"
    qemu_dir.mkdir(parents=True)
    process = subprocess.Popen(["sleep", "300"], cwd=qemu_dir)
    yield process
    process.kill()
    process.wait()


async def test_a_process_in_a_vmis_directory_is_in_its_way(
    tmp_path: Path, shell: subprocess.Popen[bytes]
) -> None:
    snapshot = await ProcessTable(tmp_path, "qemu").current()
    assert snapshot.in_the_way("default/vm-a", None) == [shell.pid]
    assert snapshot.in_the_way("default/vm-b", None) == []
