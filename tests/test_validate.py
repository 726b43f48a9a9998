"""Tests for vmid.api.validate: every admission rule, as a user sees it (field path and message).

Each case edits the minimal valid manifest from conftest (`base`), loads it through the whole
pipeline (schema, defaults, validation) and compares the complete list of problems: the field
path of each, and its message (exact, or a distinctive part where the message repeats a long
Kubernetes regex text).
"""

from __future__ import annotations

import base64
import copy
import re
from typing import Any, Final

import pytest

from tests.conftest import dump, problems_of
from vmid.api.load import load_text
from vmid.errors import Problem

Patch = dict[str, Any]

DISKS: Final = "spec.domain.devices.disks"
IFACES: Final = "spec.domain.devices.interfaces"
DEVICES: Final = "spec.domain.devices"
DELETE: Final = object()  # a patch value that removes the key


class Sub(str):
    """An expected message that only has to occur in the actual one."""

    __slots__ = ()


LABEL_MSG: Final = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters"
SUBDOMAIN_MSG: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
)

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [int(index) if index else key for key, index in _STEP.findall(path)]


def apply_patch(data: dict[str, Any], patch: Patch) -> dict[str, Any]:
    """Set each dotted path (`a.b[1].c`) to its value; an index one past the end appends."""
    for path, value in patch.items():
        *parents, last = _steps(path)
        node: Any = data
        for step in parents:
            node = node[step] if isinstance(step, int) else node.setdefault(step, {})
        if value is DELETE:
            del node[last]
        elif isinstance(last, int) and last == len(node):
            node.append(copy.deepcopy(value))
        else:
            node[last] = copy.deepcopy(value)
    return data


def pairs(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in problems]


def assert_problems(problems: list[Problem], expected: list[tuple[str, str]]) -> None:
    """Exactly the expected problems (in any order): same field, and the same message."""
    got = pairs(problems)
    assert len(got) == len(expected), f"expected {expected}, got {got}"
    remaining = list(got)
    for field, message in expected:
        for item in remaining:
            found_field, found = item
            same = message in found if isinstance(message, Sub) else message == found
            if found_field == field and same:
                remaining.remove(item)
                break
        else:
            pytest.fail(f"no problem {field}: {message!r} among {got}")


def network(interfaces: list[dict[str, Any]], networks: list[dict[str, Any]]) -> Patch:
    return {IFACES: interfaces, "spec.networks": networks}


POD: Final = {"name": "default", "pod": {}}
MASQ: Final = {"name": "default", "masquerade": {}}
BRIDGE: Final = {"name": "default", "bridge": {}}


def with_volume(index: int, volume: dict[str, Any], disk: dict[str, Any] | None = None) -> Patch:
    """Add a volume (and optionally its disk) at `index` of spec.volumes and of the disks."""
    patch: Patch = {f"spec.volumes[{index}]": volume}
    if disk is not None:
        patch[f"{DISKS}[{index}]"] = disk
    return patch


def cloud_init(kind: str, source: dict[str, Any]) -> Patch:
    return with_volume(1, {"name": "ci", kind: source})


def host_disk(source: dict[str, Any]) -> Patch:
    return with_volume(1, {"name": "host", "hostDisk": source})


def root_volume(source: dict[str, Any]) -> Patch:
    return {"spec.volumes[0]": {"name": "root", **source}}


def root_disk(**fields: Any) -> Patch:
    return {f"{DISKS}[0]": {"name": "root", **fields}}


LONG_NAME: Final = "a" * 64
TOO_MANY_SATA: Patch = {
    f"spec.volumes[{i}]": {"name": f"d{i}", "emptyDisk": {"capacity": "1Gi"}} for i in range(1, 8)
}

# (id, patch, every expected (field, message))
CASES: list[tuple[str, Patch, list[tuple[str, str]]]] = [
    # --- metadata
    (
        "metadata-name-missing",
        {"metadata.name": DELETE},
        [("metadata.name", "Required value: name is required")],
    ),
    (
        "metadata-name-too-long",
        {"metadata.name": "a" * 254},
        [("metadata.name", f'Invalid value: "{"a" * 254}": must be no more than 253 characters')],
    ),
    (
        "metadata-name-not-subdomain",
        {"metadata.name": "Test_VM"},
        [("metadata.name", Sub(f'Invalid value: "Test_VM": {SUBDOMAIN_MSG}'))],
    ),
    (
        "metadata-namespace-too-long",
        {"metadata.namespace": "n" * 64},
        [
            (
                "metadata.namespace",
                f'Invalid value: "{"n" * 64}": must be no more than 63 characters',
            )
        ],
    ),
    (
        "metadata-namespace-not-label",
        {"metadata.namespace": "my.ns"},
        [("metadata.namespace", Sub(f'Invalid value: "my.ns": {LABEL_MSG}'))],
    ),
    (
        "metadata-reserved-label",
        {"metadata.labels": {"app": "web", "kubevirt.io/nodeName": "n1"}},
        [
            (
                "metadata.labels[kubevirt.io/nodeName]",
                "creation of the following reserved kubevirt.io/ labels on a VMI object is "
                "prohibited",
            )
        ],
    ),
    (
        "metadata-annotation-hook-sidecars",
        {"metadata.annotations": {"hooks.kubevirt.io/hookSidecars": "[]"}},
        [
            (
                "metadata.annotations[hooks.kubevirt.io/hookSidecars]",
                "hooks.kubevirt.io/hookSidecars is not supported by vmid: hook sidecars are "
                "containers in KubeVirt's launcher pod",
            )
        ],
    ),
    (
        "metadata-annotation-ignition",
        {"metadata.annotations": {"kubevirt.io/ignitiondata": "{}"}},
        [
            (
                "metadata.annotations[kubevirt.io/ignitiondata]",
                "kubevirt.io/ignitiondata is not supported by vmid: Ignition data is an "
                "experimental KubeVirt feature",
            )
        ],
    ),
    # --- spec
    (
        "spec-architecture",
        {"spec.architecture": "arm64"},
        [
            (
                "spec.architecture",
                "architecture is not supported by vmid: unsupported architecture: arm64; "
                "vmid runs amd64 guests",
            )
        ],
    ),
    (
        "spec-grace-period-negative",
        {"spec.terminationGracePeriodSeconds": -1},
        [
            (
                "spec.terminationGracePeriodSeconds",
                "Invalid value: -1: must be greater than or equal to 0",
            )
        ],
    ),
    (
        "spec-hostname-not-label",
        {"spec.hostname": "my_host"},
        [
            (
                "spec.hostname",
                Sub(f"does not conform to the kubernetes DNS_LABEL rules : {LABEL_MSG}"),
            )
        ],
    ),
    (
        "spec-hostname-too-long",
        {"spec.hostname": LONG_NAME},
        [("spec.hostname", Sub("does not conform to the kubernetes DNS_LABEL rules : "))],
    ),
    (
        "spec-subdomain",
        {"spec.subdomain": "Sub_Domain"},
        [
            (
                "spec.subdomain",
                Sub(f"does not conform to the kubernetes DNS_SUBDOMAIN rules : {SUBDOMAIN_MSG}"),
            )
        ],
    ),
    (
        "spec-machine-type",
        {"spec.domain.machine": {"type": "pc"}},
        [
            (
                "spec.domain.machine.type",
                "spec.domain.machine.type is not supported: pc (allowed values: [q35* pc-q35*])",
            )
        ],
    ),
    # --- memory and resources
    (
        "memory-none-requested",
        {"spec.domain.resources": DELETE},
        [
            (
                "spec.domain.resources.requests.memory",
                "no memory requested, at least one of 'spec.domain.memory.guest', "
                "'spec.domain.memory.hugepages.pageSize' or "
                "'spec.domain.resources.requests.memory' must be set",
            )
        ],
    ),
    (
        "memory-request-negative",
        {"spec.domain.resources.requests.memory": "-1"},
        [
            ("spec.domain.resources.requests.memory", "'-1': must be greater than or equal to 0."),
        ],
    ),
    (
        "memory-limit-negative",
        {"spec.domain.resources.limits": {"memory": "-1"}},
        [
            ("spec.domain.resources.limits.memory", "'-1': must be greater than or equal to 0."),
        ],
    ),
    (
        "cpu-request-negative",
        {"spec.domain.resources.requests.cpu": "-1"},
        [("spec.domain.resources.requests.cpu", "'-1': must be greater than or equal to 0.")],
    ),
    (
        "cpu-limit-negative",
        {"spec.domain.resources.limits": {"cpu": "-2"}},
        [
            ("spec.domain.resources.limits.cpu", "'-2': must be greater than or equal to 0."),
            # requests.cpu is defaulted from limits.cpu.
            ("spec.domain.resources.requests.cpu", "'-2': must be greater than or equal to 0."),
        ],
    ),
    (
        "memory-request-below-1M",
        {"spec.domain.resources.requests.memory": "500k"},
        [
            (
                "spec.domain.resources.requests.memory",
                "'500k': must be greater than or equal to 1M.",
            ),
        ],
    ),
    (
        "memory-guest-below-1M",
        {"spec.domain.memory": {"guest": "999999"}},
        [("spec.domain.memory.guest", "'999999': must be greater than or equal to 1M.")],
    ),
    (
        "memory-request-above-limit",
        {"spec.domain.resources.limits": {"memory": "64Mi"}},
        [
            (
                "spec.domain.resources.requests.memory",
                "spec.domain.resources.requests.memory '128Mi' is greater than "
                "spec.domain.resources.limits.memory '64Mi'",
            ),
        ],
    ),
    (
        "cpu-request-above-limit",
        {"spec.domain.resources.requests.cpu": "2", "spec.domain.resources.limits": {"cpu": "1"}},
        [
            (
                "spec.domain.resources.requests.cpu",
                "spec.domain.resources.requests.cpu '2' is greater than "
                "spec.domain.resources.limits.cpu '1'",
            )
        ],
    ),
    # --- CPU
    (
        "cpu-cores-negative",
        {"spec.domain.cpu": {"cores": -1}},
        [("spec.domain.cpu.cores", "Invalid value: -1: must not be negative (0 means unset)")],
    ),
    (
        "cpu-sockets-negative",
        {"spec.domain.cpu": {"sockets": -2}},
        [("spec.domain.cpu.sockets", "Invalid value: -2: must not be negative (0 means unset)")],
    ),
    (
        "cpu-threads-negative",
        {"spec.domain.cpu": {"threads": -1}},
        [("spec.domain.cpu.threads", "Invalid value: -1: must not be negative (0 means unset)")],
    ),
    (
        "cpu-too-many-vcpus",
        {"spec.domain.cpu": {"sockets": 17, "cores": 17}},
        [("spec.domain.cpu", "289 vCPUs requested; QEMU's q35 machine supports at most 288")],
    ),
    (
        "cpu-too-many-vcpus-from-request",
        {"spec.domain.resources.requests.cpu": "289"},
        [("spec.domain.cpu", "289 vCPUs requested; QEMU's q35 machine supports at most 288")],
    ),
    (
        "cpu-dedicated-placement",
        {"spec.domain.cpu": {"dedicatedCpuPlacement": True}},
        [
            (
                "spec.domain.cpu.dedicatedCpuPlacement",
                "dedicatedCpuPlacement is not supported by vmid: pinning vCPUs to dedicated host "
                "CPUs is not implemented yet",
            )
        ],
    ),
    (
        "cpu-isolate-emulator-thread",
        {"spec.domain.cpu": {"isolateEmulatorThread": True}},
        [
            (
                "spec.domain.cpu.isolateEmulatorThread",
                "isolateEmulatorThread should be only set in combination with "
                "DedicatedCPUPlacement",
            )
        ],
    ),
    (
        "cpu-feature-without-name",
        {"spec.domain.cpu": {"features": [{"name": "pcid"}, {"name": ""}]}},
        [("spec.domain.cpu.features[1].name", "Required value: a CPU feature needs a name")],
    ),
    # QEMU splits -cpu on every comma, ",," included: a comma would set another CPU property.
    (
        "cpu-model-sets-a-property",
        {"spec.domain.cpu": {"model": "qemu64,model-id=X"}},
        [
            (
                "spec.domain.cpu.model",
                Sub('Invalid value: "qemu64,model-id=X": a CPU model name consists of letters'),
            )
        ],
    ),
    (
        "cpu-feature-sets-the-vendor",
        {"spec.domain.cpu": {"features": [{"name": "vendor=AuthenticAMD,family"}]}},
        [
            (
                "spec.domain.cpu.features[0].name",
                Sub('Invalid value: "vendor=AuthenticAMD,family": a CPU feature name consists'),
            )
        ],
    ),
    (
        "hyperv-vendorid-sets-a-property",
        {"spec.domain.features": {"hyperv": {"vendorid": {"vendorid": "x,pmu=on"}}}},
        [
            (
                "spec.domain.features.hyperv.vendorid.vendorid",
                "Invalid value: \"x,pmu=on\": vendorid must be printable ASCII without ','",
            )
        ],
    ),
    # --- firmware, features, clock
    (
        "firmware-uuid",
        {"spec.domain.firmware": {"uuid": "not-a-uuid"}},
        [("spec.domain.firmware.uuid", 'Invalid value: "not-a-uuid": not a valid UUID')],
    ),
    (
        "firmware-bios-and-efi",
        {"spec.domain.firmware": {"bootloader": {"bios": {}, "efi": {"secureBoot": False}}}},
        [
            (
                "spec.domain.firmware.bootloader",
                "spec.domain.firmware.bootloader has both EFI and BIOS configured, but they are "
                "mutually exclusive.",
            )
        ],
    ),
    (
        "firmware-secure-boot-default-without-smm",
        {"spec.domain.firmware": {"bootloader": {"efi": {}}}},
        [
            (
                "spec.domain.firmware.bootloader.efi.secureBoot",
                "spec.domain has EFI SecureBoot enabled. SecureBoot requires SMM, which is "
                "currently disabled.",
            )
        ],
    ),
    (
        "firmware-secure-boot-smm-disabled",
        {
            "spec.domain.firmware": {"bootloader": {"efi": {"secureBoot": True}}},
            "spec.domain.features": {"smm": {"enabled": False}},
        },
        [
            (
                "spec.domain.firmware.bootloader.efi.secureBoot",
                "spec.domain has EFI SecureBoot enabled. SecureBoot requires SMM, which is "
                "currently disabled.",
            )
        ],
    ),
    (
        "features-apic-disabled",
        {"spec.domain.features": {"apic": {"enabled": False}}},
        [
            (
                "spec.domain.features.apic",
                "apic is not supported by vmid: q35 guests always have an APIC",
            )
        ],
    ),
    (
        "features-hyperv-spinlocks",
        {"spec.domain.features": {"hyperv": {"spinlocks": {"spinlocks": 4095}}}},
        [
            (
                "spec.domain.features.hyperv.spinlocks.spinlocks",
                "spinlocks retries must be at least 4096",
            )
        ],
    ),
    (
        "features-hyperv-vendorid-too-long",
        {"spec.domain.features": {"hyperv": {"vendorid": {"vendorid": "0123456789abc"}}}},
        [
            (
                "spec.domain.features.hyperv.vendorid.vendorid",
                "vendorid must be 1 to 12 characters long",
            )
        ],
    ),
    (
        "features-hyperv-vendorid-missing",
        {"spec.domain.features": {"hyperv": {"vendorid": {"enabled": True}}}},
        [
            (
                "spec.domain.features.hyperv.vendorid.vendorid",
                "vendorid must be 1 to 12 characters long",
            )
        ],
    ),
    (
        "clock-utc-and-timezone",
        {"spec.domain.clock": {"utc": {}, "timezone": "Europe/Berlin"}},
        [("spec.domain.clock", "clock must have only one of utc or timezone set")],
    ),
    (
        "clock-utc-offset",
        {"spec.domain.clock": {"utc": {"offsetSeconds": 3600}}},
        [
            (
                "spec.domain.clock.utc.offsetSeconds",
                "offsetSeconds is not supported by vmid: a UTC offset is not implemented yet",
            )
        ],
    ),
    (
        "clock-timezone",
        {"spec.domain.clock": {"timezone": "../etc/passwd"}},
        [
            (
                "spec.domain.clock.timezone",
                'Invalid value: "../etc/passwd": not a time zone name like "Europe/Berlin"',
            )
        ],
    ),
    # --- disks
    (
        "disk-and-volume-name-not-label",
        {f"{DISKS}[0].name": "Root", "spec.volumes[0].name": "Root"},
        [
            (f"{DISKS}[0].name", Sub(f'Invalid value: "Root": {LABEL_MSG}')),
            ("spec.volumes[0].name", Sub(f'Invalid value: "Root": {LABEL_MSG}')),
        ],
    ),
    (
        "disk-and-volume-name-too-long",
        {f"{DISKS}[0].name": LONG_NAME, "spec.volumes[0].name": LONG_NAME},
        [
            (
                f"{DISKS}[0].name",
                f'Invalid value: "{LONG_NAME}": must be no more than 63 characters',
            ),
            (
                "spec.volumes[0].name",
                f'Invalid value: "{LONG_NAME}": must be no more than 63 characters',
            ),
        ],
    ),
    (
        "disk-duplicate-name",
        {f"{DISKS}[1]": {"name": "root", "disk": {"bus": "scsi"}}},
        [
            (
                f"{DISKS}[1].name",
                "spec.domain.devices.disks[1] and spec.domain.devices.disks[0] must not have "
                "the same Name.",
            )
        ],
    ),
    (
        "disk-without-volume",
        {f"{DISKS}[1]": {"name": "data", "disk": {"bus": "virtio"}}},
        [(f"{DISKS}[1].name", 'Name "data" not found: no volume in spec.volumes has this name')],
    ),
    (
        "disk-two-targets",
        root_disk(disk={"bus": "virtio"}, cdrom={"bus": "sata"}),
        [
            (
                f"{DISKS}[0]",
                "spec.domain.devices.disks[0] can only have a single target type defined",
            )
        ],
    ),
    (
        "disk-too-many-sata",
        TOO_MANY_SATA,  # volumes without a disk get a disk on the default bus, sata
        [
            (
                DISKS,
                "7 disks use bus sata, but q35 has only 6 SATA ports; put the others on virtio "
                "or scsi",
            )
        ],
    ),
    (
        "cdrom-virtio",
        root_disk(cdrom={"bus": "virtio"}),
        [(f"{DISKS}[0].cdrom.bus", "Bus type virtio is invalid for CD-ROM device")],
    ),
    (
        "cdrom-tray-open",
        root_disk(cdrom={"tray": "open"}),
        [
            (
                f"{DISKS}[0].cdrom.tray",
                "tray is not supported by vmid: QEMU starts with the tray closed",
            )
        ],
    ),
    (
        "lun-on-container-disk",
        root_disk(lun={}),
        [
            (
                f"{DISKS}[0].lun",
                "spec.domain.devices.disks[0].lun can only be mapped to a DataVolume or "
                "PersistentVolumeClaim volume.",
            )
        ],
    ),
    (
        "lun-on-claim",
        {
            **root_disk(lun={"bus": "scsi"}),
            **root_volume({"persistentVolumeClaim": {"claimName": "data"}}),
        },
        [
            (
                f"{DISKS}[0].lun",
                "lun is not supported by vmid: vmid backs claims with files, and a lun needs a "
                "SCSI block device",
            )
        ],
    ),
    (
        "disk-sata-readonly",
        root_disk(disk={"bus": "sata", "readonly": True}),
        [(f"{DISKS}[0].disk.readonly", "sata hard-disks do not support read-only.")],
    ),
    (
        "disk-iothread-on-sata",
        root_disk(disk={"bus": "sata"}, dedicatedIOThread=True),
        [(f"{DISKS}[0].dedicatedIOThread", "IOThreads are not supported for disks on a sata bus")],
    ),
    (
        "disk-serial-characters",
        {f"{DISKS}[0].serial": "abc def"},
        [
            (
                f"{DISKS}[0].serial",
                "must be made up of the following characters [A-Za-z0-9_.+-], if specified",
            )
        ],
    ),
    (
        "disk-serial-too-long",
        {f"{DISKS}[0].serial": "s" * 257},
        [(f"{DISKS}[0].serial", "must be 256 characters or less")],
    ),
    (
        "disk-io-native-without-cache-none",
        {f"{DISKS}[0].io": "native", f"{DISKS}[0].cache": "writeback"},
        [
            (
                f"{DISKS}[0].io",
                'Disk IO mode native needs cache "none": Linux native AIO works only with O_DIRECT',
            )
        ],
    ),
    (
        "disk-shareable-cached",
        {f"{DISKS}[0].shareable": True, f"{DISKS}[0].cache": "writethrough"},
        [(f"{DISKS}[0].cache", 'a shareable disk must use cache "none"')],
    ),
    (
        "disk-block-size-not-power-of-two",
        {f"{DISKS}[0].blockSize": {"custom": {"logical": 1000, "physical": 4096}}},
        [
            (
                f"{DISKS}[0].blockSize.custom.logical",
                "Provided size of 1000 is not a power of 2",
            )
        ],
    ),
    (
        "disk-block-size-too-large",
        {f"{DISKS}[0].blockSize": {"custom": {"logical": 512, "physical": 4194304}}},
        [
            (
                f"{DISKS}[0].blockSize.custom.physical",
                "Provided size of 4194304 is greater than the supported maximum size of 2097152",
            )
        ],
    ),
    (
        "disk-block-size-logical-above-physical",
        {f"{DISKS}[0].blockSize": {"custom": {"logical": 4096, "physical": 512}}},
        [
            (
                f"{DISKS}[0].blockSize.custom.logical",
                "Logical size 4096 must be the same or less than the physical size of 512",
            )
        ],
    ),
    (
        "disk-block-size-sata-logical",
        root_disk(disk={"bus": "sata"}, blockSize={"custom": {"logical": 4096, "physical": 4096}}),
        [
            (
                f"{DISKS}[0].blockSize.custom.logical",
                "Logical size 4096 must be 512 for SATA devices",
            )
        ],
    ),
    # --- volumes
    (
        "volume-duplicate-name",
        with_volume(1, {"name": "root", "emptyDisk": {"capacity": "1Gi"}}),
        [
            (
                "spec.volumes[1].name",
                "spec.volumes[1] and spec.volumes[0] must not have the same Name.",
            )
        ],
    ),
    (
        "volume-two-sources",
        {"spec.volumes[0].emptyDisk": {"capacity": "1Gi"}},
        [("spec.volumes[0]", "spec.volumes[0] must have exactly one source type set")],
    ),
    (
        "volume-no-source",
        root_volume({}),
        [("spec.volumes[0]", "spec.volumes[0] must have exactly one source type set")],
    ),
    (
        "volume-second-cloud-init",
        {
            "spec.volumes[1]": {"name": "ci1", "cloudInitNoCloud": {"userData": "#cloud-config"}},
            "spec.volumes[2]": {
                "name": "ci2",
                "cloudInitConfigDrive": {"userData": "#cloud-config"},
            },
        },
        [
            (
                "spec.volumes[2]",
                "only one cloud-init volume is used by KubeVirt, and spec.volumes[1] is one "
                "already",
            )
        ],
    ),
    (
        "volume-empty-disk-too-small",
        with_volume(1, {"name": "scratch", "emptyDisk": {"capacity": "512Ki"}}),
        [
            (
                "spec.volumes[1].emptyDisk.capacity",
                "the size for volume scratch is too low: an empty disk needs at least 1Mi",
            )
        ],
    ),
    (
        "volume-data-volume-without-name",
        root_volume({"dataVolume": {}}),
        [("spec.volumes[0].dataVolume.name", "DataVolume 'name' must be set")],
    ),
    (
        "volume-data-volume-name",
        root_volume({"dataVolume": {"name": "Data_Volume"}}),
        [
            (
                "spec.volumes[0].dataVolume.name",
                Sub(f'Invalid value: "Data_Volume": {SUBDOMAIN_MSG}'),
            )
        ],
    ),
    (
        "volume-claim-name",
        root_volume({"persistentVolumeClaim": {"claimName": "My_Claim"}}),
        [
            (
                "spec.volumes[0].persistentVolumeClaim.claimName",
                Sub(f'Invalid value: "My_Claim": {SUBDOMAIN_MSG}'),
            )
        ],
    ),
    (
        "volume-ephemeral-claim-name",
        root_volume({"ephemeral": {"persistentVolumeClaim": {"claimName": "-claim"}}}),
        [
            (
                "spec.volumes[0].ephemeral.persistentVolumeClaim.claimName",
                Sub(f'Invalid value: "-claim": {SUBDOMAIN_MSG}'),
            )
        ],
    ),
    (
        "volume-claim-hotpluggable",
        root_volume({"persistentVolumeClaim": {"claimName": "data", "hotpluggable": True}}),
        [
            (
                "spec.volumes[0].persistentVolumeClaim.hotpluggable",
                "hotpluggable is not supported by vmid: volume hotplug is not implemented yet",
            )
        ],
    ),
    (
        "volume-data-volume-hotpluggable",
        root_volume({"dataVolume": {"name": "data", "hotpluggable": True}}),
        [
            (
                "spec.volumes[0].dataVolume.hotpluggable",
                "hotpluggable is not supported by vmid: volume hotplug is not implemented yet",
            )
        ],
    ),
    (
        "container-disk-image",
        {"spec.volumes[0].containerDisk.image": "Kubevirt/Cirros"},
        [
            (
                "spec.volumes[0].containerDisk.image",
                "Invalid value: \"Kubevirt/Cirros\": 'Kubevirt/Cirros' is not an image "
                "reference: repository names are lowercase letters, digits and separators",
            )
        ],
    ),
    (
        "container-disk-path-relative",
        {"spec.volumes[0].containerDisk.path": "disk/disk.img"},
        [
            (
                "spec.volumes[0].containerDisk.path",
                "spec.volumes.containerDisk must be an absolute path to a file without relative "
                "components",
            )
        ],
    ),
    (
        "container-disk-path-dotdot",
        {"spec.volumes[0].containerDisk.path": "/disk/../etc/shadow"},
        [
            (
                "spec.volumes[0].containerDisk.path",
                "spec.volumes.containerDisk must be an absolute path to a file without relative "
                "components",
            )
        ],
    ),
    (
        "container-disk-path-root",
        {"spec.volumes[0].containerDisk.path": "/"},
        [
            (
                "spec.volumes[0].containerDisk.path",
                "spec.volumes.containerDisk must not point to root",
            )
        ],
    ),
    (
        "host-disk-without-path",
        host_disk({"type": "Disk"}),
        [
            (
                "spec.volumes[1].hostDisk.path",
                "Required value: a path is required for hostDisk volume",
            )
        ],
    ),
    (
        "host-disk-path-relative",
        host_disk({"path": "images/disk.img", "type": "Disk"}),
        [
            (
                "spec.volumes[1].hostDisk.path",
                "Invalid value: \"images/disk.img\": must be an absolute path without '..'",
            )
        ],
    ),
    (
        "host-disk-path-dotdot",
        host_disk({"path": "/var/../etc/disk.img", "type": "Disk"}),
        [
            (
                "spec.volumes[1].hostDisk.path",
                "Invalid value: \"/var/../etc/disk.img\": must be an absolute path without '..'",
            )
        ],
    ),
    (
        "host-disk-without-type",
        host_disk({"path": "/var/lib/disk.img"}),
        [("spec.volumes[1].hostDisk.type", "Required value: allowed are 'Disk' or 'DiskOrCreate'")],
    ),
    (
        "host-disk-capacity-with-type-disk",
        host_disk({"path": "/var/lib/disk.img", "type": "Disk", "capacity": "1Gi"}),
        [
            (
                "spec.volumes[1].hostDisk.capacity",
                "capacity is allowed to pass only with type equal to 'DiskOrCreate'",
            )
        ],
    ),
    (
        "host-disk-create-zero-capacity",
        host_disk({"path": "/var/lib/disk.img", "type": "DiskOrCreate", "capacity": "0"}),
        [("spec.volumes[1].hostDisk.capacity", 'Invalid value: "0": must be greater than 0')],
    ),
    (
        "host-disk-create-capacity-beyond-any-disk",
        host_disk({"path": "/var/lib/disk.img", "type": "DiskOrCreate", "capacity": "1e90"}),
        [
            (
                "spec.volumes[1].hostDisk.capacity",
                'Invalid value: "1e90": must be at most 2Pi, the largest qcow2 image QEMU makes',
            )
        ],
    ),
    (
        "empty-disk-capacity-beyond-qcow2",
        with_volume(1, {"name": "scratch", "emptyDisk": {"capacity": "3Pi"}}),
        [
            (
                "spec.volumes[1].emptyDisk.capacity",
                'Invalid value: "3Pi": must be at most 2Pi, the largest qcow2 image QEMU makes',
            )
        ],
    ),
    (
        "cloud-init-two-user-data",
        cloud_init(
            "cloudInitNoCloud",
            {"userData": "#cloud-config\n", "userDataBase64": "I2Nsb3VkLWNvbmZpZwo="},
        ),
        [
            (
                "spec.volumes[1].cloudInitNoCloud",
                "spec.volumes[1].cloudInitNoCloud must have only one userdatasource set.",
            )
        ],
    ),
    (
        "cloud-init-two-network-data",
        cloud_init(
            "cloudInitConfigDrive",
            {"networkData": "version: 2\n", "networkDataBase64": "dmVyc2lvbjogMgo="},
        ),
        [
            (
                "spec.volumes[1].cloudInitConfigDrive",
                "spec.volumes[1].cloudInitConfigDrive must have only one networkdatasource set.",
            )
        ],
    ),
    (
        "cloud-init-no-data",
        cloud_init("cloudInitNoCloud", {}),
        [
            (
                "spec.volumes[1].cloudInitNoCloud",
                "spec.volumes[1].cloudInitNoCloud must have at least one userdatasource or one "
                "networkdatasource set.",
            )
        ],
    ),
    (
        "cloud-init-user-data-too-long",
        cloud_init("cloudInitNoCloud", {"userData": "x" * 2049}),
        [
            (
                "spec.volumes[1].cloudInitNoCloud.userData",
                "userdata exceeds 2048 byte limit: compress it with gzip and give it as base64",
            )
        ],
    ),
    (
        "cloud-init-network-data-too-long",
        cloud_init("cloudInitConfigDrive", {"networkData": "x" * 2049}),
        [
            (
                "spec.volumes[1].cloudInitConfigDrive.networkData",
                "networkdata exceeds 2048 byte limit: compress it with gzip and give it as base64",
            )
        ],
    ),
    (
        "cloud-init-user-data-bad-base64",
        cloud_init("cloudInitNoCloud", {"userDataBase64": "not base64!"}),
        [
            (
                "spec.volumes[1].cloudInitNoCloud.userDataBase64",
                "spec.volumes[1].cloudInitNoCloud.userDataBase64 is not a valid base64 value.",
            )
        ],
    ),
    (
        "cloud-init-network-data-bad-base64",
        cloud_init("cloudInitConfigDrive", {"networkDataBase64": "abc"}),
        [
            (
                "spec.volumes[1].cloudInitConfigDrive.networkDataBase64",
                "spec.volumes[1].cloudInitConfigDrive.networkDataBase64 is not a valid base64 "
                "value.",
            )
        ],
    ),
    # --- networks and interfaces
    (
        "network-duplicate-name",
        network([MASQ], [POD, {"name": "default", "multus": {"networkName": "ns/net"}}]),
        [
            (
                "spec.networks[1].name",
                'Network with name "default" already exists, every network must have a unique name',
            )
        ],
    ),
    (
        "network-without-type",
        network([BRIDGE], [{"name": "default"}]),
        [("spec.networks[0]", "should have a network type")],
    ),
    (
        "network-two-types",
        network([BRIDGE], [{"name": "default", "pod": {}, "multus": {"networkName": "net"}}]),
        [("spec.networks[0]", "should have only one network type")],
    ),
    (
        "network-pod-cidr",
        network([MASQ], [{"name": "default", "pod": {"vmNetworkCIDR": "10.0.2.0/33"}}]),
        [
            (
                "spec.networks[0].pod.vmNetworkCIDR",
                "Invalid value: \"10.0.2.0/33\": '33' is not a valid netmask",
            )
        ],
    ),
    (
        "network-multus-default",
        network([BRIDGE], [{"name": "default", "multus": {"networkName": "net", "default": True}}]),
        [
            (
                "spec.networks[0].multus.default",
                "default is not supported by vmid: a default multus network replaces the pod "
                "network of a Kubernetes pod; use pod: {}",
            )
        ],
    ),
    (
        "network-two-pod-networks",
        network(
            [{"name": "a", "masquerade": {}}, {"name": "b", "bridge": {}}],
            [{"name": "a", "pod": {}}, {"name": "b", "pod": {}}],
        ),
        [
            (
                "spec.networks",
                "more than one interface is connected to a pod network in "
                "spec.domain.devices.interfaces",
            )
        ],
    ),
    (
        "interface-without-network",
        network([MASQ, {"name": "other", "bridge": {}}], [POD]),
        [(f"{IFACES}[1].name", "spec.domain.devices.interfaces[1].name 'other' not found.")],
    ),
    (
        "interface-same-network-twice",
        network([MASQ, BRIDGE], [POD]),
        [(f"{IFACES}[1].name", "Only one interface can be connected to one specific network")],
    ),
    (
        "network-without-interface",
        network([MASQ], [POD, {"name": "extra", "multus": {"networkName": "net"}}]),
        [("spec.networks[1].name", "spec.networks[1].name 'extra' not found.")],
    ),
    (
        "interface-name-characters",
        network([{"name": "eth.0", "bridge": {}}], [{"name": "eth.0", "pod": {}}]),
        [
            (
                f"{IFACES}[0].name",
                "Network interface name can only contain alphabetical characters, numbers, "
                "dashes (-) or underscores (_)",
            )
        ],
    ),
    (
        "interface-slirp",
        network([{"name": "default", "slirp": {}}], [POD]),
        [(f"{IFACES}[0].slirp", "slirp interface binding has been discontinued since v1.3")],
    ),
    (
        "interface-passt",
        network([{"name": "default", "passt": {}}], [POD]),
        [(f"{IFACES}[0].passt", "passt interface binding has been discontinued since v1.3")],
    ),
    (
        "interface-macvtap",
        network([{"name": "default", "macvtap": {}}], [POD]),
        [(f"{IFACES}[0].macvtap", "macvtap interface binding has been discontinued since v1.3")],
    ),
    (
        "interface-no-binding",
        network([{"name": "default"}], [POD]),
        [
            (
                f"{IFACES}[0]",
                "logical default interface must have exactly one binding method or binding plugin",
            )
        ],
    ),
    (
        "interface-two-bindings",
        network([{"name": "default", "bridge": {}, "masquerade": {}}], [POD]),
        [
            (
                f"{IFACES}[0]",
                "logical default interface must have exactly one binding method or binding plugin",
            )
        ],
    ),
    (
        "interface-masquerade-on-multus",
        network([MASQ], [{"name": "default", "multus": {"networkName": "net"}}]),
        [(f"{IFACES}[0].masquerade", "Masquerade interface only implemented with pod network")],
    ),
    (
        "interface-model",
        network([{**MASQ, "model": "virtio-net"}], [POD]),
        [(f"{IFACES}[0].model", "interface default uses model virtio-net that is not supported.")],
    ),
    (
        "interface-mac-malformed",
        network([{**MASQ, "macAddress": "02:00:00:00:00"}], [POD]),
        [
            (
                f"{IFACES}[0].macAddress",
                "interface default has malformed MAC address (02:00:00:00:00).",
            )
        ],
    ),
    (
        "interface-mac-reserved",
        network([{**MASQ, "macAddress": "02-00-00-00-00-00"}], [POD]),
        [
            (
                f"{IFACES}[0].macAddress",
                "The requested MAC address is reserved for the in-pod bridge. "
                "Please choose another one.",
            )
        ],
    ),
    (
        "interface-acpi-index",
        network([{**MASQ, "acpiIndex": 0}], [POD]),
        [(f"{IFACES}[0].acpiIndex", "Invalid value: 0: must be greater than 0")],
    ),
    (
        "interface-port-missing",
        network([{**MASQ, "ports": [{"name": "http", "protocol": "TCP"}]}], [POD]),
        [(f"{IFACES}[0].ports[0]", "Port field is mandatory.")],
    ),
    (
        "interface-port-out-of-range",
        network([{**MASQ, "ports": [{"port": 65535}, {"port": 65536}]}], [POD]),
        [(f"{IFACES}[0].ports[1].port", "Port field must be in range 0 < x < 65536.")],
    ),
    (
        "interface-port-zero",
        network([{**MASQ, "ports": [{"port": 0}]}], [POD]),
        [(f"{IFACES}[0].ports[0].port", "Port field must be in range 0 < x < 65536.")],
    ),
    (
        "interface-port-duplicate-name",
        network(
            [{**MASQ, "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 8080}]}],
            [POD],
        ),
        [(f"{IFACES}[0].ports[1].name", "Duplicate name of the port: http")],
    ),
    (
        "interface-too-many-ports",
        network([{**MASQ, "ports": [{"port": 1024 + n} for n in range(257)]}], [POD]),
        [
            (
                f"{IFACES}[0].ports",
                f"{IFACES}[0].ports list exceeds the 256 element limit in length",
            )
        ],
    ),
    # --- boot order
    (
        "boot-order-disk-zero",
        {f"{DISKS}[0].bootOrder": 0},
        [
            (
                f"{DISKS}[0].bootOrder",
                "spec.domain.devices.disks[0] must have a boot order > 0, if supplied",
            )
        ],
    ),
    (
        "boot-order-interface-negative",
        network([{**MASQ, "bootOrder": -1}], [POD]),
        [
            (
                f"{IFACES}[0].bootOrder",
                "spec.domain.devices.interfaces[0] must have a boot order > 0, if supplied",
            )
        ],
    ),
    (
        "boot-order-duplicate",
        {f"{DISKS}[0].bootOrder": 1, **network([{**MASQ, "bootOrder": 1}], [POD])},
        [
            (
                f"{IFACES}[0].bootOrder",
                "Boot order for spec.domain.devices.interfaces[0].bootOrder already set for a "
                "different device (spec.domain.devices.disks[0].bootOrder).",
            )
        ],
    ),
    # --- other devices
    (
        "watchdog-name",
        {f"{DEVICES}.watchdog": {"name": "WD"}},
        [(f"{DEVICES}.watchdog.name", Sub(f'Invalid value: "WD": {LABEL_MSG}'))],
    ),
    (
        "watchdog-diag288",
        {f"{DEVICES}.watchdog": {"name": "wd", "diag288": {"action": "reset"}}},
        [(f"{DEVICES}.watchdog.diag288", "amd64 only supports I6300ESB watchdog device")],
    ),
    (
        "input-duplicate-name",
        {f"{DEVICES}.inputs": [{"name": "tablet"}, {"name": "tablet", "bus": "virtio"}]},
        [(f"{DEVICES}.inputs[1].name", "Duplicate input name tablet")],
    ),
    (
        "sound-without-name",
        {f"{DEVICES}.sound": {"model": "ich9"}},
        [(f"{DEVICES}.sound.name", "Sound device must have a name")],
    ),
    (
        "autoattach-vsock",
        {f"{DEVICES}.autoattachVSOCK": True},
        [
            (
                f"{DEVICES}.autoattachVSOCK",
                "autoattachVSOCK is not supported by vmid: VSOCK is not implemented yet",
            )
        ],
    ),
    (
        "network-interface-multiqueue",
        {f"{DEVICES}.networkInterfaceMultiqueue": True},
        [
            (
                f"{DEVICES}.networkInterfaceMultiqueue",
                "networkInterfaceMultiqueue is not supported by vmid: multi-queue network "
                "interfaces are not implemented yet",
            )
        ],
    ),
]


@pytest.mark.parametrize(("patch", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(base: dict[str, Any], patch: Patch, expected: list[tuple[str, str]]) -> None:
    assert_problems(problems_of(apply_patch(base, patch)), expected)


# Values right at the edge of a rule: accepted.
BOUNDARIES: list[tuple[str, Patch]] = [
    ("memory-request-1M", {"spec.domain.resources.requests.memory": "1M"}),
    ("memory-guest-equals-limit", {"spec.domain.resources.limits": {"memory": "128Mi"}}),
    ("cpu-288-vcpus", {"spec.domain.cpu": {"sockets": 2, "cores": 144}}),
    ("six-sata-disks", {k: v for k, v in TOO_MANY_SATA.items() if not k.endswith("[7]")}),
    ("spinlocks-4096", {"spec.domain.features": {"hyperv": {"spinlocks": {"spinlocks": 4096}}}}),
    (
        "vendorid-12",
        {"spec.domain.features": {"hyperv": {"vendorid": {"vendorid": "0123456789ab"}}}},
    ),
    ("serial-256", {f"{DISKS}[0].serial": "s" * 256}),
    ("name-63", {f"{DISKS}[0].name": "a" * 63, "spec.volumes[0].name": "a" * 63}),
    ("port-65535", network([{**MASQ, "ports": [{"port": 65535}]}], [POD])),
    # KubeVirt admits ports on a bridge of the pod network; vmid forwards them as masquerade's.
    ("ports-on-bridge", network([{**BRIDGE, "ports": [{"port": 80}]}], [POD])),
    ("machine-pc-q35", {"spec.domain.machine": {"type": "pc-q35-rhel9.2.0"}}),
    ("io-native-cache-none", {f"{DISKS}[0].io": "native", f"{DISKS}[0].cache": "none"}),
    # An unset cache is O_DIRECT for native AIO, as KubeVirt's unset cache is "none".
    ("io-native-cache-unset", {f"{DISKS}[0].io": "native"}),
    ("mac-almost-reserved", network([{**BRIDGE, "macAddress": "02:00:00:00:00:01"}], [POD])),
    # KubeVirt reserves it for masquerade only (its in-pod bridge's MAC).
    ("mac-reserved-on-bridge", network([{**BRIDGE, "macAddress": "02:00:00:00:00:00"}], [POD])),
    (
        "efi-without-secure-boot",
        {"spec.domain.firmware": {"bootloader": {"efi": {"secureBoot": False}}}},
    ),
    ("empty-disk-1Mi", with_volume(1, {"name": "scratch", "emptyDisk": {"capacity": "1Mi"}})),
    ("empty-disk-2Pi", with_volume(1, {"name": "scratch", "emptyDisk": {"capacity": "2Pi"}})),
    ("cpu-model-qemu-name", {"spec.domain.cpu": {"model": "Skylake-Client-IBRS"}}),
    ("cpu-feature-with-a-dot", {"spec.domain.cpu": {"features": [{"name": "sse4.1"}]}}),
    (
        "vendorid-with-a-space",
        {"spec.domain.features": {"hyperv": {"vendorid": {"vendorid": "Microsoft Hv"}}}},
    ),
    ("user-data-2048", cloud_init("cloudInitNoCloud", {"userData": "x" * 2048})),
    # KubeVirt counts decoded bytes: 1600 bytes are 2136 characters of base64.
    (
        "user-data-base64-decoded-1600",
        cloud_init("cloudInitNoCloud", {"userDataBase64": base64.b64encode(b"x" * 1600).decode()}),
    ),
    ("memory-limit-zero-means-none", {"spec.domain.resources.limits": {"memory": "0"}}),
    # KubeVirt checks the guest against the limit only under the Stage rollout strategy.
    (
        "memory-guest-above-limit",
        {
            "spec.domain.memory": {"guest": "256Mi"},
            "spec.domain.resources.limits": {"memory": "128Mi"},
        },
    ),
    # KubeVirt admits it: an existing file is used as it is.
    (
        "host-disk-create-without-capacity",
        host_disk({"path": "/var/lib/disk.img", "type": "DiskOrCreate"}),
    ),
    (
        "pod-cidr-with-host-bits",
        network([BRIDGE], [{**POD, "pod": {"vmNetworkCIDR": "10.0.2.1/24"}}]),
    ),
]


def test_user_data_limit_counts_bytes_not_characters(base: dict[str, Any]) -> None:
    problems = problems_of(
        apply_patch(base, cloud_init("cloudInitNoCloud", {"userData": "é" * 1500}))
    )
    assert pairs(problems) == [
        (
            "spec.volumes[1].cloudInitNoCloud.userData",
            "userdata exceeds 2048 byte limit: compress it with gzip and give it as base64",
        )
    ]


@pytest.mark.parametrize("patch", [b[1] for b in BOUNDARIES], ids=[b[0] for b in BOUNDARIES])
def test_boundary_accepted(base: dict[str, Any], patch: Patch) -> None:
    assert pairs(problems_of(apply_patch(base, patch))) == []


@pytest.mark.parametrize(
    ("field", "item"),
    [
        (DISKS, lambda i: {"name": f"d{i}", "disk": {"bus": "scsi"}}),
        ("spec.volumes", lambda i: {"name": f"d{i}", "emptyDisk": {"capacity": "1Mi"}}),
        (IFACES, lambda i: {"name": f"n{i}", "bridge": {}}),
        ("spec.networks", lambda i: {"name": f"n{i}", "multus": {"networkName": "br"}}),
    ],
    ids=["disks", "volumes", "interfaces", "networks"],
)
def test_a_list_the_host_acts_on_is_bounded_as_in_kubevirt(
    base: dict[str, Any], field: str, item: Any
) -> None:
    apply_patch(base, {field: [item(i) for i in range(257)]})
    expected = f"{field} list exceeds the 256 element limit in length"
    assert (field, expected) in pairs(problems_of(base))


def test_base_manifest_is_valid(base: dict[str, Any]) -> None:
    assert pairs(problems_of(base)) == []


def test_rich_manifest_is_valid(base: dict[str, Any]) -> None:
    manifest = apply_patch(
        base,
        {
            "metadata.namespace": "vms",
            "metadata.labels": {"app": "web"},
            "spec.hostname": "web-1",
            "spec.subdomain": "example.com",
            "spec.terminationGracePeriodSeconds": 30,
            "spec.domain.resources": {
                "requests": {"memory": "1Gi", "cpu": "2"},
                "limits": {"memory": "2Gi", "cpu": "2"},
            },
            "spec.domain.memory": {"guest": "1536Mi"},
            "spec.domain.cpu": {
                "sockets": 1,
                "cores": 2,
                "threads": 1,
                "features": [{"name": "pcid", "policy": "require"}],
            },
            "spec.domain.machine": {"type": "q35"},
            "spec.domain.firmware": {
                "uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223",
                "bootloader": {"efi": {"secureBoot": True}},
            },
            "spec.domain.features": {
                "acpi": {},
                "apic": {},
                "smm": {"enabled": True},
                "hyperv": {
                    "relaxed": {},
                    "vapic": {},
                    "spinlocks": {"spinlocks": 8191},
                    "vendorid": {"vendorid": "vmid"},
                },
            },
            "spec.domain.clock": {"timezone": "Europe/Berlin", "timer": {"rtc": {}}},
            DISKS: [
                {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1, "serial": "root-1"},
                {"name": "iso", "cdrom": {"bus": "sata"}, "bootOrder": 2},
                {"name": "data", "disk": {"bus": "scsi"}, "cache": "none", "io": "native"},
                {"name": "stick", "disk": {"bus": "usb"}},
                {"name": "scratch", "disk": {"bus": "virtio"}, "dedicatedIOThread": True},
                {"name": "cloudinit", "disk": {"bus": "virtio"}},
                {
                    "name": "host",
                    "disk": {"bus": "virtio"},
                    "blockSize": {"custom": {"logical": 512, "physical": 4096}},
                },
            ],
            "spec.volumes": [
                {"name": "root", "containerDisk": {"image": "quay.io/kubevirt/fedora:41"}},
                {
                    "name": "iso",
                    "containerDisk": {"image": "kubevirt/cirros", "path": "/disk/cirros.iso"},
                },
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}},
                {"name": "stick", "emptyDisk": {"capacity": "64Mi"}},
                {"name": "scratch", "emptyDisk": {"capacity": "2Gi"}},
                {
                    "name": "cloudinit",
                    "cloudInitNoCloud": {
                        "userDataBase64": "I2Nsb3VkLWNvbmZpZwpwYXNzd29yZDogdm1pZAo=",
                        "networkData": "version: 2\n",
                    },
                },
                {
                    "name": "host",
                    "hostDisk": {
                        "path": "/var/lib/vmid/host.img",
                        "type": "DiskOrCreate",
                        "capacity": "1Gi",
                    },
                },
            ],
            "spec.networks": [
                {"name": "default", "pod": {"vmNetworkCIDR": "10.0.2.0/24"}},
                {"name": "storage", "multus": {"networkName": "ns/storage"}},
            ],
            IFACES: [
                {
                    "name": "default",
                    "masquerade": {},
                    "model": "virtio",
                    "macAddress": "52:54:00:12:34:56",
                    "acpiIndex": 1,
                    "ports": [
                        {"name": "ssh", "port": 22},
                        {"name": "http", "port": 80, "protocol": "TCP"},
                        {"port": 53, "protocol": "UDP"},
                    ],
                },
                {"name": "storage", "bridge": {}, "model": "e1000e", "bootOrder": 3},
            ],
            f"{DEVICES}.watchdog": {"name": "wd", "i6300esb": {"action": "poweroff"}},
            f"{DEVICES}.rng": {},
            f"{DEVICES}.sound": {"name": "audio", "model": "ich9"},
            f"{DEVICES}.inputs": [
                {"name": "tablet", "type": "tablet", "bus": "usb"},
                {"name": "tablet2", "bus": "virtio"},
            ],
            f"{DEVICES}.autoattachVSOCK": False,
            f"{DEVICES}.networkInterfaceMultiqueue": False,
        },
    )
    assert pairs(problems_of(manifest)) == []


def test_all_problems_reported_in_one_pass_sorted_by_line(base: dict[str, Any]) -> None:
    manifest = apply_patch(
        base,
        {
            "metadata.name": "Bad_Name",
            "spec.domain.machine": {"type": "pc"},
            "spec.domain.cpu": {"isolateEmulatorThread": True},
            f"{DISKS}[0].serial": "has space",
            f"{DISKS}[1]": {"name": "missing", "cdrom": {"bus": "virtio"}},
            f"{DEVICES}.sound": {"model": "ac97"},
            "spec.volumes[0].containerDisk.path": "relative.img",
            **network([{**MASQ, "model": "fancy"}], [POD]),
        },
    )
    problems = problems_of(manifest)
    expected: list[tuple[str, str]] = [
        ("metadata.name", Sub(f'Invalid value: "Bad_Name": {SUBDOMAIN_MSG}')),
        (
            "spec.domain.machine.type",
            "spec.domain.machine.type is not supported: pc (allowed values: [q35* pc-q35*])",
        ),
        (
            "spec.domain.cpu.isolateEmulatorThread",
            "isolateEmulatorThread should be only set in combination with DedicatedCPUPlacement",
        ),
        (
            f"{DISKS}[0].serial",
            "must be made up of the following characters [A-Za-z0-9_.+-], if specified",
        ),
        (f"{DISKS}[1].cdrom.bus", "Bus type virtio is invalid for CD-ROM device"),
        (f"{DEVICES}.sound.name", "Sound device must have a name"),
        (f"{IFACES}[0].model", "interface default uses model fancy that is not supported."),
        (
            "spec.volumes[0].containerDisk.path",
            "spec.volumes.containerDisk must be an absolute path to a file without relative "
            "components",
        ),
    ]
    assert_problems(problems, expected)
    positions = [(p.line, p.column) for p in problems]
    assert positions == sorted(positions)
    # validate() finds the machine and CPU problems first; they come later in this file.
    assert [p.field for p in problems] == [
        "metadata.name",
        f"{DISKS}[0].serial",
        f"{DISKS}[1].cdrom.bus",
        f"{DEVICES}.sound.name",
        f"{IFACES}[0].model",
        "spec.domain.machine.type",
        "spec.domain.cpu.isolateEmulatorThread",
        "spec.volumes[0].containerDisk.path",
    ]
    assert len({p.line for p in problems}) == len(problems)  # each on its own line


MANIFEST_TEXT: Final = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: testvmi
spec:
  domain:
    resources:
      requests:
        memory: 128Mi
    cpu:
      sockets: 20
      cores: 20
    firmware:
      bootloader:
        efi: {}
    devices:
      disks:
        - name: root
          disk:
            bus: virtio
        - name: data
          serial: "bad serial"
  volumes:
    - name: root
      containerDisk:
        image: kubevirt/cirros
"""


def test_problem_positions_point_into_the_yaml_text() -> None:
    manifests, problems = load_text("vmi.yaml", MANIFEST_TEXT.encode())
    assert manifests == []
    assert [(p.line, p.column, p.field) for p in problems] == [
        # A mapping-valued field is located at its key.
        (10, 5, "spec.domain.cpu"),
        # A field that is only there after defaulting (secureBoot) is located at the
        # deepest part of its path in the file: the `efi` key.
        (15, 9, "spec.domain.firmware.bootloader.efi.secureBoot"),
        # A scalar-valued field is located at its value.
        (21, 17, f"{DISKS}[1].name"),
        (22, 19, f"{DISKS}[1].serial"),
    ]
    assert [str(p) for p in problems] == [
        "vmi.yaml:10:5: spec.domain.cpu: 400 vCPUs requested; QEMU's q35 machine supports at "
        "most 288",
        "vmi.yaml:15:9: spec.domain.firmware.bootloader.efi.secureBoot: spec.domain has EFI "
        "SecureBoot enabled. SecureBoot requires SMM, which is currently disabled.",
        'vmi.yaml:21:17: spec.domain.devices.disks[1].name: Name "data" not found: no volume in '
        "spec.volumes has this name",
        "vmi.yaml:22:19: spec.domain.devices.disks[1].serial: must be made up of the following "
        "characters [A-Za-z0-9_.+-], if specified",
    ]


def test_label_key_position() -> None:
    text = dump(
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm", "labels": {"kubevirt.io/created-by": "me"}},
            "spec": {
                "domain": {
                    "resources": {"requests": {"memory": "128Mi"}},
                    "devices": {},
                },
            },
        }
    )
    _, problems = load_text("vmi.yaml", text.encode())
    assert [(p.line, p.column, p.field) for p in problems] == [
        (6, 29, "metadata.labels[kubevirt.io/created-by]")
    ]


# Schema errors, found before defaulting and validation.
STRUCTURE: list[tuple[str, Patch, str, str]] = [
    (
        "unknown-field-did-you-mean",
        {f"{DISKS}[0].disk.bsu": "virtio"},
        f"{DISKS}[0].disk.bsu",
        'unknown field "bsu" (did you mean "bus"?)',
    ),
    (
        "unknown-field-no-suggestion",
        {"spec.domain.frobnicate": True},
        "spec.domain.frobnicate",
        'unknown field "frobnicate"',
    ),
    (
        "unsupported-field",
        {"spec.resourceClaims": [{"name": "gpu"}]},
        "spec.resourceClaims",
        "resourceClaims is not supported by vmid: dynamic resource allocation (DRA) claims are "
        "a Kubernetes feature",
    ),
    (
        "unsupported-device",
        {f"{DEVICES}.tpm": {}},
        f"{DEVICES}.tpm",
        "tpm is not supported by vmid: emulated TPMs (swtpm) are not implemented yet",
    ),
    (
        "wrong-type-integer",
        {"spec.domain.cpu": {"cores": "two"}},
        "spec.domain.cpu.cores",
        'Invalid value: "two": must be of type integer',
    ),
    (
        "wrong-type-boolean",
        {f"{DISKS}[0].disk.readonly": "yes"},
        f"{DISKS}[0].disk.readonly",
        'Invalid value: "yes": must be of type boolean',
    ),
    (
        "enum",
        {f"{DISKS}[0].disk.bus": "virtoi"},
        f"{DISKS}[0].disk.bus",
        'Unsupported value: "virtoi": supported values: "sata", "scsi", "usb", "virtio"',
    ),
    (
        "missing-required",
        {f"{DISKS}[0].name": DELETE},
        f"{DISKS}[0].name",
        "Required value",
    ),
]


@pytest.mark.parametrize(
    ("patch", "field", "message"), [s[1:] for s in STRUCTURE], ids=[s[0] for s in STRUCTURE]
)
def test_structure(base: dict[str, Any], patch: Patch, field: str, message: str) -> None:
    assert pairs(problems_of(apply_patch(base, patch))) == [(field, message)]


def test_structure_reports_every_schema_error_at_once(base: dict[str, Any]) -> None:
    manifest = apply_patch(
        base,
        {
            f"{DISKS}[0].disk.bus": "ide",
            "spec.domain.cpu": {"cores": "2"},
            "spec.volumes[0].containerDisk.imagePulPolicy": "Always",
        },
    )
    assert_problems(
        problems_of(manifest),
        [
            (
                f"{DISKS}[0].disk.bus",
                'Unsupported value: "ide": supported values: "sata", "scsi", "usb", "virtio"',
            ),
            ("spec.domain.cpu.cores", 'Invalid value: "2": must be of type integer'),
            (
                "spec.volumes[0].containerDisk.imagePulPolicy",
                'unknown field "imagePulPolicy" (did you mean "imagePullPolicy"?)',
            ),
        ],
    )
