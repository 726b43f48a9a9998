"""KubeVirt's VM admitter tests, translated into VirtualMachine manifests, with the verdict a
cluster gives (as tests/test_kubevirt_admission.py does for the VMI admitter).

Each case is one `It`/`Entry` of pkg/virt-api/webhooks/validating-webhook/admitters/
vms-admitter_test.go (kubevirt/kubevirt at d923fdb815; its line in `source`), applied to a VM
whose template is the minimal VMI of tests/conftest.py (`running: false`) and run through the
whole pipeline as `vmid validate` runs it. The verdict is that of the cluster the test sets up:
a default one (GA and Beta feature gates, VM rollout strategy LiveUpdate), with the HostDisk
gate its volume cases enable. Where KubeVirt's message comes from its OpenAPI schema, or names
its own field path in the message, vmid's words are checked at the same field (`Sub`). The
volume cases call KubeVirt's validateVolumes alone; their manifests fill in what the schema
requires (a claimName, an emptyDisk's capacity) and name each volume.

Not ported (23 of 90: each `It` and `Entry`, an `It` of a table of architectures once
for each): the volume requests on a VM's status (20: `virtctl addvolume`'s
hotplug; vmid reads no VM status and hotplugs nothing), the instance type (1: a cluster
object, refused), and the two tests of feature gates the test registers for itself
(`test-deprecated`, `test-discontinued`).

Verdicts vmid gives differently on purpose are in DELIBERATE, with the reason (and in the
README).
"""

from __future__ import annotations

import base64
import copy
from typing import Any, Final

import pytest

from tests.conftest import problems_of
from tests.test_kubevirt_admission import ACCEPT, Case
from tests.test_validate import DELETE, Patch, Sub, apply_patch, assert_problems

VMS: Final = "pkg/virt-api/webhooks/validating-webhook/admitters/vms-admitter_test.go"
ADMITTER: Final = "pkg/virt-api/webhooks/validating-webhook/admitters/vms-admitter.go"
T: Final = "spec.template.spec"
DISKS: Final = f"{T}.domain.devices.disks"
VOLUME: Final = f"{T}.volumes[1]"  # the minimal VMI has its root volume at [0]
MEMORY: Final = f"{T}.domain.memory"
GUEST: Final = f"{MEMORY}.guest"


@pytest.fixture
def vm(base: dict[str, Any]) -> dict[str, Any]:
    """The VM of KubeVirt's tests: `running: false`, the minimal VMI as its template."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "testvm"},
        "spec": {"running": False, "template": {"spec": copy.deepcopy(base["spec"])}},
    }


def volume(**source: Any) -> Patch:
    return {VOLUME: {"name": "testvolume", **source}}


def cloud_init(**fields: Any) -> Patch:
    return {VOLUME: {"name": "cloudinit", "cloudInitNoCloud": fields}}


def b64(length: int) -> str:
    return base64.b64encode(b"a" * length).decode()


def data_length(field: str, length: int, encode: bool) -> Patch:
    """The cloud-init length entries: userdata, or networkdata beside `#config` userdata."""
    key = f"{field}Base64" if encode else field
    value = b64(length) if encode else "a" * length
    extra = {"userData": "#config"} if field == "networkData" else {}
    return cloud_init(**extra, **{key: value})


def too_long(field: str, encode: bool) -> list[tuple[str, str]]:
    key = f"{field}Base64" if encode else field
    what = field.lower()
    return [(f"{VOLUME}.cloudInitNoCloud.{key}", Sub(f"{what} exceeds 2048 byte limit"))]


def hot_memory(**memory: Any) -> Patch:
    """The Live update memory cases' VM: amd64, no resources, guest 1Gi of a 4Gi maxGuest."""
    return {
        f"{T}.architecture": "amd64",
        f"{T}.domain.resources": {},
        MEMORY: {"guest": "1Gi", "maxGuest": "4Gi", **memory},
    }


def strategy(value: str) -> Patch:
    return {"spec.running": DELETE, "spec.runStrategy": value}


def length_cases(field: str, line: int) -> list[Case]:
    return [
        Case(
            f"{field}-{'base64-' if encode else ''}{length}",
            f"{VMS}:{line + 3 * encode + index}",
            data_length(field, length, encode),
            too_long(field, encode) if length > 2048 else ACCEPT,
        )
        for encode in (False, True)
        for index, length in enumerate((10, 2048, 2049))
    ]


CASES: Final = [
    Case(
        "unrecognized-field",
        f"{VMS}:143",
        {f"{T}.not-a-domain": {"resources": {}}, f"{T}.domain": DELETE},
        [(f"{T}.not-a-domain", Sub("unknown field")), (f"{T}.domain", "Required value")],
    ),
    Case(
        "disk-without-volume",
        f"{VMS}:176",
        {f"{DISKS}[1]": {"name": "testdisk"}},
        [(f"{DISKS}[1].name", Sub('"testdisk" not found'))],
    ),
    Case(
        "being-deleted",
        f"{VMS}:223",
        {"metadata.deletionTimestamp": "2025-01-01T00:00:00Z"},
        ACCEPT,
    ),
    Case("volume-without-disk", f"{VMS}:241", volume(containerDisk={"image": "fake"}), ACCEPT),
    Case(
        "valid-spec",
        f"{VMS}:261",
        {f"{DISKS}[1]": {"name": "testvolume"}, **volume(containerDisk={"image": "fake"})},
        ACCEPT,
    ),
    Case("pvc", f"{VMS}:1008", volume(persistentVolumeClaim={"claimName": "fake"}), ACCEPT),
    Case("cloud-init", f"{VMS}:1009", cloud_init(userData="fake", networkData="fake"), ACCEPT),
    Case("container-disk", f"{VMS}:1010", volume(containerDisk={"image": "fake"}), ACCEPT),
    Case(
        "ephemeral",
        f"{VMS}:1011",
        volume(ephemeral={"persistentVolumeClaim": {"claimName": "fake"}}),
        ACCEPT,
    ),
    Case("empty-disk", f"{VMS}:1012", volume(emptyDisk={"capacity": "1Gi"}), ACCEPT),
    Case("data-volume", f"{VMS}:1013", volume(dataVolume={"name": "fake"}), ACCEPT),
    Case("data-volume-without-cdi", f"{VMS}:1019", volume(dataVolume={"name": "fake"}), ACCEPT),
    Case(
        "no-volume-source",
        f"{VMS}:1046",
        volume(),
        [(VOLUME, Sub("must have exactly one source type set"))],
    ),
    Case(
        "two-volume-sources",
        f"{VMS}:1057",
        volume(containerDisk={"image": "fake"}, persistentVolumeClaim={"claimName": "fake"}),
        [(VOLUME, Sub("must have exactly one source type set"))],
    ),
    Case(
        "duplicate-volume-names",
        f"{VMS}:1072",
        {
            **volume(containerDisk={"image": "fake"}),
            f"{T}.volumes[2]": volume(containerDisk={"image": "fake"})[VOLUME],
        },
        [(f"{T}.volumes[2].name", Sub("must not have the same Name."))],
    ),
    *length_cases("userData", 1116),
    *length_cases("networkData", 1148),
    Case(
        "user-data-bad-base64",
        f"{VMS}:1156",
        cloud_init(userDataBase64="#######garbage******"),
        [(f"{VOLUME}.cloudInitNoCloud.userDataBase64", Sub("is not a valid base64 value."))],
    ),
    Case(
        "network-data-bad-base64",
        f"{VMS}:1172",
        cloud_init(userData="fake", networkDataBase64="#######garbage******"),
        [(f"{VOLUME}.cloudInitNoCloud.networkDataBase64", Sub("is not a valid base64 value."))],
    ),
    Case(
        "host-disk-without-parameters",
        f"{VMS}:1228",
        volume(hostDisk={}),
        [
            (f"{VOLUME}.hostDisk.path", Sub("a path is required for hostDisk volume")),
            (f"{VOLUME}.hostDisk.type", Sub("allowed are 'Disk' or 'DiskOrCreate'")),
        ],
    ),
    Case(
        "host-disk-without-path",
        f"{VMS}:1242",
        volume(hostDisk={"type": "DiskOrCreate"}),
        [(f"{VOLUME}.hostDisk.path", Sub("a path is required for hostDisk volume"))],
    ),
    Case(
        "host-disk-bad-type",
        f"{VMS}:1257",
        volume(hostDisk={"path": "fakePath", "type": "fakeType"}),
        [(f"{VOLUME}.hostDisk.type", Sub('"fakeType"'))],
    ),
    Case(
        "sockets-above-max-amd64",
        f"{VMS}:1422",
        {f"{T}.architecture": "amd64", f"{T}.domain.cpu": {"maxSockets": 24, "sockets": 25}},
        [
            (
                f"{T}.domain.cpu.sockets",
                "Number of sockets in CPU topology is greater than the maximum sockets allowed",
            )
        ],
    ),
    Case(
        "hot-memory-without-guest",
        f"{VMS}:1503",
        {**hot_memory(), MEMORY: {"maxGuest": "4Gi"}},
        [
            (GUEST, "Guest memory must be configured when memory hotplug is enabled"),
            (f"{T}.domain.resources.requests.memory", Sub("no memory requested")),
        ],
    ),
    Case(
        "hot-memory-guest-above-max",
        f"{VMS}:1510",
        hot_memory(guest="4112Mi"),
        [(GUEST, "Guest memory is greater than the configured maxGuest memory")],
    ),
    Case(
        "hot-memory-max-unaligned",
        f"{VMS}:1520",
        hot_memory(maxGuest="2049Mi"),
        [(GUEST, "MaxGuest must be 2Mi aligned")],
    ),
    Case(
        "hot-memory-guest-unaligned",
        f"{VMS}:1528",
        hot_memory(guest="1025Mi"),
        [(GUEST, "Guest memory must be 2Mi aligned")],
    ),
    Case(
        "hot-memory-below-1gi",
        f"{VMS}:1552",
        hot_memory(guest="512Mi"),
        [(GUEST, "Memory hotplug is only available for VMs with at least 1Gi of guest memory")],
    ),
    *(
        Case(f"run-strategy-{value.lower()}", f"{VMS}:{line}", strategy(value), ACCEPT)
        for line, value in (
            (1646, "Halted"),
            (1647, "Manual"),
            (1648, "Always"),
            (1649, "RerunOnFailure"),
            (1650, "Once"),
        )
    ),
    Case(
        "run-strategy-wait-as-receiver-gate-disabled",
        f"{VMS}:1652",
        strategy("WaitAsReceiver"),
        [("spec.runStrategy", Sub("WaitAsReceiver"))],
    ),
    Case(
        "run-strategy-invalid",
        f"{VMS}:1653",
        strategy("invalid"),
        [("spec.runStrategy", "Invalid RunStrategy (invalid)")],
    ),
    # Read from the admitter's source (validateRunStrategy, ValidateVirtualMachineSpec).
    Case(
        "running-and-run-strategy",
        f"{ADMITTER}:233",
        {"spec.runStrategy": "Always"},
        [
            (
                "spec.running",
                "Running and RunStrategy are mutually exclusive. Note that Running is "
                "deprecated, please use RunStrategy instead",
            )
        ],
    ),
    Case(
        "missing-template",
        f"{ADMITTER}:212",
        {"spec.template": DELETE},
        [("spec.template", "missing virtual machine template.")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vmid_gives_the_clusters_verdict(vm: dict[str, Any], case: Case) -> None:
    assert_problems(problems_of(apply_patch(vm, case.patch)), case.verdict)


def not_supported(field: str, why: str) -> tuple[str, str]:
    return (field, Sub(f"is not supported by vmid: {why}"))


HUGEPAGES: Final = not_supported(f"{MEMORY}.hugepages", "hugepages are not implemented yet")
RELATIVE: Final = Sub("must be an absolute path without '..'")
NO_KUBERNETES: Final = "vmid has Secrets, ConfigMaps and service accounts refused as such"
GPUS: Final = {"virtualGPUOptions": {"display": {"enabled": True, "ramFB": {}}}}

Verdicts = list[tuple[str, str]]
#: Volumes a cluster takes from its API server: (name, line, patch, KubeVirt's, vmid's).
_REFUSED_AS_SUCH: Final[list[tuple[str, int, Patch, Verdicts, Verdicts]]] = [
    (
        "config-map",
        1015,
        volume(configMap={"name": "fake"}),
        ACCEPT,
        [not_supported(f"{VOLUME}.configMap", "ConfigMaps need Kubernetes")],
    ),
    (
        "secret",
        1016,
        volume(secret={"secretName": "fake"}),
        ACCEPT,
        [not_supported(f"{VOLUME}.secret", "Secrets need Kubernetes")],
    ),
    (
        "service-account",
        1017,
        volume(serviceAccount={"serviceAccountName": "fake"}),
        ACCEPT,
        [not_supported(f"{VOLUME}.serviceAccount", "service account tokens")],
    ),
    (
        "two-user-data-sources",
        1189,
        cloud_init(userData="fake", secretRef={"name": "fake"}),
        [(f"{VOLUME}.cloudInitNoCloud", Sub("userdata"))],
        [not_supported(f"{VOLUME}.cloudInitNoCloud.secretRef", "Secrets need")],
    ),
    (
        "two-network-data-sources",
        1208,
        cloud_init(userData="fake", networkData="fake", networkDataSecretRef={"name": "fake"}),
        [(f"{VOLUME}.cloudInitNoCloud", Sub("networkdata"))],
        [not_supported(f"{VOLUME}.cloudInitNoCloud.networkDataSecretRef", "Secrets")],
    ),
    (
        "config-map-without-name",
        1290,
        volume(configMap={}),
        [(f"{VOLUME}.configMap.name", Sub("required"))],
        [not_supported(f"{VOLUME}.configMap", "ConfigMaps need Kubernetes")],
    ),
    (
        "secret-without-name",
        1304,
        volume(secret={}),
        [(f"{VOLUME}.secret.secretName", Sub("required"))],
        [not_supported(f"{VOLUME}.secret", "Secrets need Kubernetes")],
    ),
    (
        "service-account-without-name",
        1318,
        volume(serviceAccount={}),
        [(f"{VOLUME}.serviceAccount.serviceAccountName", Sub("required"))],
        [not_supported(f"{VOLUME}.serviceAccount", "service account tokens")],
    ),
    (
        "two-service-accounts",
        1332,
        {
            VOLUME: {"name": "sa1", "serviceAccount": {"serviceAccountName": "test1"}},
            f"{T}.volumes[2]": {
                "name": "sa2",
                "serviceAccount": {"serviceAccountName": "test2"},
            },
        },
        [(f"{T}.volumes", Sub("serviceAccount"))],
        [
            not_supported(f"{VOLUME}.serviceAccount", "service account tokens"),
            not_supported(f"{T}.volumes[2].serviceAccount", "service account tokens"),
        ],
    ),
]

# KubeVirt test cases whose verdict vmid gives differently on purpose: (case, vmid's problems,
# why). The README lists them too.
DELIBERATE: Final = [
    (
        Case(
            "two-ramfb-displays",
            f"{VMS}:197",
            {
                f"{DISKS}[1]": {"name": "testdisk"},
                VOLUME: {"name": "testdisk", "containerDisk": {"image": "fake"}},
                f"{T}.domain.devices.gpus": [
                    {"name": "gpu0", "deviceName": "vendor.com/gpu0", **GPUS},
                    {"name": "gpu1", "deviceName": "vendor.com/gpu1", **GPUS},
                ],
            },
            [(f"{T}.GPUs", Sub("ramFB"))],
        ),
        [not_supported(f"{T}.domain.devices.gpus", "GPUs are assigned by Kubernetes")],
        "GPUs are refused as such (device plugins assign them)",
    ),
    (
        Case(
            "hugepages-without-memory-request",
            f"{VMS}:286",
            {
                f"{T}.domain.resources": {},
                MEMORY: {"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}},
            },
            ACCEPT,
        ),
        [HUGEPAGES],
        "hugepages are not implemented yet",
    ),
    (
        Case(
            "hugepages-without-guest",
            f"{VMS}:309",
            {MEMORY: {"hugepages": {"pageSize": "2Mi"}}},
            ACCEPT,
        ),
        [HUGEPAGES],
        "hugepages are not implemented yet",
    ),
    (
        Case(
            "host-disk-relative-path",
            f"{VMS}:1014",
            volume(hostDisk={"path": "fake", "type": "DiskOrCreate"}),
            ACCEPT,
        ),
        [(f"{VOLUME}.hostDisk.path", RELATIVE)],
        "a hostDisk path must be absolute: vmid resolves it beneath its root",
    ),
    (
        Case(
            "host-disk-capacity-with-disk-type",
            f"{VMS}:1273",
            volume(hostDisk={"path": "fakePath", "type": "Disk", "capacity": "1Gi"}),
            [(f"{VOLUME}.hostDisk.capacity", Sub("only with type equal to 'DiskOrCreate'"))],
        ),
        [
            (f"{VOLUME}.hostDisk.capacity", Sub("only with type equal to 'DiskOrCreate'")),
            (f"{VOLUME}.hostDisk.path", RELATIVE),
        ],
        "a hostDisk path must be absolute: vmid resolves it beneath its root",
    ),
    (
        Case(
            "data-volume-name-unset",
            f"{VMS}:1031",
            volume(dataVolume={"name": ""}),
            [(f"{VOLUME}.name", "DataVolume 'name' must be set")],
        ),
        [(f"{VOLUME}.dataVolume.name", "DataVolume 'name' must be set")],
        "KubeVirt names the volume's name (which is set); vmid the DataVolume's",
    ),
    *(
        (Case(name, f"{VMS}:{line}", patch, verdict), ours, NO_KUBERNETES)
        for name, line, patch, verdict, ours in _REFUSED_AS_SUCH
    ),
    (
        Case(
            "sockets-above-max-s390x",
            f"{VMS}:1422",
            {f"{T}.architecture": "s390x", f"{T}.domain.cpu": {"maxSockets": 24, "sockets": 25}},
            [(f"{T}.domain.cpu.sockets", Sub("greater than the maximum sockets allowed"))],
        ),
        [
            (f"{T}.domain.cpu.sockets", Sub("greater than the maximum sockets allowed")),
            not_supported(f"{T}.architecture", "unsupported architecture: s390x"),
        ],
        "vmid runs amd64 guests only",
    ),
    (
        Case(
            "hot-memory-not-amd64",
            f"{VMS}:1545",
            {**hot_memory(), f"{T}.architecture": "arm64"},
            [(GUEST, "Memory hotplug is only available for x86_64 VMs")],
        ),
        [
            (GUEST, "Memory hotplug is only available for x86_64 VMs"),
            not_supported(f"{T}.architecture", "unsupported architecture: arm64"),
        ],
        "vmid runs amd64 guests only",
    ),
    (
        Case(
            "hot-memory-realtime",
            f"{VMS}:1464",
            {
                **hot_memory(hugepages={"pageSize": "2Mi"}),
                f"{T}.domain.cpu": {
                    "dedicatedCpuPlacement": True,
                    "realtime": {},
                    "numa": {"guestMappingPassthrough": {}},
                },
            },
            [(GUEST, "Memory hotplug is not compatible with realtime VMs")],
        ),
        [
            HUGEPAGES,
            not_supported(f"{T}.domain.cpu.realtime", "realtime vCPU scheduling"),
            not_supported(f"{T}.domain.cpu.numa", "guest NUMA topology"),
        ],
        "realtime, guest NUMA and hugepages are refused as such (not implemented yet)",
    ),
    (
        Case(
            "hot-memory-launch-security",
            f"{VMS}:1480",
            {**hot_memory(), f"{T}.domain.launchSecurity": {}},
            [(GUEST, "Memory hotplug is not compatible with encrypted VMs")],
        ),
        [not_supported(f"{T}.domain.launchSecurity", "SEV, SNP and TDX")],
        "launchSecurity is refused as such (a confidential-computing host setup)",
    ),
    (
        Case(
            "hot-memory-guest-mapping-passthrough",
            f"{VMS}:1488",
            {
                **hot_memory(hugepages={"pageSize": "2Mi"}),
                f"{T}.domain.cpu": {
                    "dedicatedCpuPlacement": True,
                    "numa": {"guestMappingPassthrough": {}},
                },
            },
            [(GUEST, "Memory hotplug is not compatible with guest mapping passthrough")],
        ),
        [HUGEPAGES, not_supported(f"{T}.domain.cpu.numa", "guest NUMA topology")],
        "guest NUMA and hugepages are refused as such (not implemented yet)",
    ),
    (
        Case(
            "hot-memory-1gi-hugepages-unaligned",
            f"{VMS}:1536",
            hot_memory(guest="2G", maxGuest="16Gi", hugepages={"pageSize": "1Gi"}),
            [(GUEST, "Guest memory must be 1Gi aligned")],
        ),
        [HUGEPAGES],
        "hugepages are not implemented yet",
    ),
    (
        Case(
            "run-strategy-wait-as-receiver",
            f"{VMS}:1651",
            strategy("WaitAsReceiver"),
            ACCEPT,
        ),
        [("spec.runStrategy", Sub("it waits for a decentralized live migration"))],
        "WaitAsReceiver waits for a live migration from another cluster",
    ),
    (
        Case(
            "run-strategy-unset",
            f"{ADMITTER}:241",
            {"spec.running": DELETE},
            [("spec.running", "RunStrategy must be specified")],
        ),
        [("spec.runStrategy", "RunStrategy must be specified")],
        "vmid names the field to write, not the deprecated one",
    ),
]


@pytest.mark.parametrize(
    ("case", "ours"), [d[:2] for d in DELIBERATE], ids=[d[0].name for d in DELIBERATE]
)
def test_deliberate_differences(
    vm: dict[str, Any], case: Case, ours: list[tuple[str, str]]
) -> None:
    assert case.verdict != ours
    assert_problems(problems_of(apply_patch(vm, case.patch)), ours)


def test_every_ported_case_is_counted() -> None:
    """90 cases in vms-admitter_test.go: 67 ported here (agreeing or deliberate), 23 not."""
    ported = [c for c in CASES if c.source.startswith(VMS)] + [
        d[0] for d in DELIBERATE if d[0].source.startswith(VMS)
    ]
    assert len(ported) == 67
