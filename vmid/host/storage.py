"""Disk files on the host: the local image store, overlays, empty disks, host disks, EFI vars.

Images are checked with `qemu-img info` under CPU and memory limits, as KubeVirt does: only raw,
or qcow2 without a backing file, is accepted, so an image can never point QEMU at another file.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import urllib.parse
from pathlib import Path

import attrs
import trio

from vmid.api.imageref import ImageRefError, normalize
from vmid.errors import VmidError
from vmid.host.cloudinit import write_iso
from vmid.plan.model import (
    CloudInitIso,
    EfiVars,
    EmptyDisk,
    FileOverlay,
    HostFile,
    ImageOverlay,
    Prepared,
)

QEMU_IMG_TIMEOUT = 30.0
# KubeVirt's limits for `qemu-img info` on untrusted images (pkg/os/disk/validation.go).
QEMU_IMG_CPU_SECONDS = 10
QEMU_IMG_MEMORY = 2000 * 2**20
#: qemu-img runs at once, daemon-wide: each holds a process and its pipes (fds), and a VMI's
#: many disks must not take them all (a VMI also bounds its own: runtime/instance.py).
QEMU_IMG_RUNS = trio.CapacityLimiter(4)
IMAGE_FILE = "disk.img"
IMAGE_META = "image.json"


class StorageError(VmidError):
    """A disk image or file could not be checked, found or created."""


@attrs.frozen
class ImageInfo:
    """What `qemu-img info` says about a file."""

    format: str
    virtualSize: int
    backing: str | None


@attrs.frozen
class StoredImage:
    """An image in vmid's local store."""

    ref: str
    path: Path
    format: str
    virtualSize: int


async def qemu_img(qemu_img_binary: str, *args: str) -> str:
    """Run qemu-img under CPU and memory limits and a deadline; its stdout, or StorageError."""
    argv = [
        "prlimit",
        f"--cpu={QEMU_IMG_CPU_SECONDS}",
        f"--as={QEMU_IMG_MEMORY}",
        "--",
        qemu_img_binary,
        *args,
    ]
    async with QEMU_IMG_RUNS:
        with trio.move_on_after(QEMU_IMG_TIMEOUT) as scope:
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
    if scope.cancelled_caught:
        raise StorageError(f"qemu-img {args[0]} took longer than {QEMU_IMG_TIMEOUT:g} s")
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise StorageError(f"qemu-img {args[0]} failed: {message}")
    return result.stdout.decode()


async def image_info(qemu_img_binary: str, path: Path) -> ImageInfo:
    """Inspect an image file; refuse anything but raw, or qcow2 without a backing file."""
    text = await qemu_img(qemu_img_binary, "info", "--output=json", str(path))
    data = json.loads(text)
    info = ImageInfo(data["format"], int(data["virtual-size"]), data.get("backing-filename"))
    if info.format not in ("raw", "qcow2"):
        raise StorageError(f"{path}: image format {info.format} is not supported: use raw or qcow2")
    if info.backing is not None:
        raise StorageError(f"{path}: a qcow2 image with a backing file is not accepted")
    return info


class ImageStore:
    """containerDisk images by reference: `<state>/images/<quoted ref>/disk.img`."""

    def __init__(self, root: Path, qemu_img_binary: str) -> None:
        self.root = root
        self._qemu_img = qemu_img_binary

    def __repr__(self) -> str:
        return f"<ImageStore root={str(self.root)!r}>"

    def _dir(self, ref: str) -> Path:
        return self.root / urllib.parse.quote(ref, safe=":@")

    async def add(self, ref: str, source: Path) -> StoredImage:
        """Check `source` and copy it into the store under the normalised `ref`."""
        try:
            ref = normalize(ref)
        except ImageRefError as exc:
            raise StorageError(str(exc)) from exc
        info = await image_info(self._qemu_img, source)
        target = self._dir(ref)
        staging = target.with_name(target.name + ".importing")
        await trio.to_thread.run_sync(_copy_image, source, staging, ref, info)
        if target.exists():
            await trio.to_thread.run_sync(shutil.rmtree, target)
        staging.rename(target)
        return StoredImage(ref, target / IMAGE_FILE, info.format, info.virtualSize)

    def get(self, ref: str) -> StoredImage:
        """The stored image for a reference (normalised), or StorageError saying how to add it."""
        meta = self._dir(ref) / IMAGE_META
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            raise StorageError(
                f"image {ref} is not in vmid's image store; add it with "
                f"`vmid image import {ref} FILE`"
            ) from None
        return StoredImage(ref, meta.parent / IMAGE_FILE, data["format"], data["virtualSize"])

    def list(self) -> list[StoredImage]:
        """Every stored image, sorted by reference."""
        if not self.root.is_dir():
            return []
        refs = [
            urllib.parse.unquote(d.name) for d in self.root.iterdir() if (d / IMAGE_META).is_file()
        ]
        return [self.get(ref) for ref in sorted(refs)]


def _copy_image(source: Path, staging: Path, ref: str, info: ImageInfo) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(source, staging / IMAGE_FILE)
    (staging / IMAGE_FILE).chmod(0o444)
    meta = {"ref": ref, "format": info.format, "virtualSize": info.virtualSize}
    (staging / IMAGE_META).write_text(json.dumps(meta) + "\n")


async def prepare(
    item: Prepared, store: ImageStore, qemu_img_binary: str, owner: tuple[int, int] | None = None
) -> None:
    """Make one file a plan needs exist, in the state the plan expects.

    Overlays are made anew (writes to a containerDisk die with each launch, as in KubeVirt);
    empty disks and EFI variables are made once and kept; host files are checked or created
    (`owner`, uid and gid, gets a host file vmid creates: it is QEMU's to write).
    """
    if isinstance(item, ImageOverlay):
        image = store.get(item.image)
        await _overlay(qemu_img_binary, Path(item.path), image.path, image.format)
    elif isinstance(item, FileOverlay):
        backing = _existing_disk(Path(item.backing), "the ephemeral volume's claim")
        await _overlay(qemu_img_binary, Path(item.path), backing, "raw")
    elif isinstance(item, EmptyDisk):
        if _make_parent(Path(item.path), replace=False):
            await qemu_img(
                qemu_img_binary, "create", "-q", "-f", "qcow2", item.path, str(item.size)
            )
    elif isinstance(item, HostFile):
        await trio.to_thread.run_sync(_host_file, item, owner)
    elif isinstance(item, CloudInitIso):
        await trio.to_thread.run_sync(write_iso, item)
    elif isinstance(item, EfiVars):
        await trio.to_thread.run_sync(_efi_vars, item)


async def _overlay(qemu_img_binary: str, path: Path, backing: Path, backing_format: str) -> None:
    _make_parent(path, replace=True)
    await qemu_img(
        qemu_img_binary,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        backing_format,
        "-b",
        str(backing),
        str(path),
    )


def _make_parent(path: Path, replace: bool) -> bool:
    """Make the file's directory; remove the file if `replace`. True if the file is absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        path.unlink(missing_ok=True)
    return not path.exists()


def _existing_disk(path: Path, what: str) -> Path:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StorageError(f"{path} ({what}) does not exist") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise StorageError(f"{path} ({what}) is neither a file nor a block device")
    return path


def _host_file(item: HostFile, owner: tuple[int, int] | None) -> None:
    path = Path(item.path)
    if path.exists() or item.createSize is None:
        _existing_disk(path, "a hostDisk or claim")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
    except FileExistsError:
        return  # created meanwhile: never truncate a disk that exists
    try:
        os.ftruncate(fd, item.createSize)  # sparse, like KubeVirt's createSparseRaw
        if owner is not None:
            os.fchown(fd, *owner)
    except (OSError, OverflowError) as exc:
        os.unlink(path)  # never leave a partial disk: the next start would take it as made
        raise StorageError(
            f"{path}: cannot create a {item.createSize}-byte hostDisk: {exc}"
        ) from exc
    finally:
        os.close(fd)


def _efi_vars(item: EfiVars) -> None:
    path = Path(item.path)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".staging")
    shutil.copyfile(item.template, staging)
    os.replace(staging, path)
