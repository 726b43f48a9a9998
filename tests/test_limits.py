"""One VMI's preparation cannot starve another's: qemu-img runs are bounded per VMI and daemon-wide.

A fake qemu-img (a shell script) logs when each run starts and ends; the runs overlapping at
any moment are counted from that log.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from tests.conftest import dump
from vmid.api.dump import to_data
from vmid.api.load import load_text
from vmid.config import Accelerator, Config, Paths
from vmid.host.storage import QEMU_IMG_RUNS, ImageStore
from vmid.plan.build import build
from vmid.runtime.instance import PREPARE_AT_ONCE, Instance
from vmid.runtime.network import Network
from vmid.runtime.status import Status

pytestmark = pytest.mark.timeout(60)

FAKE_QEMU_IMG = """#!/bin/sh
# qemu-img create -q -f qcow2 PATH SIZE, slowly, logging its start and end
echo "start $5" >> {log}
sleep 0.3
echo "end $5" >> {log}
"""


def instance(root: Path, name: str, disks: int, qemu_img: str) -> Instance:
    vmi = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "domain": {
                "memory": {"guest": "64Mi"},
                "devices": {
                    "autoattachPodInterface": False,
                    "disks": [{"name": f"d{i}", "disk": {"bus": "scsi"}} for i in range(disks)],
                },
            },
            "volumes": [{"name": f"d{i}", "emptyDisk": {"capacity": "1Mi"}} for i in range(disks)],
        },
    }
    (manifest,), problems = load_text(f"{name}.yaml", dump(vmi).encode())
    assert problems == []
    config = Config(qemuImg=qemu_img, accelerator=Accelerator.TCG)
    paths = Paths(root)
    plan, findings = build(manifest.vmi, config, paths, Accelerator.TCG)
    assert plan is not None, findings
    status = Status(
        paths.instance_runtime(f"default/{name}") / "status.json", to_data(manifest.vmi)
    )
    store = ImageStore(paths.state / "images", qemu_img)
    return Instance(plan, status, store, qemu_img, Accelerator.TCG, Network(config, paths))


def overlaps(lines: list[str], which: str = "") -> int:
    """The most runs (of disks whose path holds `which`) under way at one moment."""
    running = most = 0
    for line in lines:
        if which in line:
            running += 1 if line.startswith("start") else -1
            most = max(most, running)
    return most


async def test_a_vmi_with_many_disks_neither_floods_the_host_nor_blocks_another(
    tmp_path: Path,
) -> None:
    log = tmp_path / "qemu-img.log"
    fake = tmp_path / "qemu-img"
    fake.write_text(FAKE_QEMU_IMG.format(log=log))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    big = instance(tmp_path, "big", 24, str(fake))
    small = instance(tmp_path, "small", 1, str(fake))
    finished: dict[str, float] = {}

    async def prepare(vm: Instance) -> None:
        await vm._prepare()
        finished[vm.plan.name.split("/")[1]] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(prepare, big)
        await trio.sleep(0.1)  # the big one first: its 24 disks are already queued
        nursery.start_soon(prepare, small)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 25
    assert overlaps(lines) <= QEMU_IMG_RUNS.total_tokens
    assert overlaps(lines, "/namespaces/default/big/") <= PREPARE_AT_ONCE
    # The small VMI waited for one of big's runs at most, not for all 24 (~3.6 s at 2 at once).
    assert finished["small"] < finished["big"] - 2
