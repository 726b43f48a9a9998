"""containerDisks pulled from OCI registries: skopeo speaks the registry, vmid checks the rest.

skopeo (the containers ecosystem's tool) resolves a reference and copies the image into a
private staging directory, honouring registries.conf, auth.json and policy.json; it checks
every blob against its digest before it names the blob's file by it. vmid checks the manifest
against its digest, uses only layers skopeo named so (an image's one layer, read while skopeo
writes it, counts only if it is that file; other layers are hashed again as they are read),
and takes ONE regular file out of the layers (KubeVirt's `/disk/` or `containerDisk.path`),
written to one fixed path (a member's name never becomes a path) and bounded in size; the
image store checks and converts it as any imported file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol, cast

import attrs
import trio

from vmid.api import imageref
from vmid.config import Images, Paths
from vmid.errors import PullError, VmidError
from vmid.host.storage import SOURCE_COPY, ImageStore, StoredImage

log = logging.getLogger(__name__)

#: skopeo's environment: none of the daemon's (no proxy, no DOCKER_CONFIG, no REGISTRY_AUTH_FILE,
#: no $HOME/.docker/config.json: only the files vmid names), messages in stable English.
SKOPEO_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
}
INSPECT_TIMEOUT = 120.0
COPY_TIMEOUT = 3600.0
#: CPU seconds skopeo may use: a copy is I/O bound; a runaway process is not.
SKOPEO_CPU_SECONDS = 1800
MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's limit on a manifest
MAX_LAYERS = 128
CHUNK = 1 << 20
#: Decompressed bytes of other files the layers may hold besides the disk (a containerDisk
#: built FROM a small base image): bounded, as a gzip bomb is only a few KiB.
OTHER_FILES_BYTES = 1 << 30
DISK_DIR = "disk"
REGISTRIES_CONF = "/etc/containers/registries.conf"
PLATFORM = {"os": "linux", "architecture": "amd64"}
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
#: skopeo's words for failures a user should not have to decode, and what they mean.
_MEANINGS = (
    (
        "Digest did not match",
        "a layer the registry sent does not match its digest (corrupt, or cut short)",
    ),
    (
        "happened during read: unexpected EOF",
        "the registry's connection ended in the middle of a layer (the registry stopped, or "
        "the network broke)",
    ),
)
_SKOPEO_MESSAGE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
#: How often a pull reports its progress (bytes copied, of the total): a few seconds, so a
#: long pull shows it moves without a status write per chunk.
PROGRESS_SECONDS = 2.0
#: How often a layer being copied is looked at for more bytes.
FOLLOW_POLL_SECONDS = 0.002
#: Called with the bytes copied so far and the image's total (0: not known).
Progress = Callable[[int, int], None]
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib reads the gzip header and checks the trailer
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@attrs.frozen(kw_only=True)
class Skopeo:
    """How vmid runs skopeo: its binary and the containers files it is told to use."""

    binary: str = "skopeo"
    registriesConf: Path | None = None
    authFile: Path | None = None
    policy: Path | None = None

    def _argv(self, command: str) -> list[str]:
        argv = [self.binary]
        if self.registriesConf is not None and self.registriesConf.exists():
            argv += ["--registries-conf", str(self.registriesConf)]
        if self.policy is not None:
            argv += ["--policy", str(self.policy)]
        argv.append(command)
        if self.authFile is not None and self.authFile.exists():
            argv += ["--authfile", str(self.authFile)]
        return argv

    async def raw_manifest(self, ref: str, home: Path) -> bytes:
        """The top manifest (or index) `ref` names, as the registry sent it."""
        argv = [*self._argv("inspect"), "--raw", f"docker://{ref}"]
        out = await self._run(argv, home, INSPECT_TIMEOUT, capture=True)
        if len(out) > MAX_MANIFEST_BYTES:
            raise PullError(f"{ref}: its manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        return out

    async def copy(self, source: str, directory: Path, progress: bool) -> None:
        """Copy image `source` (a reference by digest) to `directory` (skopeo's `dir:`)."""
        argv = [*self._argv("copy"), *([] if progress else ["--quiet"])]
        argv += ["--override-os", PLATFORM["os"], "--override-arch", PLATFORM["architecture"]]
        argv += [f"docker://{source}", f"dir:{directory}"]
        await self._run(argv, directory.parent, COPY_TIMEOUT, capture=not progress)

    async def _run(self, argv: list[str], home: Path, limit: float, capture: bool) -> bytes:
        # HOME and TMPDIR are the private staging directory: no credentials found elsewhere.
        env = {**SKOPEO_ENVIRONMENT, "HOME": str(home), "TMPDIR": str(home)}
        limited = ["prlimit", f"--cpu={SKOPEO_CPU_SECONDS}", "--", *argv]
        try:
            with trio.move_on_after(limit) as scope:
                result = await trio.run_process(
                    limited,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=capture,
                    capture_stderr=True,
                    check=False,
                )
        except FileNotFoundError as exc:
            raise PullError("prlimit is not installed: apt-get install util-linux") from exc
        if scope.cancelled_caught:
            raise PullError(f"skopeo {argv[-3]} took longer than {limit:g} s")
        if result.returncode == 127 or b"failed to execute" in result.stderr:
            raise PullError(f"{self.binary} is not installed: apt-get install skopeo")
        if result.returncode != 0:
            raise PullError(explained(skopeo_message(result.stderr.decode(errors="replace"))))
        return result.stdout or b""


def skopeo_for(paths: Paths, images: Images) -> Skopeo:
    """skopeo with vmid.yaml's files; with --root, that root's registries.conf too (else
    skopeo reads the host's own, /etc/containers/registries.conf and registries.conf.d)."""
    own = paths.root != Path("/")
    return Skopeo(
        binary=images.skopeo,
        registriesConf=paths.under_root(REGISTRIES_CONF) if own else None,
        authFile=paths.under_root(images.authFile),
        policy=paths.under_root(images.policy) if images.policy else None,
    )


def skopeo_message(stderr: str) -> str:
    """What skopeo said, without its logging decoration (`time=... level=fatal msg="..."`)."""
    found = _SKOPEO_MESSAGE.findall(stderr)
    if not found:
        return stderr.strip() or "skopeo failed"
    return str(json.loads(f'"{found[-1]}"'))


def explained(message: str) -> str:
    """skopeo's message, after what it means when its own words do not say it plainly."""
    for words, meaning in _MEANINGS:
        if words in message:
            return f"{meaning}; skopeo: {message}"
    return message


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def platform_manifest(raw: bytes, shown: str) -> str | None:
    """The digest of the linux/amd64 manifest when `raw` is an index; None for a manifest."""
    data = _json(raw, f"{shown}: its manifest")
    if data.get("mediaType") not in INDEX_TYPES and "manifests" not in data:
        return None
    entries = data.get("manifests")
    for entry in entries if isinstance(entries, list) else []:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(platform, dict) and all(platform.get(k) == v for k, v in PLATFORM.items()):
            return _digest(entry, f"{shown}: the image index")[0]
    raise PullError(f"{shown}: the image index has no linux/amd64 image")


def _digest(entry: object, where: str) -> tuple[str, int]:
    """A descriptor's digest (sha256 only, so also a safe file name) and size."""
    digest = entry.get("digest") if isinstance(entry, dict) else None
    size = entry.get("size") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise PullError(f"{where} names {digest!r}: not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PullError(f"{where} gives {digest} no size")
    return digest, size


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise PullError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PullError(f"{what} is not a JSON object")
    return data


async def pull(
    store: ImageStore,
    skopeo: Skopeo,
    ref: str,
    disk_path: str | None = None,
    *,
    max_size: int,
    progress: bool = False,
    on_progress: Progress | None = None,
    tidy: trio.Nursery | None = None,
) -> StoredImage:
    """Resolve `ref` (normalised) to a digest; copy, check and store its disk unless the store
    has that digest already; point `ref` at it. `progress`: skopeo's bars on the terminal;
    `on_progress`: called every PROGRESS_SECONDS while the image is copied; `tidy`: where
    skopeo's copy is removed once the disk is stored (else before this returns)."""
    with store.staging() as staging:
        follower = _Follower(staging / "image", disk_path, staging / SOURCE_COPY, max_size)
        copy = _Copy(skopeo, staging / "image", progress, on_progress, follower)
        found: tuple[str, str] | StoredImage | None = None
        failed: VmidError | OSError | None = None
        async with trio.open_nursery() as nursery:
            # A name never pulled is copied by that name while skopeo resolves it; a name
            # stored is resolved first (its image may be there already).
            if not store.named(ref):
                nursery.start_soon(copy.run, ref)
            try:
                found = await _resolve(store, skopeo, ref, disk_path, staging, copy, nursery)
            except (VmidError, OSError) as exc:  # raised as it is, not in an exception group
                failed = exc  # (a store that cannot tag: a full disk, its callers' errors)
            if failed is not None or isinstance(found, StoredImage):
                nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed
        if isinstance(found, StoredImage):
            return found
        assert found is not None
        digest, manifest_digest = found
        await _extract(skopeo, copy, staging, manifest_digest, disk_path, max_size)
        return await _store(store, staging, ref, digest, disk_path, tidy)


async def _store(
    store: ImageStore,
    staging: Path,
    ref: str,
    digest: str,
    disk_path: str | None,
    tidy: trio.Nursery | None,
) -> StoredImage:
    """Commit the extracted disk; skopeo's copy is set aside first (the commit moves the
    staging directory into the store) and removed after: freeing its pages takes longer than
    the commit (~12 ms per 50 MiB), and the VMIs waiting need not wait for that."""
    aside = staging.with_name(f"{staging.name}.copy")
    (staging / "image").rename(aside)
    try:
        image = await store.commit(staging, ref, digest, disk_path, shown=f"{ref}@{digest}")
    except BaseException:
        shutil.rmtree(aside, ignore_errors=True)  # as the staging directory is
        raise
    remove = functools.partial(trio.to_thread.run_sync, shutil.rmtree, aside, True)
    if tidy is None:
        await remove()
    else:
        tidy.start_soon(remove, name=f"remove {aside.name}")
    return image


async def _resolve(
    store: ImageStore,
    skopeo: Skopeo,
    ref: str,
    disk_path: str | None,
    staging: Path,
    copy: _Copy,
    nursery: trio.Nursery,
) -> tuple[str, str] | StoredImage:
    """The stored image `ref` resolves to, or its digest and its platform manifest's once
    `copy` has copied that (started here, by digest, unless it was by name)."""
    raw = await skopeo.raw_manifest(ref, staging)
    digest = digest_of(raw)
    stored = await store.tag_stored(ref, digest, disk_path)
    if stored is not None:
        return stored
    platform = platform_manifest(raw, ref)
    manifest_digest = platform or digest
    source = f"{imageref.repository(ref)}@{manifest_digest}"
    # The platform's manifest says the total and the layers (one more request for an index).
    manifest = await skopeo.raw_manifest(source, staging) if platform else raw
    copy.total = _total(manifest)
    if _only_layer(manifest) is None:
        copy.follower.give_up()  # several layers: read in their order once copied
    if copy.started is None:
        nursery.start_soon(copy.run, source)
    await copy.wait()
    return digest, manifest_digest


async def _extract(
    skopeo: Skopeo,
    copy: _Copy,
    staging: Path,
    manifest_digest: str,
    disk_path: str | None,
    max_size: int,
) -> None:
    """The disk out of the copied image, checked: the follower's if it had it all, else read
    from the copy's layers. A copy by name that found another image than the digest's (the
    tag moved meanwhile) is made again, by digest."""
    copied, target = staging / "image", staging / SOURCE_COPY
    manifest = await trio.to_thread.run_sync(_copied_manifest, copied)
    if digest_of(manifest) != manifest_digest:
        await trio.to_thread.run_sync(shutil.rmtree, copied)
        repository = imageref.repository(copy.started or "")
        await skopeo.copy(f"{repository}@{manifest_digest}", copied, False)
    elif await trio.to_thread.run_sync(copy.follower.confirm, manifest_digest):
        return
    await trio.to_thread.run_sync(
        extract_disk, copied, manifest_digest, disk_path, target, max_size
    )


def _copied_manifest(copied: Path) -> bytes:
    with _open(copied / "manifest.json") as stream:
        return stream.read(MAX_MANIFEST_BYTES + 1)


class _Copy:
    """skopeo copying an image into a `dir:`, the follower extracting its layer as it comes,
    the bytes copied reported every PROGRESS_SECONDS. Its error is kept for `wait` (raised
    in its task, a nursery would wrap it in a group)."""

    def __init__(
        self,
        skopeo: Skopeo,
        copied: Path,
        bars: bool,
        on_progress: Progress | None,
        follower: _Follower,
    ) -> None:
        self._skopeo = skopeo
        self._copied = copied
        self._bars = bars
        self._on_progress = on_progress
        self.follower = follower
        #: The image's bytes, once its manifest is known (0 until then).
        self.total = 0
        #: The reference it copies, once started.
        self.started: str | None = None
        self._done = trio.Event()
        self._error: VmidError | OSError | None = None
        self._watching = trio.CancelScope()

    async def run(self, source: str) -> None:
        self.started = source
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, self.follower.run)
            if self._on_progress is not None:
                nursery.start_soon(self._watch, self._on_progress)
            ok = False
            try:
                await self._skopeo.copy(source, self._copied, self._bars)
                ok = True
            except (VmidError, OSError) as exc:  # kept for `wait`: not an exception group
                self._error = exc
            finally:
                self.follower.writer_done(ok)
                self._watching.cancel()
        self._done.set()

    async def wait(self) -> None:
        """Wait for the copy to end; raise its error."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    async def _watch(self, on_progress: Progress) -> None:
        with self._watching:
            while True:  # the first report once the total is known (the manifest resolved)
                await trio.sleep(PROGRESS_SECONDS)
                try:
                    on_progress(_copied_bytes(self._copied), self.total)
                except (VmidError, OSError) as exc:  # a report that could not be shown
                    log.warning("pull progress not reported: %s", exc)


def _only_layer(manifest: bytes) -> tuple[str, int] | None:
    """The digest and size of a manifest's one layer (None: several, or none)."""
    try:
        layers = json.loads(manifest).get("layers")
        if isinstance(layers, list) and len(layers) == 1:
            return _digest(layers[0], "the image's manifest")
    except (ValueError, AttributeError, PullError):
        pass
    return None


def _total(raw: bytes) -> int:
    """The bytes an image manifest's config and layers add up to (0 if it does not say)."""
    try:
        data = json.loads(raw)
        blobs = [data["config"], *data["layers"]]
        return sum(int(blob["size"]) for blob in blobs)
    except (ValueError, KeyError, TypeError):
        return 0


def _copied_bytes(directory: Path) -> int:
    """The bytes skopeo wrote in its `dir:` so far (each blob, whole or being written)."""
    try:
        with os.scandir(directory) as entries:
            return sum(e.stat(follow_symlinks=False).st_size for e in entries if e.is_file())
    except OSError:  # not made yet
        return 0


def extract_disk(
    directory: Path, manifest_digest: str, disk_path: str | None, target: Path, max_size: int
) -> None:
    """Write the image's one disk file (`disk_path`, or the one file in /disk/) to `target`.

    Raises:
        PullError: a digest does not match, no disk or two, a disk that is not a regular file,
            larger than `max_size`, or layers holding more than that in all.
    """
    raw = _read_checked(directory / "manifest.json", manifest_digest, MAX_MANIFEST_BYTES)
    layers = _json(raw, "the image's manifest").get("layers")
    if not isinstance(layers, list) or not layers or len(layers) > MAX_LAYERS:
        raise PullError(f"the image's manifest lists no layers, or more than {MAX_LAYERS}")
    wanted = disk_path.strip("/") if disk_path else None
    budget = _Budget(max_size + OTHER_FILES_BYTES)
    found: set[str] = set()

    def take(stream: _Counted) -> set[str]:
        return _take_disk(stream, wanted, target, max_size)

    try:
        for layer in layers:
            digest, size = _digest(layer, "the image's manifest")
            blob = directory / digest.removeprefix("sha256:")
            found |= _take_layer(blob, digest, size, take, budget)
            if len(found) > 1:  # in two layers (the same name again is the later layer's file)
                raise PullError(_two_disks(found))
    except PullError:
        target.unlink(missing_ok=True)  # nothing of a refused image is left
        raise
    if not found:
        where = f"at {disk_path}" if disk_path else f"under /{DISK_DIR}/"
        raise PullError(f"the image holds no disk file {where}: not a containerDisk")


class _Budget:
    """Decompressed bytes left to read, across all layers."""

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise PullError("the image's layers hold more data than a containerDisk may")


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Counted:
    """A stream of decompressed bytes that stops once the budget is spent."""

    def __init__(self, stream: _Reader, budget: _Budget) -> None:
        self._stream = stream
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._budget.take(len(data))
        return data


def _read_checked(path: Path, digest: str, limit: int) -> bytes:
    with _open(path) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise PullError(f"{path.name} is larger than {limit} bytes")
    if digest_of(data) != digest:
        raise PullError(f"the image's manifest does not match its digest {digest}")
    return data


def _take_layer(
    blob: Path, digest: str, size: int, take: Callable[[_Counted], set[str]], budget: _Budget
) -> set[str]:
    """Read one layer once: its digest is computed from the bytes decompressed (a zstd layer:
    before, zstd reads the file itself), and checked before its disk counts."""
    with _open(blob) as raw:
        magic = os.pread(raw.fileno(), 4, 0)
        if magic == _ZSTD_MAGIC:
            _check_digest(raw, digest, size)
            os.lseek(raw.fileno(), 0, os.SEEK_SET)  # zstd reads the fd itself, from its start
            with _zstd(raw) as unzstd:
                return take(_Counted(unzstd, budget))
        return _take_stream(raw, magic, digest, size, take, budget)


def _take_stream(
    raw: _Reader,
    magic: bytes,
    digest: str,
    size: int,
    take: Callable[[_Counted], set[str]],
    budget: _Budget,
) -> set[str]:
    """A gzip or tar layer read once, hashed as it is decompressed, checked at its end."""
    with _Hashing(raw) as hashed:
        unpacked = _Gunzip(hashed) if magic.startswith(_GZIP_MAGIC) else hashed
        try:
            found = take(_Counted(unpacked, budget))
        except PullError:
            hashed.check(digest, size)  # other bytes than the digest's say so first
            raise
        hashed.check(digest, size)
        return found


class _Abandoned(PullError):
    """The copy a follower reads failed or was cancelled."""


class _Follower:
    """An image's one layer read while skopeo writes it into its `dir:`, so the disk comes out
    as the layer arrives instead of after. Only a shortcut: unless the file read is the one
    layer the checked manifest names and held the one disk (`confirm`), the layers are read
    again after the copy, and that reading says what was wrong.

    The layer's digest is skopeo's check, not hashed again: skopeo (containers/image 5.23 in
    Debian 12: copy/digesting_reader.go, directory/directory_dest.go) hashes every blob as it
    reads it and fails at its end if it does not match; its `dir:` writes a blob to a
    temporary file and renames it to its digest's name only after that read ended without
    error. In the private staging directory, where only
    skopeo writes, a file named by a digest thus holds bytes checked against it: the follower
    keeps the file open until skopeo has ended and counts only if the file it read to its end
    is the one skopeo then named by the digest the manifest gives (the same inode)."""

    def __init__(self, copied: Path, disk_path: str | None, target: Path, limit: int) -> None:
        self._copied = copied
        #: The digest skopeo named the file read by, and its size, once read to its end.
        self._read: tuple[str, int] | None = None
        self._given_up = False
        self._wanted = disk_path.strip("/") if disk_path else None
        self._target = target
        self._limit = limit
        self._ended = threading.Event()
        self._ok = False
        self._found: set[str] = set()

    def give_up(self) -> None:
        """Stop: the image has several layers (read in order once copied)."""
        self._given_up = True

    def writer_done(self, ok: bool) -> None:
        """skopeo ended: the layer is whole (ok), or never will be."""
        self._ok = ok
        self._ended.set()

    def run(self) -> None:
        """In a worker thread: find the layer's file as skopeo writes it, extract as it grows."""
        try:
            layer = self._find()
            if layer is None:
                return
            file, magic = layer
            budget = _Budget(self._limit + OTHER_FILES_BYTES)
            with file:
                tally = _Tally(_Growing(file, self))
                unpacked = _Gunzip(tally) if magic.startswith(_GZIP_MAGIC) else tally
                found = self._take(_Counted(unpacked, budget))
                size = tally.finish()  # read to its end: skopeo has ended
                self._read = (self._name_of(file), size)
                self._found = found
        except (VmidError, OSError, EOFError, ValueError):  # read again after the copy
            self._found = set()

    def _take(self, stream: _Counted) -> set[str]:
        return _take_disk(stream, self._wanted, self._target, self._limit)

    def _name_of(self, file: IO[bytes]) -> str:
        """The digest skopeo named `file` by ("" if none), while it is open (its inode number
        cannot be another file's meanwhile)."""
        read = os.fstat(file.fileno())
        with os.scandir(self._copied) as entries:
            for entry in entries:
                named = entry.stat(follow_symlinks=False)
                if (named.st_dev, named.st_ino) == (read.st_dev, read.st_ino):
                    return "sha256:" + entry.name
        return ""

    def _find(self) -> tuple[IO[bytes], bytes] | None:
        """The file skopeo writes the layer to (not the config: JSON) and its magic."""
        seen: set[str] = {"version", "manifest.json"}
        while not self.aborted:
            ended = self._ended.is_set()
            with contextlib.suppress(FileNotFoundError), os.scandir(self._copied) as entries:
                for entry in entries:
                    if entry.name not in seen and entry.is_file(follow_symlinks=False):
                        found = self._layer_file(entry.path)
                        if found is not None:
                            return found
                        seen.add(entry.name)
            if ended:
                return None
            self.pause()
        return None

    def _layer_file(self, path: str) -> tuple[IO[bytes], bytes] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:  # renamed meanwhile: listed again under its digest
            return None
        file = os.fdopen(fd, "rb", buffering=0)
        while len(magic := os.pread(fd, 4, 0)) < 4 and not self.ended:
            self.pause()
        if magic[:1] == b"{" or magic == _ZSTD_MAGIC or len(magic) < 4:
            file.close()  # the config, or a layer zstd will read once it is whole
            return None
        return file, magic

    @property
    def aborted(self) -> bool:
        return self._given_up or (self._ended.is_set() and not self._ok)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def pause(self) -> None:
        """Wait a little for more bytes (less if skopeo ends meanwhile)."""
        self._ended.wait(FOLLOW_POLL_SECONDS)

    def confirm(self, manifest_digest: str) -> bool:
        """Whether the layer read was the whole image: the one disk, in the file skopeo named
        by the one layer the copied manifest (checked against its digest) names, all of it."""
        if not self._ok or len(self._found) != 1 or self._read is None:
            return False
        try:
            raw = _read_checked(self._copied / "manifest.json", manifest_digest, MAX_MANIFEST_BYTES)
        except PullError:
            return False
        return _only_layer(raw) == self._read


class _Growing:
    """A file being written: reads wait for more bytes until the writer has ended."""

    def __init__(self, file: IO[bytes], follower: _Follower) -> None:
        self._file = file
        self._follower = follower

    def read(self, size: int = -1) -> bytes:
        """`size` bytes (CHUNK for -1), fewer only when skopeo wrote nothing more for a poll
        (whole chunks keep the decompressing calls few, whatever pieces skopeo writes in);
        b"" at the end."""
        size = size if size >= 0 else CHUNK
        pieces: list[bytes] = []
        left, waited = size, False
        while left:
            if self._follower.aborted:
                raise _Abandoned("the copy failed")
            ended = self._follower.ended  # before the read: a read after the end is the end
            more = self._file.read(left)
            if more:
                pieces.append(more)
                left, waited = left - len(more), False
            elif ended or (pieces and waited):
                # The layer's tail is read as soon as it is written, not once skopeo ends (its
                # fsync): a disk's zeros are its last KiB, and the longest to decompress.
                break
            else:
                self._follower.pause()
                waited = True
        return b"".join(pieces)


def _check_digest(stream: IO[bytes], digest: str, size: int) -> None:
    """Read the whole blob; it must be `size` bytes whose sha256 is `digest`."""
    with _Hashing(stream) as hashed:
        hashed.check(digest, size)


class _Tally:
    """A layer read as skopeo writes it, its bytes counted."""

    def __init__(self, stream: _Reader) -> None:
        self._stream = stream
        self._total = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._total += len(data)
        return data

    def finish(self) -> int:
        """Read what is left; the layer's size."""
        while self.read(CHUNK):
            pass
        return self._total


class _Hashing:
    """A blob read once, hashed as it is read: in a worker thread, so the hash of one chunk is
    computed while the next is decompressed (both release the GIL); one chunk at a time."""

    def __init__(self, stream: _Reader) -> None:
        self._stream = stream
        self._hasher = hashlib.sha256()
        self._total = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        self._hashing: Future[None] | None = None

    def __enter__(self) -> _Hashing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._total += len(data)
            if self._hashing is not None:
                self._hashing.result()  # never more than one chunk held for the hash
            self._hashing = self._pool.submit(self._hasher.update, data)
        return data

    def finish(self) -> tuple[str, int]:
        """Read what is left; the blob's digest and size."""
        while self.read(CHUNK):
            pass
        if self._hashing is not None:
            self._hashing.result()
        return "sha256:" + self._hasher.hexdigest(), self._total

    def check(self, digest: str, size: int) -> None:
        """Read what is left; the blob must be `size` bytes whose sha256 is `digest`."""
        found, total = self.finish()
        if found != digest or total != size:
            raise PullError(
                f"layer {digest} does not match its digest: the registry sent other bytes "
                f"({found}, {total} bytes)"
            )


class _Gunzip:
    """A gzip stream (members one after the other, as gzip(1) reads them) decompressed by
    zlib, which checks each member's CRC and length; reads return at most `size` bytes."""

    def __init__(self, raw: _Reader) -> None:
        self._raw = raw
        self._zlib = zlib.decompressobj(_GZIP_WBITS)
        self._input = b""

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        limit = size if size > 0 else CHUNK
        while True:
            if self._zlib.eof and not self._next_member():
                return b""
            if not self._input:
                self._input = self._raw.read(CHUNK)
                if not self._input:
                    raise EOFError("the gzip stream ends before its end-of-stream marker")
            data = self._zlib.decompress(self._input, limit)
            self._input = self._zlib.unconsumed_tail
            if data:
                return data

    def _next_member(self) -> bool:
        """After a member's end: start the next one, if more than zero padding follows."""
        rest = self._zlib.unused_data.lstrip(b"\0")
        while not rest:
            more = self._raw.read(CHUNK)
            if not more:
                return False
            rest = more.lstrip(b"\0")
        self._zlib = zlib.decompressobj(_GZIP_WBITS)
        self._input = rest
        return True


def _open(path: Path) -> IO[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise PullError(f"skopeo left no {path.name}") from exc
    return os.fdopen(fd, "rb")


@contextmanager
def _zstd(raw: IO[bytes]) -> Iterator[IO[bytes]]:
    try:
        process = subprocess.Popen(
            ["zstd", "-d", "-c", "-q"],
            stdin=raw,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=SKOPEO_ENVIRONMENT,
        )
    except FileNotFoundError as exc:
        raise PullError("zstd is not installed (a zstd layer): apt-get install zstd") from exc
    assert process.stdout is not None
    try:
        yield process.stdout
    finally:
        # The tar reader may stop before zstd's end: its exit status says nothing then (the
        # layer's digest was checked, a broken stream is a broken tar).
        process.stdout.close()
        process.kill()
        process.wait()


def _take_disk(stream: _Counted, wanted: str | None, target: Path, max_size: int) -> set[str]:
    """Copy the disk member of one tar layer to `target`; the disk names this layer holds."""
    found: set[str] = set()
    layer = _Forward(stream)
    try:
        # tarfile parses the headers; a member's bytes are read straight from the stream
        # (tarfile's own stream reader copies every byte three times more).
        with tarfile.open(fileobj=cast(IO[bytes], layer), mode="r:") as tar:
            for member in tar:
                name = _normal(member.name)
                if not _is_disk(name, wanted) or member.isdir():
                    continue
                found.add(name)
                if len(found) > 1:
                    raise PullError(_two_disks(found))
                _write_member(tar, layer, member, name, target, max_size)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise PullError(f"a layer is not a readable tar archive: {exc}") from exc
    return found


class _Forward:
    """A tar stream as tarfile reads a file: whole reads, seeks forward only (skipping)."""

    def __init__(self, stream: _Counted) -> None:
        self._stream = stream
        self._offset = 0

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or offset < self._offset:
            raise OSError("a layer is read once: no seeking back")
        while self._offset < offset:
            if not self.read(min(offset - self._offset, CHUNK)):
                break
        return self._offset

    def read(self, size: int = -1) -> bytes:
        """`size` bytes, fewer only at the end (a decompressor returns what it has)."""
        if size < 0:
            raise OSError("a layer is never read whole")
        if size == 0:
            return b""
        data = self._stream.read(size)
        while 0 < len(data) < size and (more := self._stream.read(size - len(data))):
            data += more
        self._offset += len(data)
        return data


class _Slice:
    """A member's bytes, read from the tar stream where its header left it."""

    def __init__(self, layer: _Forward, member: tarfile.TarInfo) -> None:
        layer.seek(member.offset_data)
        self._layer = layer
        self._left = member.size

    def read(self, size: int = -1) -> bytes:
        data = self._layer.read(min(size, self._left) if size >= 0 else self._left)
        if not data and self._left:
            raise EOFError("the layer ends in the middle of the disk file")
        self._left -= len(data)
        return data


def _two_disks(found: set[str]) -> str:
    names = ", ".join(sorted(found))
    return f"more than one file in /{DISK_DIR}/ ({names}): only one disk is allowed"


def _normal(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _is_disk(name: str, wanted: str | None) -> bool:
    if wanted is not None:
        return name == wanted
    parent, _, base = name.rpartition("/")
    return parent == DISK_DIR and not base.startswith(".wh.")


def _write_member(
    tar: tarfile.TarFile,
    layer: _Forward,
    member: tarfile.TarInfo,
    name: str,
    target: Path,
    max_size: int,
) -> None:
    if not member.isreg():
        raise PullError(f"/{name} is not a regular file (a link is never followed)")
    if member.size > max_size:
        raise PullError(f"/{name} is {member.size} bytes, more than the {max_size} allowed")
    # A sparse member (GNU or pax) is laid out in pieces: tarfile's own reader puts it together.
    source = tar.extractfile(member) if member.sparse is not None else _Slice(layer, member)
    assert source is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
        copy_sparse(source, out, member.size)


def copy_sparse(source: _Reader, out: IO[bytes], size: int) -> None:
    """Copy `size` bytes; blocks of zeros become holes (a disk is mostly zeros)."""
    zeros = bytes(CHUNK)
    while chunk := source.read(CHUNK):
        if chunk == zeros[: len(chunk)]:
            out.seek(len(chunk), os.SEEK_CUR)
        else:
            out.write(chunk)
    out.truncate(size)
