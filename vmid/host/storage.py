"""Disk files on the host: the local image store, overlays, empty disks, host disks, EFI vars.

An image is copied into the private store first and checked there: a qcow2 header naming a
backing file or an external data file is refused before any qemu-img reads it (CVE-2024-4467:
qemu-img itself would open the named file), then `qemu-img info` runs on it under CPU and
memory limits, as KubeVirt does, and it is converted to raw; any other file is raw bytes. The
store holds raw disks only, 0400 in 0700 directories, root's: QEMU gets them by fd and finds
no file name in them.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import attrs
import trio

from vmid.api.imageref import STORE_FILE, ImageRefError, normalize, store_name
from vmid.errors import StorageError
from vmid.host import beneath, safefile
from vmid.host.blankdisk import BlankDisks
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
#: The daemon's: a launch writes the empty qcow2 files qemu-img made for the same size earlier.
BLANK_DISKS = BlankDisks()
#: Converting a qcow2 to raw copies the whole disk: no CPU limit, a long deadline.
QEMU_IMG_CONVERT_TIMEOUT = 3600.0
IMAGE_META = "image.json"
SOURCE_COPY = "source"
#: flock(2)ed while the store's references change: a garbage collection (the daemon's, or
#: `vmid image prune`) never sees a digest stored but not yet named by its reference.
LOCK_FILE = ".lock"
#: The store's content, one directory per digest (and disk path).
CONTENT_DIR = "sha256"
STORE_DIR_MODE = 0o700
STORE_FILE_MODE = 0o400
QCOW2_MAGIC = b"QFI\xfb"
SECTOR = 512
QCOW2_HEADER_BYTES = 2 * 2**20  # header extensions live in the first cluster (<= 2 MiB)
_QCOW2_DATA_FILE_FEATURE = 1 << 2  # incompatible feature bit: an external data file
_QCOW2_DATA_FILE_EXTENSION = 0x44415441  # header extension holding the data file's name


@attrs.frozen
class ImageInfo:
    """What `qemu-img info` says about a file."""

    format: str
    virtualSize: int
    backing: str | None


@attrs.frozen
class StoredImage:
    """An image in vmid's local store: a reference and the content it points to."""

    ref: str
    path: Path
    format: str
    virtualSize: int
    #: `sha256:...`: a pulled image's manifest digest, or an imported file's own digest;
    #: None for an image an earlier vmid stored under its reference only.
    digest: str | None = None
    #: When the reference was last pointed at its content (RFC 3339, UTC).
    created: str = ""
    #: Put there by `vmid image import` (or an earlier vmid): no pull policy replaces it.
    local: bool = False


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

    The format is pinned, never probed: a probed format (vmdk...) could name other files, and
    qemu-img must never open a file an image names. `shown`: the name for messages.
    """
    shown = shown or path
    with path.open("rb") as stream:
        if stream.read(len(QCOW2_MAGIC)) != QCOW2_MAGIC:
            # Raw bytes have no header to check: `qemu-img info -f raw` only says the length,
            # rounded up to whole sectors as QEMU sees the disk (a process saved per pull).
            length = os.fstat(stream.fileno()).st_size
            return ImageInfo("raw", -(-length // SECTOR) * SECTOR, None)
        header = QCOW2_MAGIC + stream.read(QCOW2_HEADER_BYTES - len(QCOW2_MAGIC))
    _check_qcow2_header(header, shown)
    text = await qemu_img(qemu_img_binary, "info", "-f", "qcow2", "--output=json", str(path))
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
    """containerDisk images, content-addressed: `<state>/images/sha256/<id>/disk.img` (raw, one
    per digest) and references to them, `<state>/images/<quoted ref>/image.json`.

    A reference moved to new content never changes the file a running VM has open.
    """

    def __init__(self, root: Path, qemu_img_binary: str) -> None:
        self.root = root
        self._qemu_img = qemu_img_binary

    def __repr__(self) -> str:
        return f"<ImageStore root={str(self.root)!r}>"

    def _dir(self, ref: str) -> Path:
        return self.root / store_name(ref)

    def reference_path(self, ref: str) -> Path:
        """Where a plan names the disk of `ref` (the runtime opens the digest's it resolves to)."""
        return self._dir(ref) / STORE_FILE

    def _content(self, digest: str, disk_path: str | None = None) -> Path:
        """The directory of a digest's disk (of its file `disk_path`, when one is named)."""
        algorithm, _, hexa = digest.partition(":")
        if algorithm != "sha256" or not hexa.isalnum():
            raise StorageError(f"{digest!r} is not a sha256 digest")
        if disk_path is not None:
            hexa += "-" + hashlib.sha256(disk_path.encode()).hexdigest()[:16]
        return self.root / CONTENT_DIR / hexa

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A new private directory in the store (0700), removed with whatever it holds."""
        _private_dir(self.root)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (blocks: call it in a worker thread from trio)."""
        _private_dir(self.root)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.root / LOCK_FILE, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    async def add(self, ref: str, source: Path) -> StoredImage:
        """Check `source` and store it, as raw, under its own digest; point `ref` at it."""
        ref = _normal(ref)
        with self.staging() as staging:
            # Checked and converted as a private copy: the caller's file may change meanwhile.
            digest = await trio.to_thread.run_sync(_copy, source, staging / SOURCE_COPY)
            stored = await self.tag_stored(ref, digest, local=True)
            if stored is not None:
                return stored
            return await self.commit(staging, ref, digest, shown=str(source), local=True)

    def named(self, ref: str) -> bool:
        """Whether the store has a reference `ref` (to whichever content)."""
        return (self._dir(ref) / IMAGE_META).is_file()

    def has(self, digest: str, disk_path: str | None = None) -> bool:
        return (self._content(digest, disk_path) / IMAGE_META).is_file()

    async def tag_stored(
        self, ref: str, digest: str, disk_path: str | None = None, local: bool = False
    ) -> StoredImage | None:
        """Point `ref` at `digest`'s disk if the store has it (None if not), under the lock."""

        def tag() -> StoredImage | None:
            with self.locked():
                if not self.has(digest, disk_path):
                    return None
                return self._tag(ref, digest, disk_path, local)

        return await trio.to_thread.run_sync(tag)

    async def commit(
        self,
        staging: Path,
        ref: str,
        digest: str,
        disk_path: str | None = None,
        shown: str = "",
        local: bool = False,
    ) -> StoredImage:
        """Check `staging/source` as any image, store it raw as `digest`'s; point `ref` at it."""
        copy = staging / SOURCE_COPY
        info = await image_info(self._qemu_img, copy, shown=Path(shown or ref))
        if info.format == "qcow2":
            await self._convert(copy, staging / STORE_FILE)
        else:
            copy.rename(staging / STORE_FILE)
        await trio.to_thread.run_sync(_seal, staging, digest, info.virtualSize)
        install = self._install
        return await trio.to_thread.run_sync(install, staging, ref, digest, disk_path, local)

    def _install(
        self, staging: Path, ref: str, digest: str, disk_path: str | None, local: bool
    ) -> StoredImage:
        """Move the staged content in place and name it, in one hold of the lock."""
        target = self._content(digest, disk_path)
        _private_dir(target.parent)
        with self.locked():
            try:
                staging.rename(target)
            except OSError:
                if not self.has(digest, disk_path):  # else stored meanwhile (a pull by the CLI)
                    raise
            return self._tag(ref, digest, disk_path, local)

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

    def _tag(
        self, ref: str, digest: str, disk_path: str | None = None, local: bool = False
    ) -> StoredImage:
        """Point `ref` (normalised) at a stored digest's disk; `local`: by `vmid image import`.
        The caller holds the lock."""
        directory = self._dir(ref)
        _private_dir(self.root)
        _private_dir(directory)
        (directory / STORE_FILE).unlink(missing_ok=True)  # an earlier vmid's copy
        record = {"ref": ref, "digest": digest, "diskPath": disk_path, "created": _now()}
        if local:
            record["local"] = "import"
        safefile.write_atomically(directory / IMAGE_META, (json.dumps(record) + "\n").encode())
        return self.get(ref, disk_path)

    def get(self, ref: str, disk_path: str | None = None) -> StoredImage:
        """The stored image for a reference (normalised), or StorageError saying how to add it.

        `disk_path`: the file of the image it was pulled for (containerDisk.path).
        """
        try:
            data = json.loads((self._dir(ref) / IMAGE_META).read_text())
            digest = data.get("digest")
            if digest is None:  # imported by an earlier vmid: the disk is beside its record
                return _stored(ref, self._dir(ref), None, data.get("created", ""), True)
            if data.get("diskPath") == disk_path:
                directory = self._content(digest, disk_path)
                return _stored(ref, directory, digest, data["created"], "local" in data)
        except (OSError, ValueError, KeyError):
            pass
        raise StorageError(
            f"image {ref} is not in vmid's image store; add it with "
            f"`vmid image pull {ref}` or `vmid image import {ref} FILE`"
        )

    def get_locked(self, ref: str, disk_path: str | None = None) -> StoredImage:
        """`get` under the lock (blocks): a garbage collection removes the image before or
        after, never between the lookup and the caller's use of it (it is in use then)."""
        with self.locked():
            return self.get(ref, disk_path)

    def list(self) -> list[StoredImage]:
        """Every stored reference, sorted."""
        if not self.root.is_dir():
            return []
        refs = [
            urllib.parse.unquote(d.name)
            for d in self.root.iterdir()
            if not d.name.startswith(".") and (d / IMAGE_META).is_file()  # not a staging one
        ]
        images = []
        for ref in sorted(refs):
            with contextlib.suppress(StorageError):  # removed meanwhile
                images.append(self.lookup(ref))
        return images

    def lookup(self, ref: str) -> StoredImage:
        """The stored image of `ref`, whichever file of its image it was pulled for."""
        return self.get(ref, self._disk_path(ref))

    def remove(self, ref: str, keep: frozenset[str] = frozenset()) -> StoredImage:
        """Remove reference `ref`; its content too unless another reference or `keep` (digests
        in use) names it. Raises StorageError when `ref` is not stored."""
        with self.locked():
            image = self.lookup(ref)
            shutil.rmtree(self._dir(ref))
            unused = all(other.path != image.path for other in self.list())
            if image.digest is not None and image.digest not in keep and unused:
                shutil.rmtree(image.path.parent)
        return image

    def used(self, image: StoredImage) -> None:
        """Record that a VMI starts on `image` now (garbage collection removes the least
        recently used first): its content directory's mtime."""
        with contextlib.suppress(OSError):  # removed meanwhile: nothing to record
            os.utime(image.path.parent)

    def contents(self) -> tuple[StoredContent, ...]:
        """Every disk the store holds and the references naming it (none: left by a crash)."""
        named: dict[Path, tuple[StoredImage, ...]] = {}
        for image in self.list():
            named[image.path.parent] = (*named.get(image.path.parent, ()), image)
        content = self.root / CONTENT_DIR
        if content.is_dir():
            for directory in content.iterdir():
                if not directory.name.startswith("."):
                    named.setdefault(directory, ())
        found: tuple[StoredContent, ...] = ()
        for directory, images in named.items():
            with contextlib.suppress(OSError):  # removed meanwhile
                found += (_content_of(directory, images),)
        return found

    def delete(self, content: StoredContent) -> None:
        """Remove a disk and the references naming it (the caller holds the lock and knows
        none is in use)."""
        for ref in content.refs:
            with contextlib.suppress(StorageError):
                if self.lookup(ref).path.parent == content.directory:  # not moved meanwhile
                    shutil.rmtree(self._dir(ref))
        if not any(image.path.parent == content.directory for image in self.list()):
            shutil.rmtree(content.directory, ignore_errors=True)

    def _disk_path(self, ref: str) -> str | None:
        try:
            path: str | None = json.loads((self._dir(ref) / IMAGE_META).read_text())["diskPath"]
        except (OSError, ValueError, KeyError):
            return None
        return path


@attrs.frozen
class StoredContent:
    """One disk in the store and what garbage collection weighs about it."""

    directory: Path
    #: None for a disk an earlier vmid stored beside its reference.
    digest: str | None
    refs: tuple[str, ...]
    #: The bytes it takes on the store's filesystem (a sparse disk: its blocks).
    size: int
    #: When it was stored, and when it was stored or a VMI last started on it (epoch seconds).
    stored: float
    lastUsed: float
    #: Named by a reference `vmid image import` made: no pull brings it back, so it is pinned.
    local: bool


def _content_of(directory: Path, images: tuple[StoredImage, ...]) -> StoredContent:
    stored = (directory / IMAGE_META).stat().st_mtime
    size = sum(f.stat().st_blocks * 512 for f in directory.iterdir() if f.is_file())
    digests = {image.digest for image in images}
    digest = digests.pop() if len(digests) == 1 else None
    if not images:  # no reference: the digest is in the directory's record
        digest = _recorded_digest(directory / IMAGE_META)
    return StoredContent(
        directory=directory,
        digest=digest,
        refs=tuple(image.ref for image in images),
        size=size,
        stored=stored,
        lastUsed=max(stored, directory.stat().st_mtime),
        local=any(image.local for image in images),
    )


def _normal(ref: str) -> str:
    try:
        return normalize(ref)
    except ImageRefError as exc:
        raise StorageError(str(exc)) from exc


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stored(
    ref: str, directory: Path, digest: str | None, created: str, local: bool
) -> StoredImage:
    data = json.loads((directory / IMAGE_META).read_text())
    path = directory / STORE_FILE
    return StoredImage(ref, path, data["format"], data["virtualSize"], digest, created, local)


def _private_dir(directory: Path) -> None:
    """Make `directory` (and the store above it) 0700 whatever the umask."""
    directory.mkdir(mode=STORE_DIR_MODE, parents=True, exist_ok=True)
    directory.chmod(STORE_DIR_MODE)  # also closes a store an earlier vmid left world-readable


def _copy(source: Path, copy: Path) -> str:
    """Copy `source` to a new private file `copy`; the copy's sha256 digest."""
    hasher = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with source.open("rb") as reader, os.fdopen(os.open(copy, flags, 0o600), "wb") as writer:
        while chunk := reader.read(1 << 20):
            hasher.update(chunk)
            writer.write(chunk)
    return "sha256:" + hasher.hexdigest()


def _seal(staging: Path, digest: str, virtual_size: int) -> None:
    """The image and its metadata read-only for root only (0400); the staged copy gone."""
    (staging / SOURCE_COPY).unlink(missing_ok=True)
    (staging / STORE_FILE).chmod(STORE_FILE_MODE)
    meta = staging / IMAGE_META
    record = {"digest": digest, "format": "raw", "virtualSize": virtual_size}
    meta.write_text(json.dumps(record) + "\n")
    meta.chmod(STORE_FILE_MODE)


async def prepare(
    item: Prepared, store: ImageStore, qemu_img_binary: str, image: StoredImage | None = None
) -> None:
    """Make one file a plan needs exist, in the state the plan expects.

    Overlays are made anew (writes to a containerDisk die with each launch, as in KubeVirt);
    empty disks and EFI variables are made once and kept; host files are checked or created
    (root's: QEMU gets every file by fd). `image`: the one an ImageOverlay backs onto, when it
    was resolved (pulled) already.
    """
    if isinstance(item, ImageOverlay):
        image = image or store.get(item.image, item.diskPath)
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
            await _blank(qemu_img_binary, Path(item.path), item.size, durable=True)
    elif isinstance(item, HostFile):
        await trio.to_thread.run_sync(_host_file, item)
    elif isinstance(item, CloudInitIso):
        await trio.to_thread.run_sync(write_iso, item)
    elif isinstance(item, EfiVars):
        await trio.to_thread.run_sync(_efi_vars, item)


async def _overlay(qemu_img_binary: str, path: Path, size: int) -> None:
    """A new qcow2 naming no backing file: QEMU gets its backing as a -blockdev node."""
    _make_parent(path, replace=True)
    await _blank(qemu_img_binary, path, size, durable=False)  # made anew at each launch


async def _blank(qemu_img_binary: str, path: Path, size: int, durable: bool) -> None:
    """An empty qcow2 of `size` bytes at `path` (absent), as qemu-img creates it."""

    async def create() -> None:
        await qemu_img(qemu_img_binary, "create", "-q", "-f", "qcow2", str(path), str(size))

    await BLANK_DISKS.make(path, size, qemu_img_binary, create, durable)


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


def _recorded_digest(record: Path) -> str | None:
    """The digest a content directory's record names; None when a crash cut it short (the
    directory is still a disk no reference names, to be collected)."""
    try:
        data = json.loads(record.read_text())
    except ValueError:
        return None
    digest = data.get("digest") if isinstance(data, dict) else None
    return digest if isinstance(digest, str) else None
