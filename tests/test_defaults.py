"""Tests for KubeVirt's defaults as vmid applies them: load a manifest, look at the VMI it gives.

Each test changes the minimal valid manifest from conftest (`base`), loads it through the whole
pipeline (schema, defaults, validation) and checks the defaulted value KubeVirt would store.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import dump
from vmid.api import defaults
from vmid.api import types as t
from vmid.api.load import load_text
from vmid.api.structure import structure

#: KubeVirt's namespace for name-derived firmware UUIDs, written out here on purpose.
KUBEVIRT_FIRMWARE_NAMESPACE = uuid.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895")


def defaulted(data: dict[str, Any]) -> t.VirtualMachineInstance:
    """The VMI a valid manifest becomes once loaded and defaulted."""
    manifests, problems = load_text("vmi.yaml", dump(data).encode())
    assert problems == [], [str(p) for p in problems]
    (manifest,) = manifests
    return manifest.vmi


def domain(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = data["spec"]["domain"]
    return result


def devices(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = data["spec"]["domain"]["devices"]
    return result


def add_volume(data: dict[str, Any], volume: dict[str, Any], disk: dict[str, Any] | None) -> None:
    data["spec"]["volumes"].append(volume)
    if disk is not None:
        devices(data)["disks"].append(disk)


def cpu_of(data: dict[str, Any]) -> t.CPU:
    cpu = defaulted(data).spec.domain.cpu
    assert cpu is not None
    return cpu


def firmware_of(data: dict[str, Any]) -> t.Firmware:
    firmware = defaulted(data).spec.domain.firmware
    assert firmware is not None
    return firmware


# --- disks


def test_disk_bus_defaults_to_sata(base: dict[str, Any]) -> None:
    devices(base)["disks"][0] = {"name": "root", "disk": {}}
    (disk,) = defaulted(base).spec.domain.devices.disks
    assert disk.disk is not None
    assert disk.disk.bus is t.Bus.SATA


def test_disk_without_target_gets_a_sata_disk(base: dict[str, Any]) -> None:
    devices(base)["disks"][0] = {"name": "root"}
    (disk,) = defaulted(base).spec.domain.devices.disks
    assert disk.disk is not None
    assert disk.disk.bus is t.Bus.SATA
    assert disk.cdrom is None


def test_explicit_bus_is_kept(base: dict[str, Any]) -> None:
    (disk,) = defaulted(base).spec.domain.devices.disks
    assert disk.disk is not None
    assert disk.disk.bus is t.Bus.VIRTIO


def test_cdrom_defaults(base: dict[str, Any]) -> None:
    add_volume(
        base,
        {"name": "iso", "containerDisk": {"image": "kubevirt/cirros"}},
        {"name": "iso", "cdrom": {}},
    )
    cdrom = defaulted(base).spec.domain.devices.disks[1].cdrom
    assert cdrom is not None
    assert cdrom.bus is t.Bus.SATA
    assert cdrom.readonly is True
    assert cdrom.tray is t.Tray.CLOSED


def test_cdrom_explicit_values_are_kept(base: dict[str, Any]) -> None:
    add_volume(
        base,
        {"name": "iso", "containerDisk": {"image": "kubevirt/cirros"}},
        {"name": "iso", "cdrom": {"bus": "scsi", "readonly": False}},
    )
    cdrom = defaulted(base).spec.domain.devices.disks[1].cdrom
    assert cdrom is not None
    assert cdrom.bus is t.Bus.SCSI
    assert cdrom.readonly is False


def test_lun_bus_defaults_to_sata(base: dict[str, Any]) -> None:
    # vmid refuses lun disks at validation, so check the defaulting step on its own.
    add_volume(
        base,
        {"name": "claim", "persistentVolumeClaim": {"claimName": "c"}},
        {"name": "claim", "lun": {}},
    )
    vmi, findings = structure(base, t.VirtualMachineInstance)
    assert findings == []
    assert vmi is not None
    lun = defaults.apply(vmi).spec.domain.devices.disks[1].lun
    assert lun is not None
    assert lun.bus is t.Bus.SATA


def test_volume_without_disk_gets_a_disk(base: dict[str, Any]) -> None:
    add_volume(base, {"name": "scratch", "emptyDisk": {"capacity": "1Gi"}}, None)
    disks = defaulted(base).spec.domain.devices.disks
    assert [d.name for d in disks] == ["root", "scratch"]
    assert disks[1].disk is not None
    assert disks[1].disk.bus is t.Bus.SATA


# --- networks


def test_default_pod_network_and_bridge_interface(base: dict[str, Any]) -> None:
    spec = defaulted(base).spec
    (network,) = spec.networks
    assert network.name == "default"
    assert network.pod is not None
    (interface,) = spec.domain.devices.interfaces
    assert interface.name == "default"
    assert interface.bridge is not None
    assert interface.masquerade is None


def test_no_default_network_when_pod_interface_is_off(base: dict[str, Any]) -> None:
    devices(base)["autoattachPodInterface"] = False
    spec = defaulted(base).spec
    assert spec.networks == ()
    assert spec.domain.devices.interfaces == ()


def test_no_default_network_when_interfaces_are_given(base: dict[str, Any]) -> None:
    devices(base)["interfaces"] = [{"name": "net", "masquerade": {}}]
    base["spec"]["networks"] = [{"name": "net", "pod": {}}]
    spec = defaulted(base).spec
    assert [n.name for n in spec.networks] == ["net"]
    assert [i.name for i in spec.domain.devices.interfaces] == ["net"]


# --- CPU and memory


@pytest.mark.parametrize(
    ("resources", "sockets"),
    [
        pytest.param({}, 1, id="nothing"),
        pytest.param({"requests": {"cpu": "100m"}}, 1, id="100m"),
        pytest.param({"requests": {"cpu": "1500m"}}, 2, id="1500m"),
        pytest.param({"requests": {"cpu": 3}}, 3, id="3"),
        pytest.param({"limits": {"cpu": "2"}}, 2, id="limits"),
        pytest.param({"requests": {"cpu": "1"}, "limits": {"cpu": "4"}}, 4, id="limits-win"),
    ],
)
def test_cpu_topology_from_resources(
    base: dict[str, Any], resources: dict[str, Any], sockets: int
) -> None:
    for kind, values in resources.items():
        domain(base)["resources"].setdefault(kind, {}).update(values)
    cpu = cpu_of(base)
    assert (cpu.sockets, cpu.cores, cpu.threads) == (sockets, 1, 1)


def test_explicit_cores_are_kept(base: dict[str, Any]) -> None:
    domain(base)["cpu"] = {"cores": 2}
    domain(base)["resources"]["limits"] = {"cpu": "2", "memory": "128Mi"}
    cpu = cpu_of(base)
    assert cpu.cores == 2
    # No topology is derived from the limit when the manifest gives one.
    assert cpu.sockets in (None, 1)
    assert cpu.threads in (None, 1)


def test_memory_guest_from_requests(base: dict[str, Any]) -> None:
    domain(base)["resources"] = {"requests": {"memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    memory = defaulted(base).spec.domain.memory
    assert memory is not None
    assert memory.guest is not None
    assert memory.guest.value() == 256 * 2**20


def test_memory_guest_from_limits(base: dict[str, Any]) -> None:
    domain(base)["resources"] = {"limits": {"memory": "512Mi"}}
    memory = defaulted(base).spec.domain.memory
    assert memory is not None
    assert memory.guest is not None
    assert memory.guest.value() == 512 * 2**20


def test_memory_guest_given_is_kept(base: dict[str, Any]) -> None:
    domain(base)["memory"] = {"guest": "64Mi"}
    memory = defaulted(base).spec.domain.memory
    assert memory is not None
    assert memory.guest is not None
    assert memory.guest.value() == 64 * 2**20


def test_cpu_request_copied_from_limit(base: dict[str, Any]) -> None:
    domain(base)["resources"]["limits"] = {"cpu": "1500m"}
    resources = defaulted(base).spec.domain.resources
    assert resources is not None
    assert resources.requests["cpu"].milli_value() == 1500


def test_cpu_request_given_is_kept(base: dict[str, Any]) -> None:
    domain(base)["resources"]["requests"]["cpu"] = "500m"
    domain(base)["resources"]["limits"] = {"cpu": "2"}
    resources = defaulted(base).spec.domain.resources
    assert resources is not None
    assert resources.requests["cpu"].milli_value() == 500


# --- machine, CPU model, features


def test_machine_defaults_to_q35(base: dict[str, Any]) -> None:
    machine = defaulted(base).spec.domain.machine
    assert machine is not None
    assert machine.type == "q35"


def test_machine_given_is_kept(base: dict[str, Any]) -> None:
    domain(base)["machine"] = {"type": "pc-q35-8.2"}
    machine = defaulted(base).spec.domain.machine
    assert machine is not None
    assert machine.type == "pc-q35-8.2"


def test_cpu_model_defaults_to_host_model(base: dict[str, Any]) -> None:
    assert cpu_of(base).model == "host-model"


def test_cpu_model_given_is_kept(base: dict[str, Any]) -> None:
    domain(base)["cpu"] = {"model": "host-passthrough"}
    assert cpu_of(base).model == "host-passthrough"


def test_acpi_enabled_by_default(base: dict[str, Any]) -> None:
    features = defaulted(base).spec.domain.features
    assert features is not None
    assert features.acpi is not None
    assert features.acpi.enabled is True


def test_acpi_off_is_kept(base: dict[str, Any]) -> None:
    domain(base)["features"] = {"acpi": {"enabled": False}}
    features = defaulted(base).spec.domain.features
    assert features is not None
    assert features.acpi is not None
    assert features.acpi.enabled is False


def test_hyperv_spinlocks_default_to_4096(base: dict[str, Any]) -> None:
    domain(base)["features"] = {"hyperv": {"spinlocks": {}, "relaxed": {}}}
    features = defaulted(base).spec.domain.features
    assert features is not None
    assert features.hyperv is not None
    spinlocks = features.hyperv.spinlocks
    assert spinlocks is not None
    assert spinlocks.enabled is True
    assert spinlocks.spinlocks == 4096
    assert features.hyperv.relaxed is not None
    assert features.hyperv.relaxed.enabled is True


def test_hyperv_spinlocks_given_are_kept(base: dict[str, Any]) -> None:
    domain(base)["features"] = {"hyperv": {"spinlocks": {"spinlocks": 8191}}}
    features = defaulted(base).spec.domain.features
    assert features is not None
    assert features.hyperv is not None
    assert features.hyperv.spinlocks is not None
    assert features.hyperv.spinlocks.spinlocks == 8191


def test_hyperv_requirements_left_unset_are_enabled(base: dict[str, Any]) -> None:
    # As KubeVirt's mutator: synictimer needs synic, synic needs vpindex (else QEMU refuses
    # hv-synic), evmcs needs vapic and the vmx CPU feature (set to require).
    domain(base)["features"] = {"hyperv": {"synictimer": {}, "evmcs": {}}}
    domain(base)["cpu"] = {"features": [{"name": "vmx", "policy": "forbid"}]}
    spec = defaulted(base).spec.domain
    assert spec.features is not None
    assert spec.features.hyperv is not None
    hyperv = spec.features.hyperv
    for name in ("synic", "vpindex", "vapic"):
        assert getattr(hyperv, name) == t.FeatureState(enabled=True), name
    assert spec.cpu is not None
    assert spec.cpu.features == (t.CPUFeature(name="vmx", policy=t.FeaturePolicy.REQUIRE),)


def test_hyperv_requirement_disabled_is_kept(base: dict[str, Any]) -> None:
    domain(base)["features"] = {"hyperv": {"synic": {}, "vpindex": {"enabled": False}}}
    _, problems = load_text("vmi.yaml", dump(base).encode())
    assert [(p.field, p.message) for p in problems] == [
        (
            "spec.domain.features.hyperv.synic",
            "'spec.domain.features.hyperv.synic' requires "
            "'spec.domain.features.hyperv.vpindex', which was disabled.",
        )
    ]


# --- firmware


def test_firmware_uuid_is_kubevirts_uuid5_of_the_name(base: dict[str, Any]) -> None:
    expected = str(uuid.uuid5(KUBEVIRT_FIRMWARE_NAMESPACE, "testvmi"))
    assert firmware_of(base).uuid == expected


def test_firmware_uuid_same_name_same_uuid(base: dict[str, Any]) -> None:
    first = firmware_of(base).uuid
    base["spec"]["terminationGracePeriodSeconds"] = 5  # anything but the name may change
    assert firmware_of(base).uuid == first


def test_firmware_uuid_differs_by_name(base: dict[str, Any]) -> None:
    first = firmware_of(base).uuid
    base["metadata"]["name"] = "othervmi"
    second = firmware_of(base).uuid
    assert first != second
    assert second == str(uuid.uuid5(KUBEVIRT_FIRMWARE_NAMESPACE, "othervmi"))


def test_firmware_uuid_given_is_kept(base: dict[str, Any]) -> None:
    given = "5d307ca9-b3ef-428c-8861-06e72d69f223"
    domain(base)["firmware"] = {"uuid": given}
    assert firmware_of(base).uuid == given


def test_empty_efi_means_secure_boot(base: dict[str, Any]) -> None:
    domain(base)["firmware"] = {"bootloader": {"efi": {}}}
    domain(base)["features"] = {"smm": {}}
    bootloader = firmware_of(base).bootloader
    assert bootloader is not None
    assert bootloader.efi is not None
    assert bootloader.efi.secureBoot is True


def test_efi_without_secure_boot_is_kept(base: dict[str, Any]) -> None:
    domain(base)["firmware"] = {"bootloader": {"efi": {"secureBoot": False}}}
    bootloader = firmware_of(base).bootloader
    assert bootloader is not None
    assert bootloader.efi is not None
    assert bootloader.efi.secureBoot is False


# --- volumes


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("kubevirt/cirros", t.PullPolicy.ALWAYS),
        ("kubevirt/cirros:latest", t.PullPolicy.ALWAYS),
        ("quay.io/kubevirt/cirros:latest", t.PullPolicy.ALWAYS),
        ("quay.io/kubevirt/cirros", t.PullPolicy.ALWAYS),
        ("kubevirt/cirros:v1.2", t.PullPolicy.IF_NOT_PRESENT),
        ("quay.io/kubevirt/cirros:20240101", t.PullPolicy.IF_NOT_PRESENT),
        ("kubevirt/cirros@sha256:" + "a" * 64, t.PullPolicy.IF_NOT_PRESENT),
    ],
)
def test_image_pull_policy(base: dict[str, Any], image: str, policy: t.PullPolicy) -> None:
    base["spec"]["volumes"][0]["containerDisk"]["image"] = image
    disk = defaulted(base).spec.volumes[0].containerDisk
    assert disk is not None
    assert disk.imagePullPolicy is policy


def test_image_pull_policy_given_is_kept(base: dict[str, Any]) -> None:
    base["spec"]["volumes"][0]["containerDisk"]["imagePullPolicy"] = "Never"
    disk = defaulted(base).spec.volumes[0].containerDisk
    assert disk is not None
    assert disk.imagePullPolicy is t.PullPolicy.NEVER


# --- other devices


def test_watchdog_without_model_is_i6300esb_with_reset(base: dict[str, Any]) -> None:
    devices(base)["watchdog"] = {"name": "wd"}
    watchdog = defaulted(base).spec.domain.devices.watchdog
    assert watchdog is not None
    assert watchdog.i6300esb == t.I6300ESB(action=t.WatchdogAction.RESET)


def test_watchdog_action_defaults_to_reset(base: dict[str, Any]) -> None:
    devices(base)["watchdog"] = {"name": "wd", "i6300esb": {}}
    watchdog = defaulted(base).spec.domain.devices.watchdog
    assert watchdog is not None
    assert watchdog.i6300esb is not None
    assert watchdog.i6300esb.action is t.WatchdogAction.RESET


def test_watchdog_action_given_is_kept(base: dict[str, Any]) -> None:
    devices(base)["watchdog"] = {"name": "wd", "i6300esb": {"action": "poweroff"}}
    watchdog = defaulted(base).spec.domain.devices.watchdog
    assert watchdog is not None
    assert watchdog.i6300esb is not None
    assert watchdog.i6300esb.action is t.WatchdogAction.POWEROFF


def test_input_defaults_to_usb_tablet(base: dict[str, Any]) -> None:
    devices(base)["inputs"] = [{"name": "tablet0"}]
    (device,) = defaulted(base).spec.domain.devices.inputs
    assert device.type is t.InputType.TABLET
    assert device.bus is t.InputBus.USB


def test_input_bus_given_is_kept(base: dict[str, Any]) -> None:
    devices(base)["inputs"] = [{"name": "tablet0", "type": "tablet", "bus": "virtio"}]
    (device,) = defaulted(base).spec.domain.devices.inputs
    assert device.bus is t.InputBus.VIRTIO


def test_architecture_defaults_to_amd64(base: dict[str, Any]) -> None:
    assert defaulted(base).spec.architecture == "amd64"
