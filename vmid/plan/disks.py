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
    CloudInitIso,
    EmptyDisk,
    FileOverlay,
    HostFile,
    ImageOverlay,
    Prepared,
    device_id,
)
from vmid.plan.qemu import Value, options

MIB = 2**20
_ERROR_POLICY = {
    t.ErrorPolicy.STOP: ("stop", "stop"),
    t.ErrorPolicy.IGNORE: ("ignore", "ignore"),
    t.ErrorPolicy.REPORT: ("report", "report"),
    t.ErrorPolicy.ENOSPACE: ("enospc", "report"),
}


@attrs.frozen
class _Backing:
    """Where a volume's data lives on the host, and in which format."""

    path: str
    format: str
    prepare: Prepared | None
    read_only: bool = False


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
    disks = posixpath.join(ctx.state_dir, "disks")
    own = posixpath.join(disks, f"{volume.name}.qcow2")
    if volume.containerDisk is not None:
        image = imageref.normalize(volume.containerDisk.image)
        # vmid's store keeps one disk file per image, so containerDisk.path needs no lookup.
        overlay = ImageOverlay(path=own, image=image)
        return _Backing(own, "qcow2", overlay)
    if volume.emptyDisk is not None:
        size = volume.emptyDisk.capacity.value() // MIB * MIB  # KubeVirt rounds down to MiB
        return _Backing(own, "qcow2", EmptyDisk(path=own, size=size))
    if volume.hostDisk is not None:
        return _host_disk(ctx, volume.hostDisk, index, findings)
    if volume.cloudInitNoCloud is not None or volume.cloudInitConfigDrive is not None:
        return _cloud_init(ctx, volume)
    if volume.persistentVolumeClaim is not None:
        claim = volume.persistentVolumeClaim
        path = ctx.claim_path(claim.claimName)
        return _Backing(path, "raw", HostFile(path=path), read_only=claim.readOnly)
    if volume.dataVolume is not None and volume.dataVolume.name:
        path = ctx.claim_path(volume.dataVolume.name)
        return _Backing(path, "raw", HostFile(path=path))
    if volume.ephemeral is not None:
        backing = ctx.claim_path(volume.ephemeral.persistentVolumeClaim.claimName)
        return _Backing(own, "qcow2", FileOverlay(path=own, backing=backing))
    raise AssertionError(f"validated volume {volume.name} has no source")  # pragma: no cover


def _host_disk(
    ctx: Context, disk: t.HostDisk, index: int, findings: list[Finding]
) -> _Backing | None:
    assert disk.path is not None
    path = posixpath.normpath(disk.path)
    roots = ctx.config.hostDiskRoots
    if not any(path.startswith(posixpath.join(posixpath.normpath(r), "")) for r in roots):
        allowed = ", ".join(roots) if roots else "none"
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
    return _Backing(path, "raw", HostFile(path=path, createSize=create))


def _cloud_init(ctx: Context, volume: t.Volume) -> _Backing:
    path = posixpath.join(ctx.state_dir, "cloud-init", f"{volume.name}.iso")
    if volume.cloudInitNoCloud is not None:
        files = cloudinit.nocloud_files(ctx.vmi, volume.cloudInitNoCloud)
        label = cloudinit.NOCLOUD_LABEL
    else:
        assert volume.cloudInitConfigDrive is not None
        files = cloudinit.configdrive_files(ctx.vmi, volume.cloudInitConfigDrive)
        label = cloudinit.CONFIGDRIVE_LABEL
    return _Backing(path, "raw", CloudInitIso(path=path, label=label, files=files))


def _cache(disk: t.Disk) -> tuple[bool, bool]:
    """(O_DIRECT, guest-visible write cache) for KubeVirt's cache modes.

    Unset means writeback: the host page cache, with the guest's flushes honoured, so no write
    the guest was told is durable can be lost; O_DIRECT would fail on tmpfs.
    """
    if disk.cache is t.Cache.NONE or disk.shareable:
        return True, True
    if disk.cache is t.Cache.WRITETHROUGH:
        return False, False
    return False, True


def _disk_args(
    ctx: Context, index: int, disk: t.Disk, backing: _Backing, controllers: _Controllers
) -> Iterator[str]:
    kind, bus, read_only = _target(disk)
    read_only = read_only or backing.read_only
    direct, write_cache = _cache(disk)
    discard = "unmap" if kind != "cdrom" else None
    aio = disk.io.value if disk.io else None
    file_node, format_node = f"file{index}", f"disk{index}"
    common: dict[str, Value] = {"read-only": read_only, "discard": discard}
    yield "-blockdev"
    yield options(
        None,
        {
            "driver": "file",
            "node-name": file_node,
            "filename": backing.path,
            "aio": aio,
            "cache.direct": direct,
            **common,
        },
    )
    yield "-blockdev"
    yield options(
        None,
        {
            "driver": backing.format,
            "node-name": format_node,
            "file": file_node,
            "cache.direct": direct,
            **common,
        },
    )
    iothread = None
    if disk.dedicatedIOThread:
        iothread = f"iothread-{index}"
        yield from ("-object", options("iothread", {"id": iothread}))
    device: dict[str, Value] = {"drive": format_node, "id": device_id("disk", disk.name)}
    device.update(_placement(ctx, kind, bus, controllers, iothread))
    device.update(_device_properties(ctx, disk, kind, bus, write_cache))
    yield from ("-device", options(device.pop("driver"), device))  # type: ignore[arg-type]


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
