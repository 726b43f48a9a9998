"""An http DataVolume's import, as CDI's importer does it: download (gzip undone), check the
image (raw, or a self-contained qcow2 converted to raw), grow it to the DataVolume's size, and
only then put the claim file in place, so a failed import leaves nothing a VMI could start on.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import trio

from vmid.api import imageref
from vmid.config import Config, Paths
from vmid.errors import DataVolumeImportError, StorageError, VmidError
from vmid.host import beneath, datavolumes, registry
from vmid.host.storage import ImageStore, image_info, qemu_img

#: How long the server may stay silent (connect, or between two reads).
READ_TIMEOUT_SECONDS = 30.0
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
#: Where imports are staged in volumesDir (no claim name starts with a dot).
STAGING_DIR = ".importing"


#: Told the bytes downloaded so far and the bytes to come in all (None: not said), from the
#: download's thread.
Progress = Callable[[int, int | None], None]


def _no_progress(done: int, total: int | None) -> None:
    pass


async def import_url(
    url: str,
    volumes: Path,
    name: str,
    size: int,
    paths: Paths,
    config: Config,
    progress: Progress = _no_progress,
) -> int:
    """Import `url` (http(s):// or docker://) as the claim `name` of `size` bytes; the bytes
    downloaded (0 for an image the store had). `progress` follows an http download.

    Raises:
        DataVolumeImportError: the download, the pull, the image or the conversion failed.
    """
    limit = config.images.maxDiskSize.value()
    if url.startswith("pvc://"):
        source = url.removeprefix("pvc://")
        return await trio.to_thread.run_sync(clone, volumes, source, name, size)
    if not url.startswith("docker://"):
        return await import_http(url, volumes, name, size, config.qemuImg, limit, progress)
    store = ImageStore(paths.images, config.qemuImg)
    ref = url.removeprefix("docker://")
    try:
        try:
            image = store.get(imageref.normalize(ref))
            got = 0
        except StorageError:  # CDI pulls each time; vmid's store keeps what it pulled
            skopeo = registry.skopeo_for(paths, config.images)
            image = await registry.pull(store, skopeo, imageref.normalize(ref), max_size=limit)
            got = image.virtualSize
    except (VmidError, OSError) as exc:
        raise DataVolumeImportError(f"{ref}: {exc}") from exc
    await _from_store(image.path, volumes, name, size, config.qemuImg)
    return got


def clone(volumes: Path, source: str, name: str, size: int) -> int:
    """Copy claim `source` (beneath volumesDir, a root-owned symlink to a block device
    allowed, as for a VMI) sparse into the new claim `name`, grown to `size`; bytes copied."""
    path = datavolumes.claim_file(volumes, source)
    try:
        fd = beneath.open_beneath(str(volumes), str(path), os.O_RDONLY, block_device_link=True)
    except (OSError, VmidError) as exc:
        raise DataVolumeImportError(f"cannot clone claim {source}: {exc}") from exc
    staging = volumes / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=staging))
    try:
        with os.fdopen(fd, "rb") as stream:
            length = os.lseek(fd, 0, os.SEEK_END)
            if length > size:
                raise DataVolumeImportError(
                    f"claim {source} ({length} bytes) is larger than the DataVolume ({size} bytes)"
                )
            os.lseek(fd, 0, os.SEEK_SET)
            raw = work / "disk.img"
            with raw.open("wb") as out:
                registry.copy_sparse(stream, out, size)
        _put_in_place(raw, volumes, name)
        return length
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _from_store(disk: Path, volumes: Path, name: str, size: int, qemu_img: str) -> None:
    """A stored image's raw disk, copied sparse (qemu-img) into a new claim file."""
    staging = volumes / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=staging))
    try:
        await _install(disk, work, volumes, name, size, qemu_img, copy=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def import_http(
    url: str,
    volumes: Path,
    name: str,
    size: int,
    qemu_img_binary: str,
    max_bytes: int,
    progress: Progress = _no_progress,
) -> int:
    """Import `url` as the claim `name` of `size` bytes; the bytes downloaded.

    Raises:
        DataVolumeImportError: the download, the image or the conversion failed.
    """
    staging = volumes / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=staging))
    try:
        download = work / "download"
        got = await trio.to_thread.run_sync(_download, url, download, max_bytes, progress)
        image = await trio.to_thread.run_sync(_gunzipped, download, work / "image", max_bytes)
        await _install(image, work, volumes, name, size, qemu_img_binary)
        return got
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download(url: str, target: Path, max_bytes: int, progress: Progress) -> int:
    try:
        with urllib.request.urlopen(url, timeout=READ_TIMEOUT_SECONDS) as response:
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected is not None and expected.isdigit() else None
            done = _copy(response, target, max_bytes, lambda done: progress(done, total))
    except urllib.error.HTTPError as exc:
        raise DataVolumeImportError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataVolumeImportError(f"{url}: cannot download: {reason}") from exc
    if expected is not None and expected.isdigit() and int(expected) != done:
        raise DataVolumeImportError(f"{url}: truncated: {done} of {expected} bytes received")
    return done


def _copy(source: object, target: Path, max_bytes: int, progress: Callable[[int], None]) -> int:
    read = getattr(source, "read")  # noqa: B009 (an HTTP response, or a gzip stream)
    done = 0
    with target.open("wb") as out:
        while chunk := read(CHUNK):
            done += len(chunk)
            if done > max_bytes:
                raise DataVolumeImportError(
                    f"the image is larger than {max_bytes} bytes (images.maxDiskSize)"
                )
            out.write(chunk)
            progress(done)
    return done


def _gunzipped(download: Path, target: Path, max_bytes: int) -> Path:
    """The image itself: `download`, or what it unzips to (bounded: a gzip bomb stops)."""
    with download.open("rb") as stream:
        if stream.read(2) != GZIP_MAGIC:
            return download
    try:
        with gzip.open(download, "rb") as stream:
            _copy(stream, target, max_bytes, lambda done: None)
    except (OSError, EOFError) as exc:
        raise DataVolumeImportError(f"the gzip stream is damaged: {exc}") from exc
    download.unlink()
    return target


async def _install(
    image: Path,
    work: Path,
    volumes: Path,
    name: str,
    size: int,
    qemu_img_binary: str,
    copy: bool = False,
) -> None:
    try:
        info = await image_info(qemu_img_binary, image, Path(name))
        if info.virtualSize > size:
            raise DataVolumeImportError(
                f"the image's virtual size ({info.virtualSize} bytes) is larger than the "
                f"DataVolume's ({size} bytes)"
            )
        raw = work / "disk.img"
        if info.format == "qcow2" or copy:  # a stored image's disk stays in the store
            await qemu_img(qemu_img_binary, "convert", "-q", "-f", info.format, "-O", "raw",
                           str(image), str(raw), copies=True)  # fmt: skip
        else:
            os.rename(image, raw)
    except VmidError as exc:
        raise DataVolumeImportError(str(exc)) from exc
    os.truncate(raw, size)  # grown sparse to the size asked for, as CDI resizes
    _put_in_place(raw, volumes, name)


def _put_in_place(raw: Path, volumes: Path, name: str) -> None:
    os.chmod(raw, 0o600)
    target = datavolumes.claim_file(volumes, name)
    with contextlib.suppress(FileExistsError):
        os.link(raw, target)  # never over a file that appeared meanwhile
        return
    raise DataVolumeImportError(f"{target} appeared while importing: kept as it is")
