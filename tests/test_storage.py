"""The image store and the files a plan prepares, with the real qemu-img."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmid.cli import main
from vmid.errors import StorageError
from vmid.host.storage import ImageStore, prepare
from vmid.plan.model import EfiVars, EmptyDisk, HostFile, ImageOverlay

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed"),
    pytest.mark.timeout(60),
]


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def info(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(qemu_img("info", "--output=json", str(path)))
    return data


def test_image_import_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 2**20)
    (tmp_path / "empty.yaml").write_text("")
    root = ["--root", str(tmp_path / "root"), "--config", str(tmp_path / "empty.yaml")]
    digest = hashlib.sha256(image.read_bytes()).hexdigest()  # an import is its own content's
    assert main(["image", "import", "kubevirt/cirros", str(image), *root]) == 0
    out = capsys.readouterr().out
    assert f"imported docker.io/kubevirt/cirros:latest (sha256:{digest}, 1Mi)" in out
    assert main(["image", "list", *root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["REF", "DIGEST", "SIZE", "IN", "USE", "AGE"]
    assert lines[1].split()[:4] == [
        "docker.io/kubevirt/cirros:latest",
        digest[:12],
        "1Mi",
        "<none>",
    ]


@pytest.mark.parametrize("size", [1000, 1 << 20])
async def test_a_raw_image_has_the_size_qemu_img_gives_it(tmp_path: Path, size: int) -> None:
    # No qemu-img runs on raw bytes: the store says the size QEMU sees, in whole sectors.
    image = tmp_path / "disk.raw"
    image.write_bytes(b"QFI" + bytes(size - 3))  # not quite a qcow2's magic
    stored = await ImageStore(tmp_path / "images", "qemu-img").add("example/raw", image)
    assert (stored.format, stored.virtualSize) == ("raw", info(image)["virtual-size"])
    assert stored.path.read_bytes() == image.read_bytes()


async def test_images_with_a_backing_file_are_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top))
    store = ImageStore(tmp_path / "images", "qemu-img")
    with pytest.raises(StorageError, match="backing file is not accepted"):
        await store.add("example/top", top)
    assert store.list() == []


async def test_missing_image_says_how_to_add_it(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", "qemu-img")
    overlay = ImageOverlay(path=str(tmp_path / "o.qcow2"), image="docker.io/x/y:latest")
    with pytest.raises(
        StorageError, match=re.escape("vmid image import docker.io/x/y:latest FILE")
    ):
        await prepare(overlay, store, "qemu-img")


async def test_overlay_is_new_at_each_prepare_and_names_no_file(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "8M")
    store = ImageStore(tmp_path / "images", "qemu-img")
    stored = await store.add("example/disk:1", image)
    overlay = tmp_path / "state/disks/root.qcow2"
    item = ImageOverlay(path=str(overlay), image=stored.ref)
    await prepare(item, store, "qemu-img")
    qemu_img("resize", "-q", str(overlay), "16M")  # a write the next launch must not see
    await prepare(item, store, "qemu-img")
    data = info(overlay)
    assert "backing-filename" not in data  # QEMU gets the image as a -blockdev node, by fd
    assert data["virtual-size"] == 8 * 2**20


async def test_empty_disk_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "disks/scratch.qcow2"
    item = EmptyDisk(path=str(path), size=64 * 2**20)
    store = ImageStore(tmp_path / "images", "qemu-img")
    await prepare(item, store, "qemu-img")
    qemu_img("resize", "-q", str(path), "128M")
    await prepare(item, store, "qemu-img")
    assert info(path)["virtual-size"] == 128 * 2**20


async def test_blank_qcow2_files_of_one_size_come_from_qemu_img_once(tmp_path: Path) -> None:
    """Each launch makes a new overlay: after the first of a size, from the bytes qemu-img
    wrote then (10-15 ms of qemu-img each launch, issue 16), the same file it would make."""
    counted = tmp_path / "qemu-img"
    runs = tmp_path / "runs"
    counted.write_text(f'#!/bin/sh\necho >> {runs}\nexec qemu-img "$@"\n')
    counted.chmod(0o755)
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "8M")
    store = ImageStore(tmp_path / "images", "qemu-img")
    stored = await store.add("example/disk:1", image)
    made = []
    for launch in range(3):
        overlay = tmp_path / f"state{launch}/disks/root.qcow2"
        await prepare(ImageOverlay(path=str(overlay), image=stored.ref), store, str(counted))
        scratch = tmp_path / f"state{launch}/disks/scratch.qcow2"
        await prepare(EmptyDisk(path=str(scratch), size=8 * 2**20), store, str(counted))
        made += [overlay, scratch]
    assert len(runs.read_text().splitlines()) == 1  # the first overlay; the rest are its bytes
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "fresh.qcow2"), str(8 * 2**20))
    fresh = tmp_path / "fresh.qcow2"
    for path in made:
        assert path.read_bytes() == fresh.read_bytes()
        assert path.stat().st_mode & 0o777 == fresh.stat().st_mode & 0o777
        qemu_img("check", "-q", str(path))


async def test_host_disks_are_created_sparse_or_must_exist(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", "qemu-img")
    created = tmp_path / "disks/data.img"
    item = HostFile(path=str(created), createSize=2**30, root=str(tmp_path))
    await prepare(item, store, "qemu-img")
    assert created.stat().st_size == 2**30
    assert created.stat().st_blocks == 0
    created.write_bytes(b"keep")
    await prepare(item, store, "qemu-img")
    assert created.read_bytes() == b"keep"  # an existing disk is never truncated
    with pytest.raises(StorageError, match="does not exist"):
        await prepare(
            HostFile(path=str(tmp_path / "nope.img"), root=str(tmp_path)), store, "qemu-img"
        )


async def test_efi_vars_are_copied_once(tmp_path: Path) -> None:
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"template")
    target = tmp_path / "state/efivars.fd"
    store = ImageStore(tmp_path / "images", "qemu-img")
    await prepare(EfiVars(path=str(target), template=str(template)), store, "qemu-img")
    target.write_bytes(b"guest wrote this")
    await prepare(EfiVars(path=str(target), template=str(template)), store, "qemu-img")
    assert target.read_bytes() == b"guest wrote this"
