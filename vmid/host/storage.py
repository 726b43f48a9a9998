"""Disk files on the host: the local image store, overlays, empty disks, host disks, EFI vars.

An image is copied into the private store first and checked there: a qcow2 header naming a
backing file or an external data file is refused before any qemu-img reads it (CVE-2024-4467:
qemu-img itself would open the named file), then `qemu-img info` runs under CPU and memory
limits, as KubeVirt does, and a qcow2 is converted to raw. The store holds raw disks only,
0400 in 0700 directories, root's: QEMU gets them by fd and finds no file name in them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.parse
from pathlib import Path

import attrs
import trio

from vmid.api.imageref import STORE_FILE, ImageRefError, normalize, store_name
from vmid.errors import VmidError
from vmid.host import beneath, safefile
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
#: Converting a qcow2 to raw copies the whole disk: no CPU limit, a long deadline.
QEMU_IMG_CONVERT_TIMEOUT = 3600.0
IMAGE_META = "image.json"
SOURCE_COPY = "source"
STORE_DIR_MODE = 0o700
STORE_FILE_MODE = 0o400
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_HEADER_BYTES = 2 * 2**20  # header extensions live in the first cluster (<= 2 MiB)
_QCOW2_DATA_FILE_FEATURE = 1 << 2  # incompatible feature bit: an external data file
_QCOW2_DATA_FILE_EXTENSION = 0x44415441  # header extension holding the data file's name


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


async def qemu_img(qemu_img_binary: str, *args: str, copies: bool = False) -> str:
    """Run qemu-img under CPU and memory limits and a deadline; its stdout, or StorageError.

    `copies`: it copies a whole disk (convert): no CPU limit and a long deadline.
    """
    timeout = QEMU_IMG_CONVERT_TIMEOUT if copies else QEMU_IMG_TIMEOUT
    limits = [] if copies else [f"--cpu={QEMU_IMG_CPU_SECONDS}"]
    argv = ["prlimit", *limits, f"--as={QEMU_IMG_MEMORY}", "--", qemu_img_binary, *args]
    async with QEMU_IMG_RUNS:
        with trio.move_on_after(timeout) as scope:
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
    if scope.cancelled_caught:
        raise StorageError(f"qemu-img {args[0]} took longer than {timeout:g} s")
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise StorageError(f"qemu-img {args[0]} failed: {message}")
    return result.stdout.decode()


async def image_info(qemu_img_binary: str, path: Path, shown: Path | None = None) -> ImageInfo:
    """Inspect an image file: a qcow2 (by its magic) naming no other file, or else raw.

    The format is pinned (`-f`), never probed: a probed format (vmdk...) could name other
    files, and qemu-img must never open a file an image names. `shown`: the name for messages.
    """
    shown = shown or path
    with path.open("rb") as stream:
        header = stream.read(QCOW2_HEADER_BYTES)
    fmt = "qcow2" if header.startswith(QCOW2_MAGIC) else "raw"
    if fmt == "qcow2":
        _check_qcow2_header(header, shown)
    text = await qemu_img(qemu_img_binary, "info", "-f", fmt, "--output=json", str(path))
    data = json.loads(text)
    info = ImageInfo(data["format"], int(data["virtual-size"]), data.get("backing-filename"))
    specific = data.get("format-specific", {}).get("data", {})
    if info.backing is not None:
        raise StorageError(f"{shown}: a qcow2 image with a backing file is not accepted")
    if specific.get("data-file") is not None:
        raise StorageError(_data_file_refusal(shown, specific["data-file"]))
    return info


def _check_qcow2_header(header: bytes, shown: Path) -> None:
    """Refuse a qcow2 header naming a backing file or an external data file (qcow2.txt)."""
    if len(header) < 104:
        raise StorageError(f"{shown}: truncated qcow2 header")
    version, backing_offset = struct.unpack_from(">IQ", header, 4)
    if backing_offset:
        raise StorageError(f"{shown}: a qcow2 image with a backing file is not accepted")
    if version < 3:
        return  # version 2 has neither feature bits nor an external data file
    (incompatible,) = struct.unpack_from(">Q", header, 72)
    name = _data_file_name(header)
    if name is not None or incompatible & _QCOW2_DATA_FILE_FEATURE:
        raise StorageError(_data_file_refusal(shown, name))


def _data_file_name(header: bytes) -> str | None:
    """The external data file a version 3 header's extensions name, if any."""
    (offset,) = struct.unpack_from(">I", header, 100)
    while offset + 8 <= len(header):
        kind, length = struct.unpack_from(">II", header, offset)
        if kind == 0:
            return None
        if kind == _QCOW2_DATA_FILE_EXTENSION:
            return header[offset + 8 : offset + 8 + length].decode(errors="replace")
        offset += 8 + (length + 7) // 8 * 8
    return None


def _data_file_refusal(shown: Path, name: str | None) -> str:
    named = f" ({name})" if name else ""
    return (
        f"{shown}: a qcow2 image with an external data file{named} is not accepted: it would "
        "let the guest read and write that file; convert it to a self-contained image first"
    )


class ImageStore:
    """containerDisk images by reference: `<state>/images/<quoted ref>/disk.img`, raw."""

    def __init__(self, root: Path, qemu_img_binary: str) -> None:
        self.root = root
        self._qemu_img = qemu_img_binary

    def __repr__(self) -> str:
        return f"<ImageStore root={str(self.root)!r}>"

    def _dir(self, ref: str) -> Path:
        return self.root / store_name(ref)

    async def add(self, ref: str, source: Path) -> StoredImage:
        """Check `source` and put it into the store, as raw, under the normalised `ref`."""
        try:
            ref = normalize(ref)
        except ImageRefError as exc:
            raise StorageError(str(exc)) from exc
        target = self._dir(ref)
        staging = target.with_name(target.name + ".importing")
        # Checked and converted as a private copy: the caller's file may change meanwhile.
        copy = await trio.to_thread.run_sync(_stage, self.root, source, staging)
        try:
            info = await image_info(self._qemu_img, copy, shown=source)
            if info.format == "qcow2":
                await self._convert(copy, staging / STORE_FILE)
            else:
                copy.rename(staging / STORE_FILE)
            await trio.to_thread.run_sync(_seal, staging, ref, info.virtualSize)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if target.exists():
            await trio.to_thread.run_sync(shutil.rmtree, target)
        staging.rename(target)
        return StoredImage(ref, target / STORE_FILE, "raw", info.virtualSize)

    async def _convert(self, qcow2: Path, raw: Path) -> None:
        await qemu_img(
            self._qemu_img,
            "convert",
            "-q",
            "-f",
            "qcow2",
            "-O",
            "raw",
            str(qcow2),
            str(raw),
            copies=True,
        )

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
        return StoredImage(ref, meta.parent / STORE_FILE, data["format"], data["virtualSize"])

    def list(self) -> list[StoredImage]:
        """Every stored image, sorted by reference."""
        if not self.root.is_dir():
            return []
        refs = [
            urllib.parse.unquote(d.name) for d in self.root.iterdir() if (d / IMAGE_META).is_file()
        ]
        return [self.get(ref) for ref in sorted(refs)]


def _stage(root: Path, source: Path, staging: Path) -> Path:
    """A private copy of `source` in a new staging directory (0700, whatever the umask)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(STORE_DIR_MODE)  # also closes a store an earlier vmid left world-readable
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=STORE_DIR_MODE)
    staging.chmod(STORE_DIR_MODE)
    copy = staging / SOURCE_COPY
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with source.open("rb") as reader, os.fdopen(os.open(copy, flags, 0o600), "wb") as writer:
        shutil.copyfileobj(reader, writer, 2**20)
    return copy


def _seal(staging: Path, ref: str, virtual_size: int) -> None:
    """The image and its metadata read-only for root only (0400); the staged copy gone."""
    (staging / SOURCE_COPY).unlink(missing_ok=True)
    (staging / STORE_FILE).chmod(STORE_FILE_MODE)
    meta = staging / IMAGE_META
    meta.write_text(json.dumps({"ref": ref, "format": "raw", "virtualSize": virtual_size}) + "\n")
    meta.chmod(STORE_FILE_MODE)


async def prepare(item: Prepared, store: ImageStore, qemu_img_binary: str) -> None:
    """Make one file a plan needs exist, in the state the plan expects.

    Overlays are made anew (writes to a containerDisk die with each launch, as in KubeVirt);
    empty disks and EFI variables are made once and kept; host files are checked or created
    (root's: QEMU gets every file by fd).
    """
    if isinstance(item, ImageOverlay):
        image = store.get(item.image)
        if image.format != "raw":
            raise StorageError(
                f"image {image.ref} was stored as {image.format} by an earlier vmid; import it "
                f"again (`vmid image import {image.ref} FILE`)"
            )
        await _overlay(qemu_img_binary, Path(item.path), image.virtualSize)
    elif isinstance(item, FileOverlay):
        size = await trio.to_thread.run_sync(_claim_size, item)
        await _overlay(qemu_img_binary, Path(item.path), size)
    elif isinstance(item, EmptyDisk):
        if _make_parent(Path(item.path), replace=False):
            await qemu_img(
                qemu_img_binary, "create", "-q", "-f", "qcow2", item.path, str(item.size)
            )
    elif isinstance(item, HostFile):
        await trio.to_thread.run_sync(_host_file, item)
    elif isinstance(item, CloudInitIso):
        await trio.to_thread.run_sync(write_iso, item)
    elif isinstance(item, EfiVars):
        await trio.to_thread.run_sync(_efi_vars, item)


async def _overlay(qemu_img_binary: str, path: Path, size: int) -> None:
    """A new qcow2 naming no backing file: QEMU gets its backing as a -blockdev node."""
    _make_parent(path, replace=True)
    await qemu_img(qemu_img_binary, "create", "-q", "-f", "qcow2", str(path), str(size))


def _make_parent(path: Path, replace: bool) -> bool:
    """Make the file's directory; remove the file if `replace`. True if the file is absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        path.unlink(missing_ok=True)
    return not path.exists()


def _open_existing(path: str, root: str | None, link: bool, what: str) -> int:
    assert root is not None, "the plan gives every host file its root"
    try:
        return beneath.open_beneath(root, path, os.O_RDONLY, block_device_link=link)
    except FileNotFoundError:
        raise StorageError(f"{path} ({what}) does not exist") from None


def _claim_size(item: FileOverlay) -> int:
    fd = _open_existing(item.backing, item.root, True, "the ephemeral volume's claim")
    try:
        return os.lseek(fd, 0, os.SEEK_END)  # a block device's size too
    finally:
        os.close(fd)


def _host_file(item: HostFile) -> None:
    if item.createSize is not None:
        assert item.root is not None, "the plan gives every host file its root"
        if beneath.create_beneath(item.root, item.path, item.createSize):
            return
    os.close(_open_existing(item.path, item.root, item.blockDeviceLink, "a hostDisk or claim"))


def _efi_vars(item: EfiVars) -> None:
    path = Path(item.path)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(item.template, "rb") as template:
        safefile.write_atomically(path, lambda stream: shutil.copyfileobj(template, stream))
