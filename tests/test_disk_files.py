"""Attacks through the files a manifest or an image names: symlinks out of hostDiskRoots and
volumesDir, qcow2 headers naming other files, a world-readable image store."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import fake_config, manifest, running_daemon
from vmid.errors import DiskFileError, StorageError
from vmid.host import beneath
from vmid.host.storage import ImageStore, prepare
from vmid.plan.model import HostFile

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed"),
    pytest.mark.timeout(60),
]


def create(*args: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args], check=True, timeout=30)


def with_volume(name: str, volume: str) -> str:
    return manifest(name).replace(
        "devices: {autoattachPodInterface: false}",
        "devices: {autoattachPodInterface: false, disks: [{name: d, disk: {bus: virtio}}]}\n"
        f"  volumes: [{{name: d, {volume}}}]",
    )


def test_a_hostdisk_through_a_symlink_to_etc_fails_that_vmi(tmp_path: Path) -> None:
    roots = tmp_path / "disks"
    (roots / "users/x").mkdir(parents=True)
    (roots / "users/x/etc").symlink_to("/etc")  # what a user may plant in their directory
    config = fake_config(f"hostDiskRoots: [{roots}]\n")
    with running_daemon(tmp_path, config) as daemon:
        path = roots / "users/x/etc/shadow"
        daemon.drop("steal.yaml", with_volume("steal", f"hostDisk: {{path: {path}, type: Disk}}"))
        daemon.drop("ok.yaml", manifest("plain"))
        daemon.wait_phase("steal", "Failed")
        daemon.wait_phase("plain", "Running")
        assert daemon.reason("steal") == (
            f"{path}: {roots}/users/x/etc is a symbolic link (to /etc); vmid follows no "
            "symlink beneath hostDiskRoots or volumesDir: name the real file"
        )


def test_disk_or_create_through_a_symlinked_dir_creates_nothing_outside(tmp_path: Path) -> None:
    roots, outside = tmp_path / "disks", tmp_path / "outside"
    (roots / "users/x").mkdir(parents=True)
    outside.mkdir()
    (roots / "users/x/out").symlink_to(outside)
    path = roots / "users/x/out/new.img"
    volume = f"hostDisk: {{path: {path}, type: DiskOrCreate, capacity: 1Mi}}"
    with running_daemon(tmp_path, fake_config(f"hostDiskRoots: [{roots}]\n")) as daemon:
        daemon.drop("plant.yaml", with_volume("plant", volume))
        daemon.wait_phase("plant", "Failed")
        assert f"{roots}/users/x/out is a symbolic link (to {outside})" in daemon.reason("plant")
    assert list(outside.iterdir()) == []


def test_a_symlink_as_the_hostdisk_itself_is_refused_even_to_a_file_inside(
    tmp_path: Path,
) -> None:
    roots = tmp_path / "disks"
    roots.mkdir()
    (roots / "real.img").write_bytes(b"\0" * 4096)
    (roots / "link.img").symlink_to(roots / "real.img")
    with pytest.raises(DiskFileError, match=r"link.img is a symbolic link \(to "):
        beneath.open_beneath(str(roots), str(roots / "link.img"), os.O_RDONLY)


def test_a_claim_may_only_be_a_root_owned_symlink_to_a_block_device(tmp_path: Path) -> None:
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    (volumes / "db.img").symlink_to("/etc/shadow")
    with pytest.raises(DiskFileError, match="which is not a block device"):
        beneath.open_beneath(
            str(volumes), str(volumes / "db.img"), os.O_RDONLY, block_device_link=True
        )
    os.chown(volumes / "db.img", 65534, 65534, follow_symlinks=False)
    with pytest.raises(DiskFileError, match="is a symbolic link"):
        beneath.open_beneath(
            str(volumes), str(volumes / "db.img"), os.O_RDONLY, block_device_link=True
        )


def test_a_root_owned_claim_symlink_to_a_block_device_is_that_device(tmp_path: Path) -> None:
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\0" * 2**20)
    attached = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        volumes = tmp_path / "volumes"
        volumes.mkdir()
        (volumes / "db.img").symlink_to(device)
        fd = beneath.open_beneath(
            str(volumes), str(volumes / "db.img"), os.O_RDONLY, block_device_link=True
        )
        try:
            assert stat.S_ISBLK(os.fstat(fd).st_mode)
            assert os.readlink(f"/proc/self/fd/{fd}") == device
        finally:
            os.close(fd)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


async def test_a_disk_that_cannot_be_created_leaves_no_partial_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", "qemu-img")
    path = tmp_path / "disks/huge.img"
    item = HostFile(path=str(path), createSize=2**63 - 1, root=str(tmp_path))
    with pytest.raises(OSError, match="too large"):
        await prepare(item, store, "qemu-img")
    assert not path.exists()


async def test_an_image_naming_a_data_file_is_refused_before_qemu_img_reads_it(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "secret"
    image = tmp_path / "attack.qcow2"
    create("-o", f"data_file={fifo}", str(image), "1M")
    # Now a FIFO: qemu-img opening it would hang until its 30 s deadline, not refuse at once.
    fifo.unlink()
    os.mkfifo(fifo)
    store = ImageStore(tmp_path / "images", "qemu-img")
    with pytest.raises(StorageError) as refused:
        await store.add("example/attack", image)
    assert str(refused.value) == (
        f"{image}: a qcow2 image with an external data file ({fifo}) is not accepted: it would "
        "let the guest read and write that file; convert it to a self-contained image first"
    )
    assert store.list() == []


def test_the_issue_s_attack_image_is_refused_by_vmid_image_import(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret\n")
    image = tmp_path / "x.qcow2"
    create("-o", f"data_file={secret},data_file_raw=on", str(image), "1M")
    root = ["--root", str(tmp_path / "root")]
    done = subprocess.run(
        [sys.executable, "-m", "vmid.cli", "image", "import", *root, "ex/x", str(image)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode != 0
    assert "a qcow2 image with an external data file" in done.stderr
    assert "Traceback" not in done.stderr


async def test_the_image_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    create(str(image), "1M")
    store = ImageStore(tmp_path / "images", "qemu-img")
    old = os.umask(0o022)
    try:
        stored = await store.add("example/disk", image)
    finally:
        os.umask(old)
    assert stored.format == "raw"  # a qcow2 is converted: no header left for QEMU to read
    for directory in (store.root, stored.path.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for file in stored.path.parent.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o400, file
        assert file.stat().st_uid == os.geteuid()
