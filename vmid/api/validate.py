"""KubeVirt's admission rules for a defaulted VMI, plus vmid's own; every finding in one pass.

Messages keep KubeVirt's wording where it has one (pkg/virt-api/webhooks/validating-webhook,
pkg/storage/admitters, pkg/network/admitter), without the field path it repeats: vmid prints
the path in front of every message.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import re
import uuid
from collections.abc import Iterable

from vmid.api import defaults, imageref, podspec
from vmid.api import types as t
from vmid.api.findings import FieldPath, Finding, quote, render_path
from vmid.api.quantity import Quantity

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
MACHINE_TYPES = ("q35*", "pc-q35*")
MIN_MEMORY = 10**6  # "1M"
MAX_VCPUS = 288  # QEMU's limit for q35
SATA_PORTS = 6  # q35's built-in AHCI controller
BLOCK_MIN, BLOCK_MAX = 512, 2 * 2**20  # KubeVirt's bounds on a custom block size
SERIAL = re.compile(r"[A-Za-z0-9_.+-]*")
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_-]+")
MAC = re.compile(r"([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}")
RESERVED_MAC = "02:00:00:00:00:00"
NIC_MODELS = ("e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio")
CLOUD_INIT_LIMIT = 2048
TIMEZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
# QEMU's -cpu parser splits its whole text on every comma (`,,` is no escape there) and takes
# the first '=' of each item as the end of a name: names may hold neither, and nothing else
# QEMU's own model and feature names do not use.
CPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
CPU_FEATURE = re.compile(r"[a-z0-9][a-z0-9._-]*")
# libvirt's schema for a Hyper-V vendor id (what KubeVirt hands it): up to 12 characters, no
# comma; printable ASCII here, as it becomes a CPUID string.
VENDOR_ID = re.compile(r"[\x20-\x2b\x2d-\x7e]{1,12}")
ARRAY_LEN_MAX = 256  # KubeVirt's limit on disks, volumes, interfaces and networks
#: qcow2's largest image with QEMU's default 64 KiB clusters ("The image size is too large for
#: file format 'qcow2'" above it); a raw hostDisk gets the same bound.
MAX_DISK_BYTES = 2 * 2**50
RESERVED_LABELS = (
    "kubevirt.io/created-by",
    "kubevirt.io/migrationJobUID",
    "kubevirt.io/nodeName",
    "kubevirt.io/migrationTargetNodeName",
    "kubevirt.io/schedulable",
    "kubevirt.io/install-strategy",
)
UNSUPPORTED_ANNOTATIONS = {
    "hooks.kubevirt.io/hookSidecars": "hook sidecars are containers in KubeVirt's launcher pod",
    "kubevirt.io/ignitiondata": "Ignition data is an experimental KubeVirt feature",
}
SPEC: FieldPath = ("spec",)
DOMAIN: FieldPath = ("spec", "domain")
DEVICES: FieldPath = ("spec", "domain", "devices")


class _Findings:
    """Collects findings; every rule adds to it, none stops the others."""

    def __init__(self) -> None:
        self.items: list[Finding] = []

    def add(self, path: FieldPath, message: str) -> None:
        self.items.append(Finding(path, message))

    def unsupported(self, path: FieldPath, why: str) -> None:
        self.add(path, f"{path[-1]} is not supported by vmid: {why}")


def validate(vmi: t.VirtualMachineInstance) -> list[Finding]:
    """All admission findings for a defaulted VMI; an empty list means KubeVirt would admit it."""
    out = _Findings()
    _metadata(vmi.metadata, out)
    _spec(vmi.spec, out)
    _memory(vmi.spec.domain, out)
    _cpu(vmi.spec.domain, out)
    _max_sockets(vmi.spec.domain, out)
    _firmware_features_clock(vmi.spec.domain, out)
    _disks(vmi.spec, out)
    _volumes(vmi.spec.volumes, out)
    _networks(vmi.spec, out)
    _probes(vmi.spec, out)
    _boot_order(vmi.spec.domain.devices, out)
    _other_devices(vmi.spec.domain.devices, out)
    _io_threads(vmi.spec.domain, out)
    _hyperv(vmi.spec.domain, out)
    out.items += [*podspec.affinity(vmi.spec), *podspec.topology_spread(vmi.spec)]
    out.items += podspec.dns(vmi.spec)
    _service_account(vmi.spec, out)
    return out.items


def _dns_label(path: FieldPath, value: str, out: _Findings) -> None:
    if len(value) > 63:
        out.add(path, f"Invalid value: {quote(value)}: must be no more than 63 characters")
    elif not DNS1123_LABEL.fullmatch(value):
        out.add(path, f"Invalid value: {quote(value)}: {LABEL_MESSAGE}")


def _dns_subdomain(path: FieldPath, value: str, out: _Findings) -> None:
    if len(value) > 253:
        out.add(path, f"Invalid value: {quote(value)}: must be no more than 253 characters")
    elif not DNS1123_SUBDOMAIN.fullmatch(value):
        out.add(path, f"Invalid value: {quote(value)}: {SUBDOMAIN_MESSAGE}")


def _probes(spec: t.VirtualMachineInstanceSpec, out: _Findings) -> None:
    """KubeVirt's validateProbe, its pod-network rule, and Kubernetes' ranges of the numbers."""
    pod = any(network.pod is not None for network in spec.networks)
    for field in ("readinessProbe", "livenessProbe"):
        probe: t.Probe | None = getattr(spec, field)
        if probe is None:
            continue
        path = (*SPEC, field)
        name = f"spec.{field}"
        handlers = probe.handlers()
        if len(handlers) > 1:
            out.add(path, f"{name} must have exactly one probe type set")
        if not handlers:
            out.add(
                path,
                f"either {name}.tcpSocket, {name}.exec or {name}.httpGet must be set if a "
                f"{name} is specified",
            )
        for handler in ("httpGet", "tcpSocket"):
            if handler in handlers and not pod:
                out.add(
                    (*path, handler),
                    f"{name}.{handler} is only allowed if the Pod Network is attached",
                )
        _probe_numbers(probe, path, field == "livenessProbe", out)
    if spec.startStrategy is not None and spec.livenessProbe is not None:
        out.add(
            (*SPEC, "startStrategy"),
            "either spec.startStrategy or spec.livenessProbe should be provided.Pausing VMI with "
            "LivenessProbe is not supported",
        )


def _probe_numbers(probe: t.Probe, path: FieldPath, liveness: bool, out: _Findings) -> None:
    """Kubernetes' ValidateProbe: no negative numbers, thresholds and period at least 1, and a
    liveness probe's successThreshold exactly 1."""
    for key in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold",
                "failureThreshold"):  # fmt: skip
        value = getattr(probe, key)
        least = 0 if key == "initialDelaySeconds" else 1
        if value is not None and value < least:
            out.add(
                (*path, key), f"Invalid value: {value}: must be greater than or equal to {least}"
            )
    if liveness and probe.successThreshold not in (None, 1):
        out.add((*path, "successThreshold"), f"Invalid value: {probe.successThreshold}: must be 1")
    for handler in (probe.httpGet, probe.tcpSocket):
        if handler is not None and not 0 < handler.port < 65536:
            name = "httpGet" if handler is probe.httpGet else "tcpSocket"
            out.add(
                (*path, name, "port"),
                f"Invalid value: {handler.port}: must be between 1 and 65535, inclusive",
            )
    if probe.exec is not None and not probe.exec.command:
        out.add((*path, "exec", "command"), "Required value: a command to run in the guest")


def _metadata(meta: t.ObjectMeta, out: _Findings) -> None:
    if meta.name is None:
        out.add(("metadata", "name"), "Required value: name is required")
    else:
        _dns_subdomain(("metadata", "name"), meta.name, out)
    if meta.namespace is not None:
        _dns_label(("metadata", "namespace"), meta.namespace, out)
    for label in sorted(k for k in meta.labels if k in RESERVED_LABELS):
        out.add(
            ("metadata", "labels", label),
            "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited",
        )
    for key, why in UNSUPPORTED_ANNOTATIONS.items():
        if key in meta.annotations:
            out.unsupported(("metadata", "annotations", key), why)


def _spec(spec: t.VirtualMachineInstanceSpec, out: _Findings) -> None:
    if spec.architecture != "amd64":
        out.unsupported(
            (*SPEC, "architecture"),
            f"unsupported architecture: {spec.architecture}; vmid runs amd64 guests",
        )
    grace = spec.terminationGracePeriodSeconds
    if grace is not None and grace < 0:
        out.add(
            (*SPEC, "terminationGracePeriodSeconds"),
            f"Invalid value: {grace}: must be greater than or equal to 0",
        )
    if spec.hostname is not None and (
        len(spec.hostname) > 63 or not DNS1123_LABEL.fullmatch(spec.hostname)
    ):
        out.add(
            (*SPEC, "hostname"),
            f"does not conform to the kubernetes DNS_LABEL rules : {LABEL_MESSAGE}",
        )
    if spec.subdomain is not None and (
        len(spec.subdomain) > 253 or not DNS1123_SUBDOMAIN.fullmatch(spec.subdomain)
    ):
        out.add(
            (*SPEC, "subdomain"),
            f"does not conform to the kubernetes DNS_SUBDOMAIN rules : {SUBDOMAIN_MESSAGE}",
        )
    machine = spec.domain.machine.type if spec.domain.machine else None
    if machine is not None and not any(fnmatch.fnmatchcase(machine, g) for g in MACHINE_TYPES):
        out.add(
            (*DOMAIN, "machine", "type"),
            f"spec.domain.machine.type is not supported: "
            f"{machine} (allowed values: [{' '.join(MACHINE_TYPES)}])",
        )


def _memory(domain: t.DomainSpec, out: _Findings) -> None:
    if domain.memory is not None and domain.memory.reservedOverhead is not None:
        # The ReservedOverheadMemlock feature gate is Alpha: off on a default cluster.
        out.add(
            (*DOMAIN, "memory", "reservedOverhead"),
            "Reserved overhead memlock feature gate is not enabled in kubevirt-config",
        )
    resources = domain.resources or t.ResourceRequirements()
    requests, limits = resources.requests, resources.limits
    guest = domain.memory.guest if domain.memory else None
    if guest is None:
        out.add(
            (*DOMAIN, "resources", "requests", "memory"),
            "no memory requested, at least one of 'spec.domain.memory.guest', "
            "'spec.domain.memory.hugepages.pageSize' or "
            "'spec.domain.resources.requests.memory' must be set",
        )
    for name, table in (("requests", requests), ("limits", limits)):
        for resource in ("memory", "cpu"):
            q = table.get(resource)
            if q is not None and q.exact < 0:
                out.add(
                    (*DOMAIN, "resources", name, resource),
                    f"'{q}': must be greater than or equal to 0.",
                )
    for resource in ("memory", "cpu"):
        _not_above(requests.get(resource), limits.get(resource), resource, out)
    if guest is None:
        return
    # Defaults copy requests (or limits) into guest: report at the field the user wrote.
    explicit = guest not in (requests.get("memory"), limits.get("memory"))
    source = (*DOMAIN, "memory", "guest") if explicit else _memory_source(requests, guest)
    if 0 <= guest.exact < MIN_MEMORY:
        out.add(source, f"'{guest}': must be greater than or equal to 1M.")
    # A guest above the memory limit is refused only under the Stage rollout strategy, which a
    # default cluster (LiveUpdate) does not use: the guest gets its memory, as there.


def _memory_source(requests: dict[str, Quantity], guest: Quantity) -> FieldPath:
    table = "requests" if requests.get("memory") == guest else "limits"
    return (*DOMAIN, "resources", table, "memory")


def _not_above(
    request: Quantity | None, limit: Quantity | None, resource: str, out: _Findings
) -> None:
    if request is not None and limit is not None and 0 < limit.exact < request.exact:
        out.add(
            (*DOMAIN, "resources", "requests", resource),
            f"spec.domain.resources.requests.{resource} '{request}' is greater than "
            f"spec.domain.resources.limits.{resource} '{limit}'",
        )


def _cpu(domain: t.DomainSpec, out: _Findings) -> None:
    cpu = domain.cpu or t.CPU()
    path = (*DOMAIN, "cpu")
    for name in ("cores", "sockets", "threads"):
        value = getattr(cpu, name)
        if value is not None and value < 0:
            out.add((*path, name), f"Invalid value: {value}: must not be negative (0 means unset)")
    count = (cpu.cores or 1) * (cpu.sockets or 1) * (cpu.threads or 1)
    if count > MAX_VCPUS:
        out.add(path, f"{count} vCPUs requested; QEMU's q35 machine supports at most {MAX_VCPUS}")
    if cpu.dedicatedCpuPlacement:
        out.unsupported(
            (*path, "dedicatedCpuPlacement"),
            "pinning vCPUs to dedicated host CPUs is not implemented yet",
        )
    if cpu.isolateEmulatorThread and not cpu.dedicatedCpuPlacement:
        out.add(
            (*path, "isolateEmulatorThread"),
            "isolateEmulatorThread should be only set in combination with DedicatedCPUPlacement",
        )
    if cpu.model is not None and not CPU_MODEL.fullmatch(cpu.model):
        out.add(
            (*path, "model"),
            f"Invalid value: {quote(cpu.model)}: a CPU model name consists of letters, digits, "
            "'.', '_' or '-' and starts with a letter or digit, as QEMU's do (e.g. "
            f"'Skylake-Client-IBRS', regex used for validation is '{CPU_MODEL.pattern}')",
        )
    for index, feature in enumerate(cpu.features):
        if not feature.name:
            out.add(
                (*path, "features", index, "name"), "Required value: a CPU feature needs a name"
            )
        elif not CPU_FEATURE.fullmatch(feature.name):
            out.add(
                (*path, "features", index, "name"),
                f"Invalid value: {quote(feature.name)}: a CPU feature name consists of lower "
                "case letters, digits, '.', '_' or '-' and starts with a letter or digit, as "
                f"QEMU's do (e.g. 'tsc-deadline', regex used for validation is "
                f"'{CPU_FEATURE.pattern}')",
            )


def _max_sockets(domain: t.DomainSpec, out: _Findings) -> None:
    cpu = domain.cpu or t.CPU()
    if cpu.maxSockets and (cpu.sockets or 0) > cpu.maxSockets:
        out.add(
            (*DOMAIN, "cpu", "sockets"),
            "Number of sockets in CPU topology is greater than the maximum sockets allowed",
        )


def _firmware_features_clock(domain: t.DomainSpec, out: _Findings) -> None:
    firmware = domain.firmware or t.Firmware()
    fw: FieldPath = (*DOMAIN, "firmware")
    if firmware.uuid is not None:
        try:
            uuid.UUID(firmware.uuid)
        except ValueError:
            out.add((*fw, "uuid"), f"Invalid value: {quote(firmware.uuid)}: not a valid UUID")
    loader = firmware.bootloader
    if loader and loader.bios and loader.efi:
        out.add(
            (*fw, "bootloader"),
            "spec.domain.firmware.bootloader has both EFI and BIOS "
            "configured, but they are mutually exclusive.",
        )
    features = domain.features or t.Features()
    smm = features.smm is not None and features.smm.enabled
    if loader and loader.efi and loader.efi.secureBoot and not smm:
        out.add(
            (*fw, "bootloader", "efi", "secureBoot"),
            "spec.domain has EFI SecureBoot "
            "enabled. SecureBoot requires SMM, which is currently disabled.",
        )
    if features.apic is not None and features.apic.enabled is False:
        out.unsupported((*DOMAIN, "features", "apic"), "q35 guests always have an APIC")
    hyperv = features.hyperv
    spinlocks = hyperv.spinlocks if hyperv else None
    if spinlocks and spinlocks.spinlocks is not None and spinlocks.spinlocks < 4096:
        out.add(
            (*DOMAIN, "features", "hyperv", "spinlocks", "spinlocks"),
            "spinlocks retries must be at least 4096",
        )
    vendor = hyperv.vendorid if hyperv else None
    if vendor and vendor.enabled and (not vendor.vendorid or len(vendor.vendorid) > 12):
        out.add(
            (*DOMAIN, "features", "hyperv", "vendorid", "vendorid"),
            "vendorid must be 1 to 12 characters long",
        )
    elif vendor and vendor.vendorid and not VENDOR_ID.fullmatch(vendor.vendorid):
        out.add(
            (*DOMAIN, "features", "hyperv", "vendorid", "vendorid"),
            f"Invalid value: {quote(vendor.vendorid)}: vendorid must be printable ASCII "
            "without ','",
        )
    _clock(domain.clock, out)


def _clock(clock: t.Clock | None, out: _Findings) -> None:
    if clock is None:
        return
    path = (*DOMAIN, "clock")
    if clock.utc is not None and clock.timezone is not None:
        out.add(path, "clock must have only one of utc or timezone set")
    if clock.utc is not None and clock.utc.offsetSeconds:
        out.unsupported((*path, "utc", "offsetSeconds"), "a UTC offset is not implemented yet")
    if clock.timezone is not None and (not TIMEZONE.fullmatch(clock.timezone)):
        out.add(
            (*path, "timezone"),
            f'Invalid value: {quote(clock.timezone)}: not a time zone name like "Europe/Berlin"',
        )


def _too_many(path: FieldPath, items: tuple[object, ...], out: _Findings) -> bool:
    """KubeVirt's bound on a list a manifest makes the host act on; True if it is exceeded."""
    if len(items) <= ARRAY_LEN_MAX:
        return False
    out.add(path, f"{render_path(path)} list exceeds the {ARRAY_LEN_MAX} element limit in length")
    return True


def _disks(spec: t.VirtualMachineInstanceSpec, out: _Findings) -> None:
    if _too_many((*DEVICES, "disks"), spec.domain.devices.disks, out):
        return  # as KubeVirt: nothing over the limit is looked at
    volumes = {v.name: v for v in spec.volumes}
    seen: dict[str, int] = {}
    sata = 0
    for index, disk in enumerate(spec.domain.devices.disks):
        path = (*DEVICES, "disks", index)
        _dns_label((*path, "name"), disk.name, out)
        if disk.name in seen:
            out.add(
                (*path, "name"),
                f"spec.domain.devices.disks[{index}] and spec.domain.devices"
                f".disks[{seen[disk.name]}] must not have the same Name.",
            )
        seen.setdefault(disk.name, index)
        volume = volumes.get(disk.name)
        # An empty CD-ROM (no volume) is admitted: KubeVirt's DeclarativeHotplugVolumes gate is
        # Beta, on by default.
        if volume is None and disk.cdrom is None:
            out.add(
                (*path, "name"),
                f"Name {quote(disk.name)} not found: no volume in spec.volumes has this name",
            )
        targets = [n for n in ("disk", "cdrom", "lun") if getattr(disk, n) is not None]
        if len(targets) > 1:
            out.add(
                path,
                f"spec.domain.devices.disks[{index}] can only have a single target type defined",
            )
        bus = _disk_target(disk, path, volume, out)
        sata += bus is t.Bus.SATA
        _disk_options(disk, bus, path, out)
    if sata > SATA_PORTS:
        out.add(
            (*DEVICES, "disks"),
            f"{sata} disks use bus sata, but q35 has only {SATA_PORTS} "
            "SATA ports; put the others on virtio or scsi",
        )


def _disk_target(
    disk: t.Disk, path: FieldPath, volume: t.Volume | None, out: _Findings
) -> t.Bus | None:
    if disk.cdrom is not None:
        if disk.cdrom.bus is t.Bus.VIRTIO:
            out.add((*path, "cdrom", "bus"), "Bus type virtio is invalid for CD-ROM device")
        if disk.cdrom.tray is t.Tray.OPEN:
            out.unsupported((*path, "cdrom", "tray"), "QEMU starts with the tray closed")
        return disk.cdrom.bus
    if disk.lun is not None:
        if volume is not None and not (volume.persistentVolumeClaim or volume.dataVolume):
            out.add(
                (*path, "lun"),
                f"spec.domain.devices.disks[{path[-1]}].lun can only be "
                "mapped to a DataVolume or PersistentVolumeClaim volume.",
            )
        else:
            out.unsupported(
                (*path, "lun"), "vmid backs claims with files, and a lun needs a SCSI block device"
            )
        return disk.lun.bus
    if disk.disk is not None:
        if disk.disk.bus is t.Bus.SATA and disk.disk.readonly:
            out.add((*path, "disk", "readonly"), "sata hard-disks do not support read-only.")
        return disk.disk.bus
    return None


def _disk_options(disk: t.Disk, bus: t.Bus | None, path: FieldPath, out: _Findings) -> None:
    if disk.dedicatedIOThread and bus is not t.Bus.VIRTIO:
        out.add(
            (*path, "dedicatedIOThread"), f"IOThreads are not supported for disks on a {bus} bus"
        )
    if disk.serial is not None:
        if not SERIAL.fullmatch(disk.serial):
            out.add(
                (*path, "serial"),
                "must be made up of the following characters [A-Za-z0-9_.+-], if specified",
            )
        if len(disk.serial) > 256:
            out.add((*path, "serial"), "must be 256 characters or less")
    # Unset, the cache follows io: native (O_DIRECT), as KubeVirt's unset cache is "none".
    if disk.io is t.IOMode.NATIVE and disk.cache not in (None, t.Cache.NONE):
        out.add(
            (*path, "io"),
            'Disk IO mode native needs cache "none": Linux native AIO works only with O_DIRECT',
        )
    if disk.shareable and disk.cache not in (None, t.Cache.NONE):
        out.add((*path, "cache"), 'a shareable disk must use cache "none"')
    if disk.blockSize is not None:
        _block_size(disk.blockSize, bus, (*path, "blockSize"), out)


def _block_size(size: t.BlockSize, bus: t.Bus | None, path: FieldPath, out: _Findings) -> None:
    """KubeVirt's validateBlockSize; vmid reports every problem, where KubeVirt stops at one."""
    matching = size.matchVolume is not None and size.matchVolume.enabled is not False
    custom = size.custom
    if custom is None:
        if matching:
            out.unsupported(
                (*path, "matchVolume"),
                f"reading the block size of the volume is {t.NOT_YET}; give custom sizes",
            )
        return
    if matching:
        out.add(path, "Block size matching can't be enabled together with a custom value")
    for name in ("logical", "physical"):
        problem = _block_size_problem(getattr(custom, name))
        if problem:
            out.add((*path, "custom", name), problem)
    if custom.logical > custom.physical:
        out.add(
            (*path, "custom", "logical"),
            f"Logical size {custom.logical} must be the same or "
            f"less than the physical size of {custom.physical}",
        )
    if bus is t.Bus.SATA and custom.logical != BLOCK_MIN:
        out.add(
            (*path, "custom", "logical"),
            f"Logical size {custom.logical} must be {BLOCK_MIN} for SATA devices",
        )
    granularity = custom.discardGranularity
    if granularity is not None and custom.logical and granularity % custom.logical:
        out.add(
            (*path, "custom", "discardGranularity"),
            f"Discard granularity {granularity} must be multiples of logical size {custom.logical}",
        )


def _block_size_problem(size: int) -> str | None:
    if size < BLOCK_MIN:
        return f"Provided size of {size} is less than the supported minimum size of {BLOCK_MIN}"
    if size > BLOCK_MAX:
        return f"Provided size of {size} is greater than the supported maximum size of {BLOCK_MAX}"
    if size & (size - 1):
        return f"Provided size of {size} is not a power of 2"
    return None


def _volumes(volumes: tuple[t.Volume, ...], out: _Findings) -> None:
    if _too_many((*SPEC, "volumes"), volumes, out):
        return
    seen: dict[str, int] = {}
    cloud_init: list[int] = []
    for index, volume in enumerate(volumes):
        path: FieldPath = (*SPEC, "volumes", index)
        _dns_label((*path, "name"), volume.name, out)
        if volume.name in seen:
            out.add(
                (*path, "name"),
                f"spec.volumes[{index}] and spec.volumes[{seen[volume.name]}] "
                "must not have the same Name.",
            )
        seen.setdefault(volume.name, index)
        if len(volume.sources()) != 1:
            out.add(path, f"spec.volumes[{index}] must have exactly one source type set")
        if volume.cloudInitNoCloud or volume.cloudInitConfigDrive:
            cloud_init.append(index)
        _volume_source(volume, path, out)
    for index in cloud_init[1:]:
        out.add(
            (*SPEC, "volumes", index),
            f"only one cloud-init volume is used by KubeVirt, and "
            f"spec.volumes[{cloud_init[0]}] is one already",
        )


def _volume_source(volume: t.Volume, path: FieldPath, out: _Findings) -> None:
    if volume.containerDisk is not None:
        _container_disk(volume.containerDisk, (*path, "containerDisk"), out)
    if volume.emptyDisk is not None and volume.emptyDisk.capacity.exact < 2**20:
        out.add(
            (*path, "emptyDisk", "capacity"),
            f"the size for volume {volume.name} is too low: an empty disk needs at least 1Mi",
        )
    elif volume.emptyDisk is not None:
        _capacity((*path, "emptyDisk", "capacity"), volume.emptyDisk.capacity, out)
    if volume.hostDisk is not None:
        _host_disk(volume.hostDisk, (*path, "hostDisk"), out)
    for field in ("cloudInitNoCloud", "cloudInitConfigDrive"):
        source = getattr(volume, field)
        if source is not None:
            _cloud_init(source, (*path, field), out)
    claims: list[tuple[FieldPath, str, bool]] = []
    if volume.persistentVolumeClaim is not None:
        pvc = volume.persistentVolumeClaim
        claims.append(((*path, "persistentVolumeClaim"), pvc.claimName, pvc.hotpluggable))
    if volume.ephemeral is not None:
        claim = volume.ephemeral.persistentVolumeClaim.claimName
        claims.append(((*path, "ephemeral", "persistentVolumeClaim"), claim, False))
    if volume.dataVolume is not None:
        if not volume.dataVolume.name:
            out.add((*path, "dataVolume", "name"), "DataVolume 'name' must be set")
        else:
            claims.append(
                ((*path, "dataVolume"), volume.dataVolume.name, volume.dataVolume.hotpluggable)
            )
    for claim_path, claim, hotpluggable in claims:
        field = "name" if claim_path[-1] == "dataVolume" else "claimName"
        _dns_subdomain((*claim_path, field), claim, out)
        if hotpluggable:
            out.unsupported((*claim_path, "hotpluggable"), "volume hotplug is not implemented yet")


def _container_disk(disk: t.ContainerDiskSource, path: FieldPath, out: _Findings) -> None:
    try:
        imageref.normalize(disk.image)
    except imageref.ImageRefError as exc:
        out.add((*path, "image"), f"Invalid value: {quote(disk.image)}: {exc}")
    if disk.path is not None:
        parts = disk.path.split("/")
        if not disk.path.startswith("/") or ".." in parts or "." in parts:
            out.add(
                (*path, "path"),
                "spec.volumes.containerDisk must be an absolute path to a "
                "file without relative components",
            )
        elif disk.path.strip("/") == "":
            out.add((*path, "path"), "spec.volumes.containerDisk must not point to root")


def _host_disk(disk: t.HostDisk, path: FieldPath, out: _Findings) -> None:
    if not disk.path:
        out.add((*path, "path"), "Required value: a path is required for hostDisk volume")
    elif not disk.path.startswith("/") or ".." in disk.path.split("/"):
        out.add(
            (*path, "path"),
            f"Invalid value: {quote(disk.path)}: must be an absolute path without '..'",
        )
    if disk.type is None:
        out.add((*path, "type"), "Required value: allowed are 'Disk' or 'DiskOrCreate'")
    if disk.capacity is not None and disk.type is not t.HostDiskType.DISK_OR_CREATE:
        out.add(
            (*path, "capacity"),
            "capacity is allowed to pass only with type equal to 'DiskOrCreate'",
        )
    # DiskOrCreate without a capacity is admitted, as by KubeVirt, which then uses an existing
    # file as it is and fails to create a missing one (a sparse file of 0 bytes): vmid too.
    if disk.type is t.HostDiskType.DISK_OR_CREATE and disk.capacity is not None:
        if disk.capacity.exact < 1:
            out.add(
                (*path, "capacity"),
                f"Invalid value: {quote(str(disk.capacity))}: must be greater than 0",
            )
        else:
            _capacity((*path, "capacity"), disk.capacity, out)


def _capacity(path: FieldPath, capacity: Quantity, out: _Findings) -> None:
    if capacity.exact > MAX_DISK_BYTES:
        out.add(
            path,
            f"Invalid value: {quote(str(capacity))}: must be at most 2Pi, the largest qcow2 "
            "image QEMU makes",
        )


def _cloud_init(source: t.CloudInitSource, path: FieldPath, out: _Findings) -> None:
    kind = str(path[-1])
    user = [f for f in ("userData", "userDataBase64") if getattr(source, f) is not None]
    network = [f for f in ("networkData", "networkDataBase64") if getattr(source, f) is not None]
    if len(user) > 1:
        out.add(path, f"spec.volumes[{path[-2]}].{kind} must have only one userdatasource set.")
    if len(network) > 1:
        out.add(path, f"spec.volumes[{path[-2]}].{kind} must have only one networkdatasource set.")
    if not user and not network:
        out.add(
            path,
            f"spec.volumes[{path[-2]}].{kind} must have at least one userdatasource "
            "or one networkdatasource set.",
        )
    for field in (*user, *network):
        size = _cloud_init_size(getattr(source, field), field.endswith("Base64"))
        if size is None:
            out.add((*path, field), f"{render_path((*path, field))} is not a valid base64 value.")
        elif size > CLOUD_INIT_LIMIT:
            noun = "userdata" if field.startswith("user") else "networkdata"
            # KubeVirt's advice is a Secret; vmid has none, but cloud-init reads gzip data.
            out.add(
                (*path, field),
                f"{noun} exceeds {CLOUD_INIT_LIMIT} byte limit: compress it with gzip and "
                "give it as base64",
            )


def decode_base64(value: str) -> bytes:
    """Base64 as KubeVirt (Go) decodes it: line breaks ignored, anything else invalid."""
    return base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)


def _cloud_init_size(value: str, encoded: bool) -> int | None:
    """Bytes of data as KubeVirt counts them (decoded for base64); None if not valid base64."""
    if not encoded:
        return len(value.encode())
    try:
        return len(decode_base64(value))
    except (binascii.Error, ValueError):
        return None


def _networks(spec: t.VirtualMachineInstanceSpec, out: _Findings) -> None:
    too_many = _too_many((*SPEC, "networks"), spec.networks, out)
    if _too_many((*DEVICES, "interfaces"), spec.domain.devices.interfaces, out) or too_many:
        return
    networks: dict[str, t.Network] = {}
    pod_networks = 0
    for index, network in enumerate(spec.networks):
        path: FieldPath = (*SPEC, "networks", index)
        if network.name in networks:
            out.add(
                (*path, "name"),
                f"Network with name {quote(network.name)} already exists, "
                "every network must have a unique name",
            )
        networks.setdefault(network.name, network)
        kinds = [k for k in (network.pod, network.multus) if k is not None]
        if not kinds:
            out.add(path, "should have a network type")
        elif len(kinds) > 1:
            out.add(path, "should have only one network type")
        pod_networks += network.pod is not None
        if network.multus is not None and not network.multus.networkName:
            out.add(path, "CNI delegating plugin must have a networkName")
        if network.pod and network.pod.vmNetworkCIDR is not None:
            _cidr((*path, "pod", "vmNetworkCIDR"), network.pod.vmNetworkCIDR, out)
        if network.multus and network.multus.default:
            out.unsupported(
                (*path, "multus", "default"),
                "a default multus network replaces "
                "the pod network of a Kubernetes pod; use pod: {}",
            )
    if pod_networks > 1:
        out.add(
            (*SPEC, "networks"),
            "more than one interface is connected to a pod network in "
            "spec.domain.devices.interfaces",
        )
    used: dict[str, int] = {}
    for index, iface in enumerate(spec.domain.devices.interfaces):
        path = (*DEVICES, "interfaces", index)
        connected = networks.get(iface.name)
        if connected is None:
            out.add(
                (*path, "name"),
                f"spec.domain.devices.interfaces[{index}].name '{iface.name}' not found.",
            )
        if iface.name in used:
            out.add((*path, "name"), "Only one interface can be connected to one specific network")
        used.setdefault(iface.name, index)
        _interface(iface, path, connected, out)
    for index, network in enumerate(spec.networks):
        if network.name not in used:
            out.add(
                (*SPEC, "networks", index, "name"),
                f"spec.networks[{index}].name '{network.name}' not found.",
            )


def _cidr(path: FieldPath, value: str, out: _Findings) -> None:
    try:
        ipaddress.IPv4Network(value, strict=False)
    except ValueError as exc:
        out.add(path, f"Invalid value: {quote(value)}: {exc}")


def _interface(
    iface: t.Interface, path: FieldPath, network: t.Network | None, out: _Findings
) -> None:
    if not INTERFACE_NAME.fullmatch(iface.name):
        out.add(
            (*path, "name"),
            "Network interface name can only contain alphabetical "
            "characters, numbers, dashes (-) or underscores (_)",
        )
    for old in t.Interface.DISCONTINUED:
        if getattr(iface, old) is not None:
            out.add((*path, old), f"{old} interface binding has been discontinued since v1.3")
    bindings = [b for b in ("bridge", "masquerade") if getattr(iface, b) is not None]
    if len(bindings) != 1 and not any(getattr(iface, o) for o in t.Interface.DISCONTINUED):
        out.add(
            path,
            f"logical {iface.name} interface must have exactly one binding method or "
            "binding plugin",
        )
    if iface.masquerade is not None and network is not None and network.pod is None:
        out.add((*path, "masquerade"), "Masquerade interface only implemented with pod network")
    if iface.model is not None and iface.model not in NIC_MODELS:
        out.add(
            (*path, "model"),
            f"interface {iface.name} uses model {iface.model} that is not supported.",
        )
    if iface.macAddress is not None:
        _mac(iface, iface.macAddress, (*path, "macAddress"), out)
    _absent(iface, path, network, out)
    if iface.acpiIndex is not None and iface.acpiIndex < 1:
        out.add((*path, "acpiIndex"), f"Invalid value: {iface.acpiIndex}: must be greater than 0")
    if network is not None and network.pod is not None:
        _ports(
            iface, path, out
        )  # as KubeVirt: elsewhere ports mean nothing, and vmid forwards none


def _mac(iface: t.Interface, mac: str, path: FieldPath, out: _Findings) -> None:
    if not MAC.fullmatch(mac):
        out.add(path, f"interface {iface.name} has malformed MAC address ({mac}).")
    elif iface.masquerade is not None and mac.lower().replace("-", ":") == RESERVED_MAC:
        # KubeVirt refuses it for masquerade only, whose in-pod bridge has this MAC.
        out.add(
            path,
            "The requested MAC address is reserved for the in-pod bridge. "
            "Please choose another one.",
        )


def _absent(iface: t.Interface, path: FieldPath, network: t.Network | None, out: _Findings) -> None:
    if iface.state is not t.InterfaceState.ABSENT:
        return
    state = (*path, "state")
    if iface.bridge is None:
        out.add(
            state,
            f'"{iface.name}" interface\'s state "absent" is supported only for bridge binding',
        )
    # A multus network with `default: true` is refused on its own; the pod network is the default.
    if network is not None and network.pod is not None:
        out.add(
            state,
            f'"{iface.name}" interface\'s state "absent" is not supported on default networks',
        )


def _ports(iface: t.Interface, path: FieldPath, out: _Findings) -> None:
    if _too_many((*path, "ports"), iface.ports, out):
        return  # each is a forward and a listener check on the host
    names: set[str] = set()
    for index, port in enumerate(iface.ports):
        port_path = (*path, "ports", index)
        if port.port is None:
            out.add(port_path, "Port field is mandatory.")
        elif not 0 < port.port < 65536:
            out.add((*port_path, "port"), "Port field must be in range 0 < x < 65536.")
        if port.name:
            if port.name in names:
                out.add((*port_path, "name"), f"Duplicate name of the port: {port.name}")
            if podspec.port_name(port.name):
                out.add((*port_path, "name"), f"Invalid name of the port: {port.name}")
            names.add(port.name)


def _boot_order(devices: t.Devices, out: _Findings) -> None:
    owners: dict[int, str] = {}
    items: Iterable[tuple[str, int, int | None]] = [
        *(("disks", i, d.bootOrder) for i, d in enumerate(devices.disks)),
        *(("interfaces", i, n.bootOrder) for i, n in enumerate(devices.interfaces)),
    ]
    for kind, index, order in items:
        if order is None:
            continue
        path = (*DEVICES, kind, index, "bootOrder")
        if order < 1:
            out.add(
                path, f"spec.domain.devices.{kind}[{index}] must have a boot order > 0, if supplied"
            )
        elif order in owners:
            out.add(
                path,
                f"Boot order for {render_path(path)} already set for a different "
                f"device ({owners[order]}).",
            )
        else:
            owners[order] = render_path(path)


def _other_devices(devices: t.Devices, out: _Findings) -> None:
    if devices.watchdog is not None:
        path = (*DEVICES, "watchdog")
        _dns_label((*path, "name"), devices.watchdog.name, out)
        if devices.watchdog.diag288 is not None:
            out.add((*path, "diag288"), "amd64 only supports I6300ESB watchdog device")
    names: set[str] = set()
    for index, device in enumerate(devices.inputs):
        if device.name in names:
            out.add((*DEVICES, "inputs", index, "name"), f"Duplicate input name {device.name}")
        names.add(device.name)
    if devices.sound is not None and not devices.sound.name:
        out.add((*DEVICES, "sound", "name"), "Sound device must have a name")
    if devices.video is not None and devices.video.type is None:
        # KubeVirt defaults no video type: its amd64 check refuses the empty one.
        out.add(
            (*DEVICES, "video", "type"), "video model '' is not supported on amd64 architecture"
        )
    if devices.video is not None and devices.autoattachGraphicsDevice is False:
        out.add(
            (*DEVICES, "video"),
            "Video configuration is not allowed when autoattachGraphicsDevice is set to false",
        )
    if devices.autoattachVSOCK:
        out.unsupported((*DEVICES, "autoattachVSOCK"), "VSOCK is not implemented yet")
    if devices.networkInterfaceMultiqueue:
        out.unsupported(
            (*DEVICES, "networkInterfaceMultiqueue"),
            "multi-queue network interfaces are not implemented yet",
        )


def _io_threads(domain: t.DomainSpec, out: _Findings) -> None:
    if domain.ioThreadsPolicy is not t.IOThreadsPolicy.SUPPLEMENTAL_POOL:
        return
    count = domain.ioThreads.supplementalPoolThreadCount if domain.ioThreads else None
    if count is None or count < 1:
        # KubeVirt names spec.domain.ioThreads.count, a field its schema does not have.
        path = (
            (*DOMAIN, "ioThreadsPolicy")
            if count is None
            else (*DOMAIN, "ioThreads", "supplementalPoolThreadCount")
        )
        out.add(
            path, "the number of iothreads needs to be set and positive for the dedicated policy"
        )


def _hyperv(domain: t.DomainSpec, out: _Findings) -> None:
    """KubeVirt's Hyper-V checks, after defaults enabled every requirement the user left unset."""
    features = domain.features
    hyperv = features.hyperv if features else None
    if features is None or hyperv is None:
        return
    path = (*DOMAIN, "features", "hyperv")
    if features.hypervPassthrough is not None:
        out.add(
            path,
            "Cannot explicitly set hyperV features if HypervPassthrough is being used. "
            "Please use either HyperV or HypervPassthrough.",
        )
    for feature, required in defaults.HYPERV_REQUIRES:
        state, needed = getattr(hyperv, feature), getattr(hyperv, required)
        if state is not None and state.enabled and not (needed is not None and needed.enabled):
            out.add(
                (*path, feature),
                f"'{render_path((*path, feature))}' requires '{render_path((*path, required))}', "
                "which was disabled.",
            )
    if hyperv.evmcs is not None and hyperv.evmcs.enabled:
        _evmcs_vmx(domain.cpu or t.CPU(), out)


def _evmcs_vmx(cpu: t.CPU, out: _Findings) -> None:
    if not cpu.features:
        out.add((*DOMAIN, "cpu", "features"), "vmx cpu feature is required when evmcs is set")
    for index, feature in enumerate(cpu.features):
        if feature.name == "vmx" and feature.policy is not t.FeaturePolicy.REQUIRE:
            out.add(
                (*DOMAIN, "cpu", "features", index, "policy"),
                "vmx cpu feature has to be set to require policy",
            )


def _service_account(spec: t.VirtualMachineInstanceSpec, out: _Findings) -> None:
    name = spec.serviceAccountName
    errors = podspec.dns1123_subdomain(name) if name else []
    if errors:
        out.add(
            (*SPEC, "serviceAccountName"),
            f"spec.serviceAccountName is not a valid service account name: {'; '.join(errors)}",
        )
