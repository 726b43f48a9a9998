"""Disks: each volume's host file (and how to prepare it) and its QEMU block nodes and device."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import attrs

from vmid.api import imageref
from vmid.api import types as t
from vmid.api.findings import Finding
from vmid.plan import cloudinit
from vmid.plan.context import Context
from vmid.plan.model import (
    Access,
    CloudInitIso,
    EmptyDisk,
    FileOverlay,
    HostFile,
    ImageOverlay,
    Prepared,
    device_id,
)
from vmid.plan.qemu import Value, blockdev, options

MIB = 2**20
_ERROR_POLICY = {
    t.ErrorPolicy.STOP: ("stop", "stop"),
    t.ErrorPolicy.IGNORE: ("ignore", "ignore"),
    t.ErrorPolicy.REPORT: ("report", "report"),
    t.ErrorPolicy.ENOSPACE: ("enospc", "report"),
}


@attrs.frozen
class _File:
    """A host file QEMU gets by fd: resolved beneath `root` (if any) without symlinks."""

    path: str
    root: str | None
    block_device_link: bool = False


@attrs.frozen
class _Backing:
    """Where a volume's data lives on the host, and in which format.

    `base` is the raw file under a qcow2 overlay; a qcow2 without one gets `backing: null`, so
    QEMU never opens a file an image header names.
    """

    file: _File
    format: str
    prepare: Prepared | None
    read_only: bool = False
    base: _File | None = None


class _Controllers:
    """Hands out SATA ports and SCSI units, and adds each controller once, when first needed."""

    def __init__(self, args: list[str]) -> None:
        self._args = args
        self._sata = 0
        self._scsi: int | None = None
        self._usb = 0

    def usb_transport(self) -> int:
        number, self._usb = self._usb, self._usb + 1
        return number

    def extra(self, device: str) -> None:
        self._args += ["-device", device]

    def sata_port(self) -> int:
        port, self._sata = self._sata, self._sata + 1
        return port

    def scsi_unit(self, iothread: str | None) -> int:
        if self._scsi is None:
            self.extra(options("virtio-scsi-pci", {"id": "scsi0", "iothread": iothread}))
            self._scsi = 0
        unit, self._scsi = self._scsi, self._scsi + 1
        return unit


def plan_disks(ctx: Context) -> tuple[list[str], list[Prepared], list[Finding]]:
    """The -blockdev/-device arguments and files for every disk, in spec order."""
    spec = ctx.vmi.spec
    volumes = {v.name: (i, v) for i, v in enumerate(spec.volumes)}
    args: list[str] = []
    prepare: list[Prepared] = []
    findings: list[Finding] = []
    controllers = _Controllers(args)
    for index, disk in enumerate(spec.domain.devices.disks):
        if disk.name not in volumes:  # validation admits only an empty CD-ROM without one
            args += _empty_cdrom(ctx, disk, controllers)
            continue
        volume_index, volume = volumes[disk.name]
        backing = _backing(ctx, volume, volume_index, findings)
        if backing is None:
            continue
        if backing.prepare is not None:
            prepare.append(backing.prepare)
        args += _disk_args(ctx, index, disk, backing, controllers)
    return args, prepare, findings


def _backing(
    ctx: Context, volume: t.Volume, index: int, findings: list[Finding]
) -> _Backing | None:
    own_path = posixpath.join(ctx.state_dir, "disks", f"{volume.name}.qcow2")
    own = _File(own_path, ctx.state_dir)
    if volume.containerDisk is not None:
        disk = volume.containerDisk
        image = imageref.normalize(disk.image)
        # The store's file for the reference; the runtime opens the digest's it resolved to.
        base = _File(ctx.image_path(image), ctx.images_dir)
        policy = str(disk.imagePullPolicy or "IfNotPresent")
        on_image = ImageOverlay(
            path=own_path, image=image, volume=volume.name, diskPath=disk.path, pullPolicy=policy
        )
        return _Backing(own, "qcow2", on_image, base=base)
    if volume.emptyDisk is not None:
        size = volume.emptyDisk.capacity.value() // MIB * MIB  # KubeVirt rounds down to MiB
        return _Backing(own, "qcow2", EmptyDisk(path=own_path, size=size))
    if volume.hostDisk is not None:
        return _host_disk(ctx, volume.hostDisk, index, findings)
    if volume.cloudInitNoCloud is not None or volume.cloudInitConfigDrive is not None:
        return _cloud_init(ctx, volume)
    if volume.persistentVolumeClaim is not None:
        claim = volume.persistentVolumeClaim
        return _claim(ctx, claim.claimName, claim.readOnly)
    if volume.dataVolume is not None and volume.dataVolume.name:
        return _claim(ctx, volume.dataVolume.name, False)
    if volume.ephemeral is not None:
        claim_path = ctx.claim_path(volume.ephemeral.persistentVolumeClaim.claimName)
        base = _File(claim_path, ctx.volumes_dir, block_device_link=True)
        overlay = FileOverlay(path=own_path, backing=claim_path, root=ctx.volumes_dir)
        return _Backing(own, "qcow2", overlay, base=base)
    raise AssertionError(f"validated volume {volume.name} has no source")  # pragma: no cover


def _claim(ctx: Context, name: str, read_only: bool) -> _Backing:
    path = ctx.claim_path(name)
    host_file = HostFile(path=path, root=ctx.volumes_dir, blockDeviceLink=True)
    return _Backing(_File(path, ctx.volumes_dir, True), "raw", host_file, read_only=read_only)


def _host_disk(
    ctx: Context, disk: t.HostDisk, index: int, findings: list[Finding]
) -> _Backing | None:
    assert disk.path is not None
    path = posixpath.normpath(disk.path)
    roots = [posixpath.normpath(r) for r in ctx.config.hostDiskRoots]
    root = next((r for r in roots if path.startswith(posixpath.join(r, ""))), None)
    if root is None:
        allowed = ", ".join(ctx.config.hostDiskRoots) or "none"
        findings.append(
            Finding(
                ("spec", "volumes", index, "hostDisk", "path"),
                f"{path} is outside the directories vmid.yaml allows for "
                f"hostDisk volumes (hostDiskRoots: {allowed})",
            )
        )
        return None
    create = None
    if disk.type is t.HostDiskType.DISK_OR_CREATE and disk.capacity is not None:
        create = disk.capacity.value()
    host_file = HostFile(path=path, createSize=create, root=root)
    return _Backing(_File(path, root), "raw", host_file)


def _cloud_init(ctx: Context, volume: t.Volume) -> _Backing:
    path = posixpath.join(ctx.state_dir, "cloud-init", f"{volume.name}.iso")
    if volume.cloudInitNoCloud is not None:
        files = cloudinit.nocloud_files(ctx.vmi, volume.cloudInitNoCloud)
        label = cloudinit.NOCLOUD_LABEL
    else:
        assert volume.cloudInitConfigDrive is not None
        files = cloudinit.configdrive_files(ctx.vmi, volume.cloudInitConfigDrive)
        label = cloudinit.CONFIGDRIVE_LABEL
    iso = CloudInitIso(path=path, label=label, files=files)
    return _Backing(_File(path, ctx.state_dir), "raw", iso)


def _cache(disk: t.Disk) -> tuple[bool, bool]:
    """(O_DIRECT, guest-visible write cache) for KubeVirt's cache modes.

    Unset means writeback: the host page cache, with the guest's flushes honoured, so no write
    the guest was told is durable can be lost; O_DIRECT would fail on tmpfs.
    """
    if disk.cache is t.Cache.NONE or disk.shareable:
        return True, True
    if disk.cache is None and disk.io is t.IOMode.NATIVE:
        return True, True  # native AIO needs O_DIRECT; KubeVirt's unset cache is "none" too
    if disk.cache is t.Cache.WRITETHROUGH:
        return False, False
    return False, True


def _disk_args(
    ctx: Context, index: int, disk: t.Disk, backing: _Backing, controllers: _Controllers
) -> Iterator[str]:
    kind, bus, read_only = _target(disk)
    read_only = read_only or backing.read_only
    direct, write_cache = _cache(disk)
    tuning: dict[str, object] = {"cache": {"direct": direct}}
    if disk.io:
        tuning["aio"] = disk.io.value
    discard = "unmap" if kind != "cdrom" else None
    format_node = f"disk{index}"
    backing_node = None
    if backing.base is not None:
        backing_node = f"base{index}"
        yield from _nodes(ctx, backing.base, backing_node, "raw", None, True, tuning, None)
    yield from _nodes(
        ctx, backing.file, format_node, backing.format, backing_node, read_only, tuning, discard
    )
    iothread = None
    if disk.dedicatedIOThread:
        iothread = f"iothread-{index}"
        yield from ("-object", options("iothread", {"id": iothread}))
    device: dict[str, Value] = {"drive": format_node, "id": device_id("disk", disk.name)}
    device.update(_placement(ctx, kind, bus, controllers, iothread))
    device.update(_device_properties(ctx, disk, kind, bus, write_cache))
    yield from ("-device", options(device.pop("driver"), device))  # type: ignore[arg-type]


def _empty_cdrom(ctx: Context, disk: t.Disk, controllers: _Controllers) -> Iterator[str]:
    """A CD-ROM drive with its tray closed and no medium, as KubeVirt's cdrom without a volume."""
    kind, bus, _ = _target(disk)
    device: dict[str, Value] = {"id": device_id("disk", disk.name)}
    device.update(_placement(ctx, kind, bus, controllers, None))
    device.update(_device_properties(ctx, disk, kind, bus, True))
    yield from ("-device", options(device.pop("driver"), device))  # type: ignore[arg-type]


def _nodes(
    ctx: Context,
    file: _File,
    node: str,
    driver: str,
    backing: str | None,
    read_only: bool,
    tuning: dict[str, object],
    discard: str | None,
) -> Iterator[str]:
    """A file node on the fd vmid passes, and the format node `node` on it.

    A qcow2 node always says which node backs it, `null` for none: QEMU then never opens a
    file named in its header.
    """
    access = Access.READ if read_only else Access.WRITE
    filename = ctx.files.add(file.path, access, file.root, file.block_device_link)
    common = {"read-only": read_only, **({"discard": discard} if discard else {})}
    file_node = {"driver": "file", "node-name": f"{node}-file", "filename": filename}
    yield from ("-blockdev", blockdev({**file_node, **tuning, **common}))
    format_node: dict[str, object] = {"driver": driver, "node-name": node, "file": f"{node}-file"}
    if driver == "qcow2":
        format_node["backing"] = backing
    yield from ("-blockdev", blockdev({**format_node, "cache": tuning["cache"], **common}))


def _target(disk: t.Disk) -> tuple[str, t.Bus, bool]:
    if disk.cdrom is not None:
        return "cdrom", disk.cdrom.bus or t.Bus.SATA, disk.cdrom.readonly is not False
    if disk.lun is not None:
        return "lun", disk.lun.bus or t.Bus.SATA, disk.lun.readonly
    target = disk.disk or t.DiskTarget()
    return "disk", target.bus or t.Bus.SATA, target.readonly


def _placement(
    ctx: Context, kind: str, bus: t.Bus, controllers: _Controllers, iothread: str | None
) -> dict[str, Value]:
    cd = kind == "cdrom"
    if bus is t.Bus.VIRTIO:
        return {"driver": ctx.virtio_model("virtio-blk-pci"), "iothread": iothread}
    if bus is t.Bus.SATA:
        return {"driver": "ide-cd" if cd else "ide-hd", "bus": f"ide.{controllers.sata_port()}"}
    if bus is t.Bus.SCSI:
        unit = controllers.scsi_unit(iothread)
        return {
            "driver": "scsi-cd" if cd else "scsi-hd",
            "bus": "scsi0.0",
            "channel": 0,
            "scsi-id": 0,
            "lun": unit,
        }
    if cd:
        # usb-storage cannot be a CD-ROM; a bulk-only transport carrying a SCSI CD-ROM can.
        transport = f"usb-bot{controllers.usb_transport()}"
        controllers.extra(options("usb-bot", {"bus": "usb.0", "id": transport}))
        return {"driver": "scsi-cd", "bus": f"{transport}.0"}
    return {"driver": "usb-storage", "bus": "usb.0"}


def _device_properties(
    ctx: Context, disk: t.Disk, kind: str, bus: t.Bus, write_cache: bool
) -> dict[str, Value]:
    props: dict[str, Value] = {"bootindex": disk.bootOrder, "serial": disk.serial}
    if kind != "cdrom":
        props["write-cache"] = write_cache
    if bus is not t.Bus.USB and kind != "cdrom":
        werror, rerror = _ERROR_POLICY[disk.errorPolicy or t.ErrorPolicy.STOP]
        props.update({"werror": werror, "rerror": rerror})
    if disk.shareable:
        props["share-rw"] = True
    if bus is t.Bus.VIRTIO and ctx.vmi.spec.domain.devices.blockMultiQueue:
        props["num-queues"] = ctx.vcpus
    custom = disk.blockSize.custom if disk.blockSize else None
    if custom is not None:
        props.update(
            {
                "logical_block_size": custom.logical,
                "physical_block_size": custom.physical,
                "discard_granularity": custom.discardGranularity,
            }
        )
    return props
