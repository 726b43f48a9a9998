"""Tests for what a plan asks the host to prepare: files, disks, EFI variables and taps.

Each test loads a manifest (the minimal valid one from conftest, changed), plans it with a
TCG configuration under a fixed root, and checks the `prepare` entries, the taps and the argv
options a user would see in `vmid render -o json`.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest

from tests import qemuopts
from tests.conftest import dump
from vmid.api.findings import Finding
from vmid.api.load import load_text
from vmid.config import Accelerator, Config, Firmware, Paths, PodNetwork, PortRange
from vmid.host import accel
from vmid.manifests import plan_file
from vmid.plan.build import build
from vmid.plan.model import (
    CloudInitIso,
    EfiVars,
    EmptyDisk,
    FileOverlay,
    HostFile,
    ImageOverlay,
    LaunchPlan,
    Prepared,
    Tap,
)

P = TypeVar("P", bound=Prepared)

ROOT = Path("/vmid-root")
STATE = "/vmid-root/var/lib/vmid"
TCG = Config(accelerator=Accelerator.TCG, hostDiskRoots=("/srv",))
MIB = 2**20
KUBEVIRT_FIRMWARE_NAMESPACE = uuid.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895")


def plan_of(
    data: dict[str, Any],
    config: Config = TCG,
    accelerator: Accelerator = Accelerator.TCG,
) -> LaunchPlan:
    manifests, problems = load_text("vmi.yaml", dump(data).encode())
    assert problems == [], [str(p) for p in problems]
    (manifest,) = manifests
    plan, findings = build(manifest.vmi, config, Paths(ROOT), accelerator)
    assert findings == []
    assert plan is not None
    return plan


def prepared(plan: LaunchPlan, kind: type[P]) -> list[P]:
    return [p for p in plan.prepare if isinstance(p, kind)]


def option(argv: tuple[str, ...], flag: str) -> str:
    (value,) = [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]
    return value


def options_of(argv: tuple[str, ...], flag: str) -> list[tuple[str | None, dict[str, str]]]:
    return [qemuopts.parse(argv[i + 1]) for i, arg in enumerate(argv) if arg == flag]


def blockdev_files(plan: LaunchPlan) -> list[dict[str, str]]:
    """The `driver=file` block nodes of each disk's top (not of images under overlays), in disk
    order, with the path vmid passes by fd as `filename`."""
    files = qemuopts.fdsets(plan.argv)
    return [
        {**pairs, "filename": files[pairs["filename"]]}
        for _, pairs in options_of(plan.argv, "-blockdev")
        if pairs["driver"] == "file" and not pairs["node-name"].startswith("base")
    ]


def format_nodes(plan: LaunchPlan) -> list[dict[str, str]]:
    """The format node of each disk's top, in disk order."""
    return [
        pairs
        for _, pairs in options_of(plan.argv, "-blockdev")
        if pairs["driver"] != "file" and not pairs["node-name"].startswith("base")
    ]


def pflash(plan: LaunchPlan) -> dict[str, dict[str, str]]:
    """The pflash file nodes by node name, with the path vmid passes by fd as `filename`."""
    files = qemuopts.fdsets(plan.argv)
    nodes = {p["node-name"]: p for _, p in options_of(plan.argv, "-blockdev")}
    return {
        name: {**nodes[name], "filename": files[nodes[name]["filename"]]}
        for name in ("pflash0", "pflash1")
    }


def add_volume(
    data: dict[str, Any], volume: dict[str, Any], disk: dict[str, Any] | None = None
) -> dict[str, Any]:
    data["spec"]["volumes"].append(volume)
    data["spec"]["domain"]["devices"]["disks"].append(disk or {"name": volume["name"]})
    return data


def with_cloud_init(data: dict[str, Any], kind: str, source: dict[str, Any]) -> dict[str, Any]:
    return add_volume(data, {"name": "ci", kind: source})


def iso_of(plan: LaunchPlan) -> CloudInitIso:
    (iso,) = prepared(plan, CloudInitIso)
    return iso


def files_of(plan: LaunchPlan) -> dict[str, bytes]:
    return {f.name: f.content for f in iso_of(plan).files}


# --- cloud-init NoCloud


def test_nocloud_files(base: dict[str, Any]) -> None:
    plan = plan_of(with_cloud_init(base, "cloudInitNoCloud", {"userData": "#cloud-config\n"}))
    iso = iso_of(plan)
    assert iso.label == "cidata"
    assert iso.path == f"{STATE}/namespaces/default/testvmi/cloud-init/ci.iso"
    files = files_of(plan)
    assert list(files) == ["meta-data", "user-data"]
    firmware_uuid = str(uuid.uuid5(KUBEVIRT_FIRMWARE_NAMESPACE, "testvmi"))
    assert plan.uuid == firmware_uuid
    assert json.loads(files["meta-data"]) == {
        "instance-id": firmware_uuid,
        "local-hostname": "testvmi",
    }
    assert (
        files["meta-data"]
        == json.dumps(json.loads(files["meta-data"]), separators=(",", ":")).encode()
    ), "meta-data is compact JSON"
    assert files["user-data"] == b"#cloud-config\n"


def test_nocloud_iso_is_a_raw_disk(base: dict[str, Any]) -> None:
    plan = plan_of(with_cloud_init(base, "cloudInitNoCloud", {"userData": "#cloud-config\n"}))
    assert blockdev_files(plan)[1]["filename"] == iso_of(plan).path
    formats = format_nodes(plan)
    assert formats[1]["driver"] == "raw"


def test_nocloud_instance_id_is_the_given_firmware_uuid(base: dict[str, Any]) -> None:
    given = "5d307ca9-b3ef-428c-8861-06e72d69f223"
    base["spec"]["domain"]["firmware"] = {"uuid": given}
    plan = plan_of(with_cloud_init(base, "cloudInitNoCloud", {"userData": "x"}))
    assert json.loads(files_of(plan)["meta-data"])["instance-id"] == given


@pytest.mark.parametrize(
    ("name", "hostname", "expected"),
    [
        pytest.param("web", None, "web", id="name"),
        pytest.param("web.example.com", None, "web", id="up-to-first-dot"),
        pytest.param("a" * 70, None, "a" * 63, id="at-most-63"),
        pytest.param("b" * 70 + ".example", None, "b" * 63, id="first-label-at-most-63"),
        pytest.param("web.example.com", "db", "db", id="spec-hostname"),
    ],
)
def test_nocloud_hostname(
    base: dict[str, Any], name: str, hostname: str | None, expected: str
) -> None:
    base["metadata"]["name"] = name
    if hostname is not None:
        base["spec"]["hostname"] = hostname
    plan = plan_of(with_cloud_init(base, "cloudInitNoCloud", {"userData": "x"}))
    assert json.loads(files_of(plan)["meta-data"])["local-hostname"] == expected


def test_nocloud_user_data_text_is_utf8(base: dict[str, Any]) -> None:
    text = "#cloud-config\nhostname: café\nruncmd: ['echo, \"x\"']\n"
    plan = plan_of(with_cloud_init(base, "cloudInitNoCloud", {"userData": text}))
    assert files_of(plan)["user-data"] == text.encode()


def test_nocloud_user_data_base64_is_decoded_to_bytes(base: dict[str, Any]) -> None:
    blob = bytes(range(256))
    source = {"userDataBase64": base64.b64encode(blob).decode()}
    plan = plan_of(with_cloud_init(base, "cloudInitNoCloud", source))
    assert files_of(plan)["user-data"] == blob


def test_nocloud_user_data_base64_may_be_wrapped(base: dict[str, Any]) -> None:
    blob = b"#cloud-config\n" + b"x" * 200
    encoded = base64.b64encode(blob).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\n"
    plan = plan_of(with_cloud_init(base, "cloudInitNoCloud", {"userDataBase64": wrapped}))
    assert files_of(plan)["user-data"] == blob


def test_nocloud_network_config_only_with_network_data(base: dict[str, Any]) -> None:
    network = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
    source = {"userData": "#cloud-config\n", "networkData": network}
    files = files_of(plan_of(with_cloud_init(base, "cloudInitNoCloud", source)))
    assert list(files) == ["meta-data", "user-data", "network-config"]
    assert files["network-config"] == network.encode()


def test_nocloud_network_data_base64(base: dict[str, Any]) -> None:
    network = b"version: 1\n"
    source = {"networkDataBase64": base64.b64encode(network).decode()}
    files = files_of(plan_of(with_cloud_init(base, "cloudInitNoCloud", source)))
    assert files["network-config"] == network
    assert files["user-data"] == b""


# --- cloud-init ConfigDrive


def test_configdrive_files(base: dict[str, Any]) -> None:
    source = {"userData": "#cloud-config\n", "networkData": '{"links": []}'}
    plan = plan_of(with_cloud_init(base, "cloudInitConfigDrive", source))
    iso = iso_of(plan)
    assert iso.label == "config-2"
    files = files_of(plan)
    assert list(files) == [
        "openstack/latest/meta_data.json",
        "openstack/latest/user_data",
        "openstack/latest/network_data.json",
    ]
    assert json.loads(files["openstack/latest/meta_data.json"]) == {
        "instance_id": "testvmi.default",
        "uuid": plan.uuid,
        "hostname": "testvmi",
    }
    assert files["openstack/latest/user_data"] == b"#cloud-config\n"
    assert files["openstack/latest/network_data.json"] == b'{"links": []}'


def test_configdrive_namespace_and_hostname(base: dict[str, Any]) -> None:
    base["metadata"].update({"name": "web.example", "namespace": "prod"})
    plan = plan_of(with_cloud_init(base, "cloudInitConfigDrive", {"userData": "x"}))
    meta = json.loads(files_of(plan)["openstack/latest/meta_data.json"])
    assert meta["instance_id"] == "web.example.prod"
    assert meta["hostname"] == "web"


def test_configdrive_without_network_data(base: dict[str, Any]) -> None:
    plan = plan_of(with_cloud_init(base, "cloudInitConfigDrive", {"userData": "x"}))
    assert "openstack/latest/network_data.json" not in files_of(plan)


# --- emptyDisk


@pytest.mark.parametrize(
    ("capacity", "size"),
    [
        ("1500Mi", 1500 * MIB),
        ("1.5Gi", 1536 * MIB),
        ("10G", 9536 * MIB),
        ("1Mi", MIB),
        ("1048577", MIB),
        ("2Gi", 2048 * MIB),
    ],
)
def test_empty_disk_size_rounds_down_to_mib(base: dict[str, Any], capacity: str, size: int) -> None:
    plan = plan_of(add_volume(base, {"name": "scratch", "emptyDisk": {"capacity": capacity}}))
    (empty,) = prepared(plan, EmptyDisk)
    assert empty == EmptyDisk(
        path=f"{STATE}/namespaces/default/testvmi/disks/scratch.qcow2", size=size
    )
    assert blockdev_files(plan)[1]["filename"] == empty.path


def test_ten_gigabytes_in_bytes(base: dict[str, Any]) -> None:
    plan = plan_of(add_volume(base, {"name": "scratch", "emptyDisk": {"capacity": "10G"}}))
    assert prepared(plan, EmptyDisk)[0].size == 9999220736


# --- hostDisk


def test_host_disk_or_create_has_create_size(base: dict[str, Any]) -> None:
    source = {"path": "/srv/vm/data.img", "type": "DiskOrCreate", "capacity": "10Gi"}
    plan = plan_of(add_volume(base, {"name": "data", "hostDisk": source}))
    assert prepared(plan, HostFile) == [
        HostFile(path="/srv/vm/data.img", createSize=10 * 2**30, root="/srv")
    ]
    assert blockdev_files(plan)[1]["filename"] == "/srv/vm/data.img"


def test_host_disk_must_exist(base: dict[str, Any]) -> None:
    source = {"path": "/srv/vm/data.img", "type": "Disk"}
    plan = plan_of(add_volume(base, {"name": "data", "hostDisk": source}))
    assert prepared(plan, HostFile) == [
        HostFile(path="/srv/vm/data.img", createSize=None, root="/srv")
    ]


def test_host_disk_root_with_trailing_slash(base: dict[str, Any]) -> None:
    config = Config(accelerator=Accelerator.TCG, hostDiskRoots=("/srv/",))
    source = {"path": "/srv/data.img", "type": "Disk"}
    plan = plan_of(add_volume(base, {"name": "data", "hostDisk": source}), config)
    assert blockdev_files(plan)[1]["filename"] == "/srv/data.img"


def host_disk_problems(
    tmp_path: Path, data: dict[str, Any], config: Config
) -> tuple[str, list[str]]:
    text = dump(data)
    file = tmp_path / "vmi.yaml"
    file.write_text(text)
    planned, problems = plan_file(file, config, Paths(ROOT), Accelerator.TCG, shown="vmi.yaml")
    assert planned == []
    return text, [str(p) for p in problems]


@pytest.mark.parametrize(
    ("roots", "path", "shown_roots"),
    [
        pytest.param(("/srv", "/data"), "/etc/shadow", "/srv, /data", id="outside"),
        pytest.param(("/srv",), "/srv2/disk.img", "/srv", id="sibling-prefix"),
        pytest.param(("/srv",), "/srv", "/srv", id="the-root-itself"),
        pytest.param((), "/srv/disk.img", "none", id="no-roots"),
    ],
)
def test_host_disk_outside_roots_is_a_located_problem(
    tmp_path: Path, base: dict[str, Any], roots: tuple[str, ...], path: str, shown_roots: str
) -> None:
    data = add_volume(base, {"name": "data", "hostDisk": {"path": path, "type": "Disk"}})
    config = Config(accelerator=Accelerator.TCG, hostDiskRoots=roots)
    text, problems = host_disk_problems(tmp_path, data, config)
    lines = text.splitlines()
    line = lines.index(f"      path: {path}") + 1
    assert problems == [
        f"vmi.yaml:{line}:13: spec.volumes[1].hostDisk.path: {path} is outside the directories "
        f"vmid.yaml allows for hostDisk volumes (hostDiskRoots: {shown_roots})"
    ]


def test_host_disk_path_is_normalised_before_the_check(base: dict[str, Any]) -> None:
    data = add_volume(base, {"name": "data", "hostDisk": {"path": "/srv/./a//b", "type": "Disk"}})
    plan = plan_of(data)
    assert blockdev_files(plan)[1]["filename"] == "/srv/a/b"


# --- claims


def test_pvc_is_a_file_in_the_volumes_dir(base: dict[str, Any]) -> None:
    plan = plan_of(add_volume(base, {"name": "data", "persistentVolumeClaim": {"claimName": "db"}}))
    path = f"{STATE}/volumes/db.img"
    assert prepared(plan, HostFile) == [
        HostFile(path=path, root=f"{STATE}/volumes", blockDeviceLink=True)
    ]
    node = blockdev_files(plan)[1]
    assert (node["filename"], node["read-only"]) == (path, "off")


def test_read_only_pvc(base: dict[str, Any]) -> None:
    source = {"claimName": "db", "readOnly": True}
    plan = plan_of(add_volume(base, {"name": "data", "persistentVolumeClaim": source}))
    assert blockdev_files(plan)[1]["read-only"] == "on"


def test_data_volume_is_a_claim(base: dict[str, Any]) -> None:
    plan = plan_of(add_volume(base, {"name": "data", "dataVolume": {"name": "imported"}}))
    assert prepared(plan, HostFile) == [
        HostFile(
            path=f"{STATE}/volumes/imported.img", root=f"{STATE}/volumes", blockDeviceLink=True
        )
    ]


def test_absolute_volumes_dir(base: dict[str, Any]) -> None:
    config = Config(accelerator=Accelerator.TCG, volumesDir="/data/claims")
    data = add_volume(base, {"name": "data", "persistentVolumeClaim": {"claimName": "db"}})
    assert prepared(plan_of(data, config), HostFile) == [
        HostFile(path="/data/claims/db.img", root="/data/claims", blockDeviceLink=True)
    ]


def test_ephemeral_pvc_is_an_overlay_on_the_claim(base: dict[str, Any]) -> None:
    source = {"persistentVolumeClaim": {"claimName": "golden"}}
    plan = plan_of(add_volume(base, {"name": "scratch", "ephemeral": source}))
    overlay = f"{STATE}/namespaces/default/testvmi/disks/scratch.qcow2"
    assert prepared(plan, FileOverlay) == [
        FileOverlay(path=overlay, backing=f"{STATE}/volumes/golden.img", root=f"{STATE}/volumes")
    ]
    assert blockdev_files(plan)[1]["filename"] == overlay
    formats = format_nodes(plan)
    assert formats[1]["driver"] == "qcow2"


# --- containerDisk


@pytest.mark.parametrize(
    ("image", "normalised"),
    [
        ("kubevirt/cirros", "docker.io/kubevirt/cirros:latest"),
        ("cirros", "docker.io/library/cirros:latest"),
        ("kubevirt/cirros:0.6", "docker.io/kubevirt/cirros:0.6"),
        ("quay.io/kubevirt/cirros:v1", "quay.io/kubevirt/cirros:v1"),
        ("localhost:5000/cirros", "localhost:5000/cirros:latest"),
        ("quay.io/x/y@sha256:" + "ab" * 32, "quay.io/x/y@sha256:" + "ab" * 32),
    ],
)
def test_container_disk_is_an_overlay_on_the_normalised_image(
    base: dict[str, Any], image: str, normalised: str
) -> None:
    base["spec"]["volumes"][0]["containerDisk"]["image"] = image
    plan = plan_of(base)
    path = f"{STATE}/namespaces/default/testvmi/disks/root.qcow2"
    [overlay] = prepared(plan, ImageOverlay)
    assert (overlay.path, overlay.image, overlay.volume) == (path, normalised, "root")
    assert blockdev_files(plan)[0]["filename"] == path


@pytest.mark.parametrize(
    ("image", "policy"),
    [("kubevirt/cirros", "Always"), ("x/y:latest", "Always"), ("x/y:1", "IfNotPresent")],
)
def test_container_disk_pull_policy_defaults_as_kubernetes(
    base: dict[str, Any], image: str, policy: str
) -> None:
    base["spec"]["volumes"][0]["containerDisk"]["image"] = image
    [overlay] = prepared(plan_of(base), ImageOverlay)
    assert overlay.pullPolicy == policy


def test_container_disk_path_names_the_file_in_the_image(base: dict[str, Any]) -> None:
    base["spec"]["volumes"][0]["containerDisk"]["path"] = "/disk/fedora.qcow2"
    [overlay] = prepared(plan_of(base), ImageOverlay)
    assert overlay.diskPath == "/disk/fedora.qcow2"


# --- EFI


def efi_plan(base: dict[str, Any], secure: bool, config: Config = TCG) -> LaunchPlan:
    base["spec"]["domain"]["firmware"] = {"bootloader": {"efi": {"secureBoot": secure}}}
    if secure:
        base["spec"]["domain"]["features"] = {"smm": {}}
    return plan_of(base, config)


def test_efi_prepares_variables_and_pflash(base: dict[str, Any]) -> None:
    plan = efi_plan(base, secure=False)
    efivars = f"{STATE}/namespaces/default/testvmi/efivars.fd"
    assert prepared(plan, EfiVars) == [
        EfiVars(path=efivars, template="/usr/share/OVMF/OVMF_VARS_4M.fd")
    ]
    assert pflash(plan)["pflash0"]["filename"] == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert pflash(plan)["pflash0"]["read-only"] == "on"
    assert pflash(plan)["pflash1"]["filename"] == efivars
    machine = qemuopts.parse(option(plan.argv, "-machine"))[1]
    assert (machine["pflash0"], machine["pflash1"]) == ("pflash0", "pflash1")
    assert "-global" not in plan.argv


def test_secure_boot_uses_the_secure_firmware(base: dict[str, Any]) -> None:
    plan = efi_plan(base, secure=True)
    assert [e.template for e in prepared(plan, EfiVars)] == ["/usr/share/OVMF/OVMF_VARS_4M.ms.fd"]
    assert pflash(plan)["pflash0"]["filename"] == "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    assert option(plan.argv, "-global") == "driver=cfi.pflash01,property=secure,value=on"
    assert qemuopts.parse(option(plan.argv, "-machine"))[1]["smm"] == "on"


def test_efi_firmware_paths_from_config(base: dict[str, Any]) -> None:
    firmware = Firmware(efiCode="/fw/code.fd", efiVars="/fw/vars.fd")
    plan = efi_plan(
        base, secure=False, config=Config(accelerator=Accelerator.TCG, firmware=firmware)
    )
    assert [e.template for e in prepared(plan, EfiVars)] == ["/fw/vars.fd"]
    assert pflash(plan)["pflash0"]["filename"] == "/fw/code.fd"


def test_bios_has_no_efi_variables(base: dict[str, Any]) -> None:
    plan = plan_of(base)
    assert prepared(plan, EfiVars) == []
    assert "pflash0" not in option(plan.argv, "-machine")


# --- taps

MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def two_interfaces(data: dict[str, Any]) -> dict[str, Any]:
    data["spec"]["domain"]["devices"]["interfaces"] = [
        {
            "name": "default",
            "masquerade": {},
            "ports": [{"port": 2222}, {"port": 5353, "protocol": "UDP"}],
        },
        {"name": "blue", "bridge": {}},
    ]
    data["spec"]["networks"] = [
        {"name": "default", "pod": {}},
        {"name": "blue", "multus": {"networkName": "ns/blue"}},
    ]
    return data


def locally_administered_unicast(mac: str) -> bool:
    first = int(mac.split(":")[0], 16)
    return bool(first & 0x02) and not first & 0x01


def test_default_tap(base: dict[str, Any]) -> None:
    (tap,) = plan_of(base).taps
    assert re.fullmatch(r"vmid[0-9a-zA-Z]{11}", tap.device)
    assert len(tap.device) == 15
    assert MAC.fullmatch(tap.mac)
    assert locally_administered_unicast(tap.mac)
    assert (tap.interface, tap.network, tap.bridge) == ("default", "default", "vmid0")
    assert (tap.masquerade, tap.linkUp, tap.ports) == (False, True, ())


def test_taps_are_stable_across_plans(base: dict[str, Any]) -> None:
    first = plan_of(two_interfaces(copy.deepcopy(base))).taps
    second = plan_of(two_interfaces(copy.deepcopy(base))).taps
    assert first == second


def test_taps_differ_by_interface_and_vmi(base: dict[str, Any]) -> None:
    one = plan_of(two_interfaces(copy.deepcopy(base))).taps
    base["metadata"]["name"] = "othervmi"
    other = plan_of(two_interfaces(base)).taps
    taps = [*one, *other]
    assert len({t.device for t in taps}) == 4
    assert len({t.mac for t in taps}) == 4
    assert all(len(t.device) == 15 and t.device.startswith("vmid") for t in taps)
    assert all(locally_administered_unicast(t.mac) for t in taps)


def test_tap_macs_reach_the_nic_devices(base: dict[str, Any]) -> None:
    plan = plan_of(two_interfaces(base))
    netdevs = [p for h, p in options_of(plan.argv, "-netdev") if h == "tap"]
    # Each tap by fd, in the order of plan.taps (the runtime passes the real fds).
    assert [(n["id"], n["fd"]) for n in netdevs] == [
        (t.netdev, str(4 + i)) for i, t in enumerate(plan.taps)
    ]
    nics = [p for _, p in options_of(plan.argv, "-device") if "netdev" in p]
    assert [n["mac"] for n in nics] == [t.mac for t in plan.taps]


def test_masquerade_and_ports(base: dict[str, Any]) -> None:
    default, blue = plan_of(two_interfaces(base)).taps
    assert default.masquerade is True
    assert [(p.protocol, p.port) for p in default.ports] == [("TCP", 2222), ("UDP", 5353)]
    assert blue.masquerade is False


def test_ports_of_a_bridge_on_the_pod_network_are_forwarded_those_of_multus_are_not(
    base: dict[str, Any],
) -> None:
    # KubeVirt admits both: ports mean something only on the pod network, whatever the
    # binding, and one host's pod network is one NAT network for bridge and masquerade alike.
    data = two_interfaces(base)
    interfaces = data["spec"]["domain"]["devices"]["interfaces"]
    interfaces[0] = {"name": "default", "bridge": {}, "ports": [{"port": 2222}]}
    interfaces[1]["ports"] = [{"port": 80}]  # below publishPorts: not a host port at all
    default, blue = plan_of(data).taps
    assert [(p.protocol, p.port) for p in default.ports] == [("TCP", 2222)]
    assert blue.ports == ()


@pytest.mark.parametrize("given", ["DE:AD:BE:EF:00:01", "de-ad-be-ef-00-01"])
def test_mac_address_is_honoured(base: dict[str, Any], given: str) -> None:
    base["spec"]["domain"]["devices"]["interfaces"] = [
        {"name": "default", "bridge": {}, "macAddress": given}
    ]
    base["spec"]["networks"] = [{"name": "default", "pod": {}}]
    plan = plan_of(base)
    assert [t.mac for t in plan.taps] == ["de:ad:be:ef:00:01"]
    (nic,) = [p for _, p in options_of(plan.argv, "-device") if "netdev" in p]
    assert nic["mac"] == "de:ad:be:ef:00:01"


def test_absent_interface_has_no_tap(base: dict[str, Any]) -> None:
    two_interfaces(base)["spec"]["domain"]["devices"]["interfaces"][1]["state"] = "absent"
    plan = plan_of(base)
    assert [t.interface for t in plan.taps] == ["default"]
    assert len([a for a in plan.argv if a == "-netdev"]) == 1
    assert not any("ua-interface-blue" in a for a in plan.argv)


def test_down_interface_has_link_down(base: dict[str, Any]) -> None:
    two_interfaces(base)["spec"]["domain"]["devices"]["interfaces"][1]["state"] = "down"
    taps: tuple[Tap, ...] = plan_of(base).taps
    assert [(t.interface, t.linkUp) for t in taps] == [("default", True), ("blue", False)]


def test_multus_bridges(base: dict[str, Any]) -> None:
    two_interfaces(base)
    base["spec"]["domain"]["devices"]["interfaces"].append({"name": "red", "bridge": {}})
    base["spec"]["networks"].append({"name": "red", "multus": {"networkName": "ns/red"}})
    config = Config(accelerator=Accelerator.TCG, multusBridges={"ns/blue": "br-blue"})
    taps = plan_of(base, config).taps
    assert [(t.network, t.bridge) for t in taps] == [
        ("default", "vmid0"),
        ("blue", "br-blue"),
        ("red", "red"),
    ]


def test_pod_bridge_from_config(base: dict[str, Any]) -> None:
    config = Config(accelerator=Accelerator.TCG, podNetwork=PodNetwork(bridge="br9"))
    taps = plan_of(base, config).taps
    assert [t.bridge for t in taps] == ["br9"]


def test_no_interfaces_no_taps(base: dict[str, Any]) -> None:
    base["spec"]["domain"]["devices"]["autoattachPodInterface"] = False
    plan = plan_of(base)
    assert plan.taps == ()
    assert "-netdev" not in plan.argv


# --- grace period, memory, CPU


def test_grace_period_defaults_to_30(base: dict[str, Any]) -> None:
    assert plan_of(base).gracePeriodSeconds == 30


@pytest.mark.parametrize("seconds", [0, 7, 600])
def test_grace_period_as_given(base: dict[str, Any], seconds: int) -> None:
    base["spec"]["terminationGracePeriodSeconds"] = seconds
    assert plan_of(base).gracePeriodSeconds == seconds


@pytest.mark.parametrize(
    ("memory", "mib"),
    [("1024M", "977"), ("128Mi", "128"), ("1Gi", "1024"), ("1000000001", "954"), ("1Mi", "1")],
)
def test_memory_rounds_up_to_mib(base: dict[str, Any], memory: str, mib: str) -> None:
    base["spec"]["domain"]["resources"]["requests"]["memory"] = memory
    assert option(plan_of(base).argv, "-m") == mib


def test_smp_from_topology(base: dict[str, Any]) -> None:
    base["spec"]["domain"]["cpu"] = {"sockets": 2, "cores": 3, "threads": 2}
    assert option(plan_of(base).argv, "-smp") == "12,sockets=2,cores=3,threads=2"


def test_smp_from_cpu_request(base: dict[str, Any]) -> None:
    base["spec"]["domain"]["resources"]["requests"]["cpu"] = "1500m"
    assert option(plan_of(base).argv, "-smp") == "2,sockets=2,cores=1,threads=1"


@pytest.mark.parametrize("model", [None, "host-model", "host-passthrough"])
def test_host_cpu_model_by_accelerator(base: dict[str, Any], model: str | None) -> None:
    if model is not None:
        base["spec"]["domain"]["cpu"] = {"model": model}
    tcg = plan_of(copy.deepcopy(base)).argv
    kvm = plan_of(base, accelerator=Accelerator.KVM).argv
    assert (option(tcg, "-cpu"), option(tcg, "-accel")) == ("max", "tcg")
    assert (option(kvm, "-cpu"), option(kvm, "-accel")) == ("host", "kvm")


def test_named_cpu_model_is_kept(base: dict[str, Any]) -> None:
    base["spec"]["domain"]["cpu"] = {"model": "Skylake-Client"}
    assert option(plan_of(base).argv, "-cpu") == "Skylake-Client"
    assert option(plan_of(base, accelerator=Accelerator.KVM).argv, "-cpu") == "Skylake-Client"


# --- accelerator: auto


def test_auto_without_kvm_is_tcg(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kvm"
    assert accel.resolve(Accelerator.AUTO, kvm_device=str(missing)) is Accelerator.TCG


def test_auto_with_an_openable_device_is_kvm(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    assert accel.resolve(Accelerator.AUTO, kvm_device=str(device)) is Accelerator.KVM


def test_auto_with_an_unopenable_device_is_tcg(tmp_path: Path) -> None:
    # A directory cannot be opened read-write, whoever runs the test.
    assert accel.resolve(Accelerator.AUTO, kvm_device=str(tmp_path)) is Accelerator.TCG


@pytest.mark.parametrize("explicit", [Accelerator.KVM, Accelerator.TCG])
def test_explicit_accelerator_passes_through(tmp_path: Path, explicit: Accelerator) -> None:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    assert accel.resolve(explicit, kvm_device=str(device)) is explicit
    assert accel.resolve(explicit, kvm_device=str(tmp_path / "missing")) is explicit


# Section: q35's root bus (tests/golden/pci-full.yaml fills it; real QEMU starts that one)

PCI_FULL = Path(__file__).parent / "golden" / "pci-full.yaml"


MORE_DISK = {
    "      - {name: d0,": "      - {name: more, disk: {bus: virtio}}\n      - {name: d0,",
    "\n  - {name: d0,": "\n  - {name: more, emptyDisk: {capacity: 1Mi}}\n  - {name: d0,",
}
MORE_NIC = {
    "      - {name: lan,": "      - {name: more, bridge: {}}\n      - {name: lan,",
    "\n  - {name: lan,": "\n  - {name: more, multus: {networkName: more}}\n  - {name: lan,",
}


@pytest.mark.parametrize(
    ("edits", "listing"),
    [
        (MORE_DISK, ": 19 disks on virtio, 2 interfaces, "),
        (MORE_NIC, ": 18 disks on virtio, 3 interfaces, "),
    ],
    ids=["disk", "interface"],
)
def test_more_pci_devices_than_q35_holds_are_refused_at_the_devices(
    tmp_path: Path, edits: dict[str, str], listing: str
) -> None:
    text = PCI_FULL.read_text()
    for old, new in edits.items():
        text = text.replace(old, new, 1)
    manifest = tmp_path / "full.yaml"
    manifest.write_text(text)
    planned, problems = plan_file(manifest, TCG, Paths(ROOT), Accelerator.TCG)
    assert planned == []
    (problem,) = problems
    assert (problem.field, problem.line) == ("spec.domain.devices", 10)
    assert problem.message.startswith(
        "31 PCI devices do not fit on q35's root bus, which has room for 30: "
    )
    assert listing in problem.message
    assert problem.message.endswith("put disks on bus scsi (one controller holds them all) or sata")


@pytest.mark.parametrize(
    "devices",
    [
        *({"video": {"type": v}} for v in ("vga", "cirrus", "virtio", "ramfb", "bochs")),
        *(
            {"interfaces": [{"name": "default", "masquerade": {}, "model": m}]}
            for m in ("e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio")
        ),
        {"sound": {"name": "s", "model": "ac97"}},
    ],
)
def test_every_device_vmid_plugs_in_is_counted_or_known_to_be_off_the_root_bus(
    base: dict[str, Any], devices: dict[str, Any]
) -> None:
    base["spec"]["domain"]["devices"].update(devices)
    if "interfaces" in devices:
        base["spec"]["networks"] = [{"name": "default", "pod": {}}]
    plan_of(base)  # pci.root_bus_devices asserts it knows every driver


def test_ports_outside_publish_ports_are_located_problems(base: dict[str, Any]) -> None:
    data = two_interfaces(base)
    data["spec"]["domain"]["devices"]["interfaces"][0]["ports"].append({"port": 80})
    manifests, _ = load_text("vmi.yaml", dump(data).encode())
    plan, findings = build(manifests[0].vmi, TCG, Paths(ROOT), Accelerator.TCG)
    assert plan is None
    assert findings == [
        Finding(
            ("spec", "domain", "devices", "interfaces", 0, "ports", 2, "port"),
            "port 80 is outside the range of host ports vmid.yaml allows to forward "
            "(podNetwork.publishPorts: 1024-65535)",
        )
    ]
    wide = attrs.evolve(TCG, podNetwork=PodNetwork(publishPorts=PortRange(min=1)))
    assert build(manifests[0].vmi, wide, Paths(ROOT), Accelerator.TCG)[1] == []
