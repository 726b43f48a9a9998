"""KubeVirt's own admission tests, translated into manifests, with the verdict a cluster gives.

Each case is one `It`/`Entry` of KubeVirt's unit tests (kubevirt/kubevirt at d923fdb815,
v1.9.0-beta.0-1264; the file and line are in the case's `source`), applied to the minimal VMI of
tests/conftest.py and run through the whole pipeline as `vmid validate` runs it. The verdict is
the one a default cluster gives: the feature gates a release ships on (GA and Beta), KubeVirt's
mutating webhook applied first (as vmid's defaults are). A cluster that accepts gets `[]`;
one that refuses gets the problems vmid reports, at the field of the manifest KubeVirt's
message is about (KubeVirt's own paths are sometimes not manifest paths: `spec.podAffinity`,
`fake.Sound`, `searchDomains`; vmid names the field a user can find).

To re-check a new KubeVirt release: re-read the test files named below and update the table.
Verdicts vmid gives differently on purpose are in DELIBERATE, with the reason (and in the
README).
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import pytest

from tests.conftest import problems_of
from tests.test_validate import DEVICES, DISKS, IFACES, Patch, Sub, apply_patch, assert_problems

ADMITTER: Final = "pkg/virt-api/webhooks/validating-webhook/admitters/vmi-create-admitter_test.go"
NETWORK: Final = "pkg/network/admitter"
TOPOLOGY_MSG: Final = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
SUBDOMAIN_MSG: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
ACCEPT: Final[list[tuple[str, str]]] = []


@attrs.frozen
class Case:
    """One KubeVirt test case: where it is, the manifest change, and the cluster's verdict."""

    name: str
    source: str
    patch: Patch
    verdict: list[tuple[str, str]]


def dns(policy: str | None, config: dict[str, Any] | None) -> Patch:
    patch: Patch = {}
    if policy is not None:
        patch["spec.dnsPolicy"] = policy
    if config is not None:
        patch["spec.dnsConfig"] = config
    return patch


NS3: Final = ["1.2.3.4", "5.6.7.8", "9.8.0.1"]
DNS_CASES: Final = [
    Case("ClusterFirstWithHostNet", f"{ADMITTER}:1512", dns("ClusterFirstWithHostNet", {}), ACCEPT),
    Case("ClusterFirst", f"{ADMITTER}:1513", dns("ClusterFirst", {}), ACCEPT),
    Case("Default", f"{ADMITTER}:1514", dns("Default", {}), ACCEPT),
    Case(
        "None-one-nameserver", f"{ADMITTER}:1515", dns("None", {"nameservers": ["1.2.3.4"]}), ACCEPT
    ),
    Case(
        "None-max-nameservers-and-searches",
        f"{ADMITTER}:1516",
        dns("None", {"nameservers": NS3, "searches": ["1", "2", "3", "4", "5", "6"]}),
        ACCEPT,
    ),
    Case(
        "None-max-search-length",
        f"{ADMITTER}:1520",
        dns("None", {"nameservers": NS3, "searches": ["a" * 128, "b" * 127]}),
        ACCEPT,
    ),
    Case("empty-policy", f"{ADMITTER}:1524", dns(None, None), ACCEPT),
    Case(
        "FakePolicy",
        f"{ADMITTER}:1538",
        dns("FakePolicy", {}),
        [
            (
                "spec.dnsPolicy",
                "DNSPolicy: FakePolicy is not supported, valid values: "
                "[ClusterFirstWithHostNet ClusterFirst Default None ]",
            )
        ],
    ),
    Case(
        "None-no-nameserver",
        f"{ADMITTER}:1540",
        dns("None", {}),
        [
            (
                "spec.dnsConfig.nameservers",
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            )
        ],
    ),
    Case(
        "None-too-many-nameservers",
        f"{ADMITTER}:1542",
        dns("None", {"nameservers": [*NS3, "2.3.4.5"]}),
        [
            (
                "spec.dnsConfig.nameservers",
                "must not have more than 3 nameservers: [1.2.3.4 5.6.7.8 9.8.0.1 2.3.4.5]",
            )
        ],
    ),
    Case(
        "None-non-ip-nameserver",
        f"{ADMITTER}:1545",
        dns("None", {"nameservers": ["1.2.3.c"]}),
        [("spec.dnsConfig.nameservers[0]", "must be valid IP address: 1.2.3.c")],
    ),
    Case(
        "None-too-many-searches",
        f"{ADMITTER}:1548",
        dns("None", {"nameservers": ["1.2.3.4"], "searches": list("1234567")}),
        [("spec.dnsConfig.searches", "must not have more than 6 search paths")],
    ),
    Case(
        "None-search-list-too-long",
        f"{ADMITTER}:1552",
        dns("None", {"nameservers": ["1.2.3.4"], "searches": ["a" * 128, "b" * 128]}),
        [
            (
                "spec.dnsConfig.searches",
                "must not have more than 256 characters (including spaces) in the search list",
            )
        ],
    ),
    Case(
        "None-search-not-subdomain",
        f"{ADMITTER}:1556",
        dns("None", {"nameservers": ["1.2.3.4"], "searches": ["a" * 254]}),
        [("spec.dnsConfig.searches[0]", "must be no more than 253 characters")],
    ),
    Case(
        "None-option-without-name",
        f"{ADMITTER}:1560",
        dns("None", {"nameservers": ["1.2.3.4"], "options": [{"value": "value"}]}),
        [("spec.dnsConfig.options[0].name", "Option.Name must not be empty")],
    ),
    Case(
        "None-without-dnsConfig",
        f"{ADMITTER}:1566",
        dns("None", None),
        [("spec.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None")],
    ),
]

POD_AFFINITY: Final = "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
ANTI_AFFINITY: Final = (
    "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
)
NODE_TERM: Final = (
    "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
)


def pod_term(values: list[str] | None, topology: str, operator: str = "In") -> dict[str, Any]:
    expr: dict[str, Any] = {"key": "key1", "operator": operator}
    if values is not None:
        expr["values"] = values
    return {"labelSelector": {"matchExpressions": [expr]}, "topologyKey": topology}


def required(kind: str, term: dict[str, Any]) -> Patch:
    return {f"spec.affinity.{kind}": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def empty_topology_key(term: str) -> list[tuple[str, str]]:
    return [
        (f"{term}.topologyKey", "Required value: can not be empty"),
        (f"{term}.topologyKey", 'Invalid value: "": name part must be non-empty'),
        (f"{term}.topologyKey", f'Invalid value: "": {TOPOLOGY_MSG}'),
    ]


def values_required(term: str) -> tuple[str, str]:
    return (
        f"{term}.labelSelector.matchExpressions[0].values",
        "Required value: must be specified when `operator` is 'In' or 'NotIn'",
    )


def node_fields(field: dict[str, Any]) -> Patch:
    return {
        "spec.affinity.nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [field]}]
            }
        }
    }


AFFINITY_CASES: Final = [
    Case("nil", f"{ADMITTER}:3081", {}, ACCEPT),
    Case("pod-empty", f"{ADMITTER}:3091", {"spec.affinity.podAffinity": {}}, ACCEPT),
    Case(
        "pod-empty-topology-key",
        f"{ADMITTER}:3104",
        required("podAffinity", pod_term(None, "", "Exists")),
        empty_topology_key(POD_AFFINITY),
    ),
    Case(
        "pod-empty-value-and-topology-key",
        f"{ADMITTER}:3135",
        required("podAffinity", pod_term([""], "")),
        empty_topology_key(POD_AFFINITY),
    ),
    Case(
        "pod-no-values-bad-topology-key",
        f"{ADMITTER}:3167",
        required("podAffinity", pod_term(None, "hostname=host1")),
        [
            values_required(POD_AFFINITY),
            (f"{POD_AFFINITY}.topologyKey", f'Invalid value: "hostname=host1": {TOPOLOGY_MSG}'),
        ],
    ),
    Case(
        "pod-no-values-empty-topology-key",
        f"{ADMITTER}:3197",
        required("podAffinity", pod_term(None, "")),
        [values_required(POD_AFFINITY), *empty_topology_key(POD_AFFINITY)],
    ),
    Case(
        "pod-weight-255",
        f"{ADMITTER}:3231",
        {
            "spec.affinity.podAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 255, "podAffinityTerm": {"topologyKey": "test"}}
                ]
            }
        },
        [
            (
                "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
                ".weight",
                "Invalid value: 255: must be in the range 1-100",
            )
        ],
    ),
    Case("anti-empty", f"{ADMITTER}:3254", {"spec.affinity.podAntiAffinity": {}}, ACCEPT),
    Case(
        "anti-empty-topology-key",
        f"{ADMITTER}:3267",
        required("podAntiAffinity", pod_term([""], "")),
        empty_topology_key(ANTI_AFFINITY),
    ),
    Case(
        "anti-preferred-proper",
        f"{ADMITTER}:3299",
        {
            "spec.affinity.podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 86, "podAffinityTerm": pod_term(["a"], "test")}
                ]
            }
        },
        ACCEPT,
    ),
    Case(
        "anti-no-values-bad-topology-key",
        f"{ADMITTER}:3327",
        required("podAntiAffinity", pod_term(None, "hostname=host1")),
        [
            values_required(ANTI_AFFINITY),
            (f"{ANTI_AFFINITY}.topologyKey", f'Invalid value: "hostname=host1": {TOPOLOGY_MSG}'),
        ],
    ),
    Case(
        "anti-no-values-empty-topology-key",
        f"{ADMITTER}:3357",
        required("podAntiAffinity", pod_term(None, "")),
        [values_required(ANTI_AFFINITY), *empty_topology_key(ANTI_AFFINITY)],
    ),
    Case("node-empty", f"{ADMITTER}:3391", {"spec.affinity.nodeAffinity": {}}, ACCEPT),
    Case(
        "node-no-selector-terms",
        f"{ADMITTER}:3404",
        {
            "spec.affinity.nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": None}
            }
        },
        [
            (
                "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                ".nodeSelectorTerms",
                "Required value: must have at least one node selector term",
            )
        ],
    ),
    Case(
        "node-empty-term",
        f"{ADMITTER}:3422",
        {
            "spec.affinity.nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}
            }
        },
        ACCEPT,
    ),
    Case(
        "node-match-expressions",
        f"{ADMITTER}:3441",
        {
            "spec.affinity.nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "key1", "operator": "Exists"}]}
                    ]
                }
            }
        },
        ACCEPT,
    ),
    Case(
        "node-field-key-invalid",
        f"{ADMITTER}:3465",
        node_fields({"key": "key", "operator": "In", "values": ["value1"]}),
        [
            (
                f"{NODE_TERM}.matchFields[0].key",
                'Invalid value: "key": not a valid field selector key',
            )
        ],
    ),
    Case(
        "node-field-empty-value",
        f"{ADMITTER}:3491",
        node_fields({"key": "metadata.name", "operator": "In", "values": [""]}),
        [(f"{NODE_TERM}.matchFields[0].values[0]", f'Invalid value: "": {SUBDOMAIN_MSG}')],
    ),
    Case(
        "node-preferred-proper",
        f"{ADMITTER}:3518",
        {
            "spec.affinity.nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 20,
                        "preference": {"matchExpressions": [{"key": "key1", "operator": "Exists"}]},
                    }
                ]
            }
        },
        ACCEPT,
    ),
]


def spread(**fields: Any) -> Patch:
    constraint = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        **fields,
    }
    return {"spec.topologySpreadConstraints": [constraint]}


SPREAD: Final = "spec.topologySpreadConstraints[0]"
TOPOLOGY_CASES: Final = [
    Case("nil", f"{ADMITTER}:3553", {}, ACCEPT),
    Case("no-label-selector", f"{ADMITTER}:3562", spread(), ACCEPT),
    Case(
        "valid-label-selector",
        f"{ADMITTER}:3579",
        spread(
            labelSelector={
                "matchExpressions": [
                    {"key": "kubernetes.io/zone", "operator": "In", "values": ["zone1"]}
                ]
            }
        ),
        ACCEPT,
    ),
    Case(
        "empty-topology-key",
        f"{ADMITTER}:3604",
        spread(topologyKey=""),
        [(f"{SPREAD}.topologyKey", "Required value: can not be empty")],
    ),
    Case(
        "bad-topology-key",
        f"{ADMITTER}:3624",
        spread(topologyKey="hostname=host1"),
        [(f"{SPREAD}.topologyKey", f'Invalid value: "hostname=host1": {TOPOLOGY_MSG}')],
    ),
    Case(
        "max-skew-negative",
        f"{ADMITTER}:3644",
        spread(maxSkew=-1),
        [(f"{SPREAD}.maxSkew", "Invalid value: -1: must be greater than zero")],
    ),
    Case(
        "selector-without-values",
        f"{ADMITTER}:3664",
        spread(
            labelSelector={
                "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In"}]
            }
        ),
        [values_required(SPREAD)],
    ),
]

SA_MSG: Final = f"spec.serviceAccountName is not a valid service account name: {SUBDOMAIN_MSG}"
HYPERV: Final = "spec.domain.features.hyperv"


def hyperv(**states: bool) -> Patch:
    return {"spec.domain.features.hyperv": {k: {"enabled": v} for k, v in states.items()}}


def requires(feature: str, needed: str) -> tuple[str, str]:
    return (
        f"{HYPERV}.{feature}",
        f"'{HYPERV}.{feature}' requires '{HYPERV}.{needed}', which was disabled.",
    )


VMX_REQUIRE: Final = {"spec.domain.cpu.features": [{"name": "vmx", "policy": "require"}]}
VMX_FORBID: Final = {"spec.domain.cpu.features": [{"name": "vmx", "policy": "forbid"}]}
HYPERV_MODE_MSG: Final = (
    "Cannot explicitly set hyperV features if HypervPassthrough is being used. Please use either "
    "HyperV or HypervPassthrough."
)
VIDEO_OFF_MSG: Final = (
    "Video configuration is not allowed when autoattachGraphicsDevice is set to false"
)
IOTHREADS_MSG: Final = (
    "the number of iothreads needs to be set and positive for the dedicated policy"
)

SPEC_CASES: Final = [
    Case("service-account-valid", f"{ADMITTER}:567", {"spec.serviceAccountName": "my-sa"}, ACCEPT),
    Case(
        "service-account-invalid",
        f"{ADMITTER}:574",
        {"spec.serviceAccountName": "bad+name"},
        [("spec.serviceAccountName", SA_MSG)],
    ),
    # The DeclarativeHotplugVolumes gate is Beta: an empty CD-ROM is admitted.
    Case(
        "cdrom-without-volume",
        f"{ADMITTER}:620",
        {f"{DISKS}[1]": {"name": "testdisk", "cdrom": {"bus": "sata"}}},
        ACCEPT,
    ),
    Case(
        "disk-without-volume",
        f"{ADMITTER}:610",
        {f"{DISKS}[1]": {"name": "testdisk"}},
        [
            (
                f"{DISKS}[1].name",
                'Name "testdisk" not found: no volume in spec.volumes has this name',
            )
        ],
    ),
    Case(
        "sound-model-unset",
        f"{ADMITTER}:655",
        {f"{DEVICES}.sound": {"name": "a", "model": ""}},
        ACCEPT,
    ),
    Case(
        "sound-model-ich9",
        f"{ADMITTER}:655",
        {f"{DEVICES}.sound": {"name": "a", "model": "ich9"}},
        ACCEPT,
    ),
    Case(
        "sound-model-ac97",
        f"{ADMITTER}:655",
        {f"{DEVICES}.sound": {"name": "a", "model": "ac97"}},
        ACCEPT,
    ),
    Case(
        "sound-model-unsupported",
        f"{ADMITTER}:668",
        {f"{DEVICES}.sound": {"name": "a", "model": "aNotSupportedDevice"}},
        [(f"{DEVICES}.sound.model", Sub('Unsupported value: "aNotSupportedDevice"'))],
    ),
    Case(
        "sound-without-name",
        f"{ADMITTER}:680",
        {f"{DEVICES}.sound": {"model": "ac97"}},
        [(f"{DEVICES}.sound.name", "Sound device must have a name")],
    ),
    Case(
        "guest-below-request",
        f"{ADMITTER}:967",
        {"spec.domain.resources.requests.memory": "64Mi", "spec.domain.memory": {"guest": "1Mi"}},
        ACCEPT,
    ),
    Case(
        "guest-above-limit",
        f"{ADMITTER}:1000",
        {
            # KubeVirt's minimal VMI requests 8192Ki.
            "spec.domain.resources": {
                "requests": {"memory": "8192Ki"},
                "limits": {"memory": "64Mi"},
            },
            "spec.domain.memory": {"guest": "128Mi"},
        },
        ACCEPT,
    ),
    Case(
        "guest-between-request-and-limit",
        f"{ADMITTER}:1012",
        {
            "spec.domain.resources": {
                "requests": {"memory": "64Mi"},
                "limits": {"memory": "128Mi"},
            },
            "spec.domain.memory": {"guest": "100Mi"},
        },
        ACCEPT,
    ),
    Case(
        "guest-without-limit",
        f"{ADMITTER}:1027",
        {"spec.domain.resources.requests.memory": "64Mi", "spec.domain.memory": {"guest": "100Mi"}},
        ACCEPT,
    ),
    Case("iothreads-auto", f"{ADMITTER}:1191", {"spec.domain.ioThreadsPolicy": "auto"}, ACCEPT),
    Case(
        "iothreads-bad",
        f"{ADMITTER}:1200",
        {"spec.domain.ioThreadsPolicy": "bad"},
        [("spec.domain.ioThreadsPolicy", Sub('Unsupported value: "bad"'))],
    ),
    Case(
        "iothreads-pool-zero",
        f"{ADMITTER}:1210",
        {
            "spec.domain.ioThreadsPolicy": "supplementalPool",
            "spec.domain.ioThreads": {"supplementalPoolThreadCount": 0},
        },
        [("spec.domain.ioThreads.supplementalPoolThreadCount", IOTHREADS_MSG)],
    ),
    Case(
        "iothreads-pool-unset",
        f"{ADMITTER}:1227",
        {"spec.domain.ioThreadsPolicy": "supplementalPool"},
        [("spec.domain.ioThreadsPolicy", IOTHREADS_MSG)],
    ),
    Case(
        "reserved-overhead",
        f"{ADMITTER}:1731",
        {"spec.domain.memory": {"guest": "128Mi", "reservedOverhead": {}}},
        [
            (
                "spec.domain.memory.reservedOverhead",
                "Reserved overhead memlock feature gate is not enabled in kubevirt-config",
            )
        ],
    ),
    Case(
        "sockets-above-max-sockets",
        f"{ADMITTER}:3762",
        {"spec.domain.cpu": {"maxSockets": 8, "sockets": 16}},
        [
            (
                "spec.domain.cpu.sockets",
                "Number of sockets in CPU topology is greater than the maximum sockets allowed",
            )
        ],
    ),
    Case(
        "hyperv-and-passthrough",
        f"{ADMITTER}:3813",
        {"spec.domain.features": {"hyperv": {}, "hypervPassthrough": {}}},
        [(HYPERV, HYPERV_MODE_MSG)],
    ),
    Case(
        "passthrough-only",
        f"{ADMITTER}:3814",
        {"spec.domain.features": {"hypervPassthrough": {}}},
        ACCEPT,
    ),
    Case("hyperv-only", f"{ADMITTER}:3815", {"spec.domain.features": {"hyperv": {}}}, ACCEPT),
    Case("no-hyperv", f"{ADMITTER}:3816", {"spec.domain.features": {}}, ACCEPT),
    # KubeVirt's amd64 check (pkg/virt-api/webhooks/amd64.go) with the type left out: no
    # default fills it in, and "" is not a video model.
    Case(
        "video-without-type",
        "pkg/virt-api/webhooks/amd64.go:43",
        {f"{DEVICES}.video": {}},
        [(f"{DEVICES}.video.type", "video model '' is not supported on amd64 architecture")],
    ),
    Case("video", f"{ADMITTER}:3925", {f"{DEVICES}.video": {"type": "virtio"}}, ACCEPT),
    Case(
        "video-without-graphics",
        f"{ADMITTER}:3930",
        {f"{DEVICES}.video": {"type": "virtio"}, f"{DEVICES}.autoattachGraphicsDevice": False},
        [(f"{DEVICES}.video", VIDEO_OFF_MSG)],
    ),
    Case(
        "video-graphics-unset", f"{ADMITTER}:3939", {f"{DEVICES}.video": {"type": "virtio"}}, ACCEPT
    ),
    *(
        Case(f"video-{model}", f"{ADMITTER}:3951", {f"{DEVICES}.video": {"type": model}}, ACCEPT)
        for model in ("vga", "cirrus", "virtio", "ramfb", "bochs")
    ),
    *(
        Case(
            f"video-{model}",
            f"{ADMITTER}:3970",
            {f"{DEVICES}.video": {"type": model}},
            [(f"{DEVICES}.video.type", Sub(f'Unsupported value: "{model}"'))],
        )
        for model in ("qxl", "vmvga", "xenfb", "none", "invalidmodel")
    ),
    # The Hyper-V cases call the validator alone; a cluster runs the mutator first, which enables
    # a requirement left unset (pkg/defaults/hyperv.go), and that is the verdict given here.
    Case("hyperv-none", f"{ADMITTER}:4279", {}, ACCEPT),
    Case("hyperv-empty", f"{ADMITTER}:4287", {"spec.domain.features.hyperv": {}}, ACCEPT),
    Case(
        "hyperv-without-deps",
        f"{ADMITTER}:4297",
        hyperv(relaxed=True, runtime=True, reset=True),
        ACCEPT,
    ),
    # The mutator enables vapic and adds vmx: admitted.
    Case("hyperv-evmcs-alone", f"{ADMITTER}:4317", hyperv(evmcs=True), ACCEPT),
    Case("hyperv-evmcs-vmx", f"{ADMITTER}:4335", {**hyperv(evmcs=True), **VMX_REQUIRE}, ACCEPT),
    Case("hyperv-evmcs-vapic", f"{ADMITTER}:4359", hyperv(evmcs=True, vapic=True), ACCEPT),
    # The mutator sets vmx to require.
    Case(
        "hyperv-evmcs-vmx-forbid",
        f"{ADMITTER}:4378",
        {**hyperv(evmcs=True, vapic=True), **VMX_FORBID},
        ACCEPT,
    ),
    Case(
        "hyperv-evmcs-vmx-require",
        f"{ADMITTER}:4405",
        {**hyperv(evmcs=True, vapic=True), **VMX_REQUIRE},
        ACCEPT,
    ),
    # The mutator enables vpindex for synic.
    Case(
        "hyperv-synic-without-vpindex",
        f"{ADMITTER}:4430",
        {**hyperv(relaxed=True, synic=True), f"{HYPERV}.synictimer": {"enabled": True}},
        ACCEPT,
    ),
    Case(
        "hyperv-correct-deps",
        f"{ADMITTER}:4450",
        {**hyperv(relaxed=True, vpindex=True, synic=True), f"{HYPERV}.synictimer": {}},
        ACCEPT,
    ),
    # What the mutator cannot mend: a requirement the user disabled (hyperv.go's
    # IsRequirementFulfilled), and EVMCS with vapic disabled (the mutator stops there).
    Case(
        "hyperv-synic-vpindex-disabled",
        "pkg/virt-api/webhooks/hyperv.go:96",
        hyperv(synic=True, vpindex=False),
        [requires("synic", "vpindex")],
    ),
    Case(
        "hyperv-evmcs-vapic-disabled",
        "pkg/virt-api/webhooks/hyperv.go:96",
        hyperv(evmcs=True, vapic=False),
        [
            requires("evmcs", "vapic"),
            ("spec.domain.cpu.features", "vmx cpu feature is required when evmcs is set"),
        ],
    ),
]


def iface(**fields: Any) -> dict[str, Any]:
    return {"name": "foo", **fields}


def foo_network(kind: dict[str, Any], interface: dict[str, Any]) -> Patch:
    return {IFACES: [interface], "spec.networks": [{"name": "foo", **kind}]}


MULTUS: Final = {"multus": {"networkName": "net"}}
POD: Final[dict[str, Any]] = {"pod": {}}


def ports(*items: dict[str, Any]) -> Patch:
    return foo_network(POD, iface(masquerade={}, ports=list(items)))


PORT: Final = f"{IFACES}[0].ports"
NETWORK_CASES: Final = [
    *(
        Case(
            f"state-{state or 'empty'}",
            f"{NETWORK}/admit_test.go:53",
            foo_network(MULTUS, iface(bridge={}, state=state)),
            ACCEPT,
        )
        for state in ("", "absent", "up", "down")
    ),
    Case(
        "state-invalid",
        f"{NETWORK}/admit_test.go:59",
        foo_network(POD, iface(masquerade={}, state="foo")),
        [(f"{IFACES}[0].state", Sub('Unsupported value: "foo"'))],
    ),
    Case(
        "state-absent-on-pod-network",
        f"{NETWORK}/admit_test.go:105",
        foo_network(POD, iface(bridge={}, state="absent")),
        [
            (
                f"{IFACES}[0].state",
                '"foo" interface\'s state "absent" is not supported on default networks',
            )
        ],
    ),
    Case(
        "port-without-number",
        f"{NETWORK}/netiface_test.go:249",
        ports({"name": "test"}),
        [(f"{PORT}[0]", "Port field is mandatory.")],
    ),
    Case(
        "port-bad-protocol",
        f"{NETWORK}/netiface_test.go:258",
        ports({"protocol": "bad", "port": 80}),
        [(f"{PORT}[0].protocol", Sub('Unsupported value: "bad"'))],
    ),
    Case(
        "port-out-of-range",
        f"{NETWORK}/netiface_test.go:267",
        ports({"port": 80000}),
        [(f"{PORT}[0].port", "Port field must be in range 0 < x < 65536.")],
    ),
    Case(
        "port-names-duplicate",
        f"{NETWORK}/netiface_test.go:276",
        ports(
            {"name": "testport", "port": 80}, {"name": "testport", "protocol": "UDP", "port": 80}
        ),
        [(f"{PORT}[1].name", "Duplicate name of the port: testport")],
    ),
    Case(
        "port-name-invalid",
        f"{NETWORK}/netiface_test.go:285",
        ports({"name": "Test", "port": 80}),
        [(f"{PORT}[0].name", "Invalid name of the port: Test")],
    ),
    Case("port-minimal", f"{NETWORK}/netiface_test.go:307", ports({"port": 80}), ACCEPT),
    Case(
        "ports-same-number-protocol-and-not",
        f"{NETWORK}/netiface_test.go:308",
        ports({"port": 80}, {"protocol": "UDP", "port": 80}),
        ACCEPT,
    ),
    Case(
        "ports-same-number-protocols",
        f"{NETWORK}/netiface_test.go:310",
        ports({"port": 80}, {"protocol": "UDP", "port": 80}, {"protocol": "TCP", "port": 80}),
        ACCEPT,
    ),
]


def requests(**values: str) -> Patch:
    return {f"spec.domain.resources.requests.{k}": v for k, v in values.items()}


def limits(**values: str) -> Patch:
    return {f"spec.domain.resources.limits.{k}": v for k, v in values.items()}


def container_disk_path(path: str) -> Patch:
    return {"spec.volumes[0].containerDisk.path": path}


CD_PATH: Final = "spec.volumes[0].containerDisk.path"
CD_RELATIVE: Final = (
    "spec.volumes.containerDisk must be an absolute path to a file without relative components"
)
INPUT: Final = f"{DEVICES}.inputs[0]"
EFI: Final[Patch] = {"spec.domain.firmware": {"bootloader": {"efi": {}}}}
SMM: Final[Patch] = {"spec.domain.features": {"smm": {"enabled": True}}}
MORE_CASES: Final = [
    *(
        Case(
            f"container-disk-path-{i}",
            f"{ADMITTER}:{202 + i}",
            container_disk_path(path),
            [(CD_PATH, message)],
        )
        for i, (path, message) in enumerate(
            [
                ("a/b/c", CD_RELATIVE),
                ("/a/b/c/../d", CD_RELATIVE),
                ("../test", CD_RELATIVE),
                ("/", "spec.volumes.containerDisk must not point to root"),
            ]
        )
    ),
    Case("container-disk-path-absolute", f"{ADMITTER}:218", container_disk_path("/a/b/c"), ACCEPT),
    Case(
        "container-disk-path-trailing-slash",
        f"{ADMITTER}:219",
        container_disk_path("/a/b/c/"),
        ACCEPT,
    ),
    *(
        Case(f"eviction-{strategy}", f"{ADMITTER}:232", {"spec.evictionStrategy": strategy}, ACCEPT)
        for strategy in ("LiveMigrate", "None", "External", "LiveMigrateIfPossible")
    ),
    Case("eviction-unset", f"{ADMITTER}:244", {}, ACCEPT),
    Case(
        "eviction-unknown",
        f"{ADMITTER}:249",
        {"spec.evictionStrategy": "fantasy"},
        [("spec.evictionStrategy", Sub('Unsupported value: "fantasy"'))],
    ),
    Case("machine-q35", f"{ADMITTER}:513", {"spec.domain.machine": {"type": "q35"}}, ACCEPT),
    *(
        Case(
            f"machine-{machine}",
            f"{ADMITTER}:528",
            {"spec.domain.machine": {"type": machine}},
            [
                (
                    "spec.domain.machine.type",
                    Sub(f"spec.domain.machine.type is not supported: {machine}"),
                )
            ],
        )
        for machine in ("test", "test-q35", "test-pc-q35")
    ),
    Case("hostname-valid", f"{ADMITTER}:535", {"spec.hostname": "test"}, ACCEPT),
    Case(
        "hostname-invalid",
        f"{ADMITTER}:542",
        {"spec.hostname": "test+bad"},
        [("spec.hostname", Sub("does not conform to the kubernetes DNS_LABEL rules : "))],
    ),
    Case("subdomain-valid", f"{ADMITTER}:552", {"spec.subdomain": "testsubdomain"}, ACCEPT),
    Case(
        "subdomain-invalid",
        f"{ADMITTER}:559",
        {"spec.subdomain": "bad+domain"},
        [("spec.subdomain", Sub("does not conform to the kubernetes DNS_SUBDOMAIN rules"))],
    ),
    Case(
        "input-virtio",
        f"{ADMITTER}:750",
        {f"{DEVICES}.inputs": [{"type": "tablet", "name": "tablet0", "bus": "virtio"}]},
        ACCEPT,
    ),
    Case(
        "input-usb",
        f"{ADMITTER}:756",
        {f"{DEVICES}.inputs": [{"type": "tablet", "name": "tablet0", "bus": "usb"}]},
        ACCEPT,
    ),
    Case(
        "input-no-bus",
        f"{ADMITTER}:762",
        {f"{DEVICES}.inputs": [{"type": "tablet", "name": "tablet0"}]},
        ACCEPT,
    ),
    Case(
        "input-ps2",
        f"{ADMITTER}:767",
        {f"{DEVICES}.inputs": [{"type": "tablet", "name": "tablet0", "bus": "ps2"}]},
        [(f"{INPUT}.bus", Sub('Unsupported value: "ps2"'))],
    ),
    *(
        Case(
            f"input-keyboard-{bus}",
            f"{ADMITTER}:{line}",
            {f"{DEVICES}.inputs": [{"type": "keyboard", "name": "tablet0", "bus": bus}]},
            [(f"{INPUT}.type", Sub('Unsupported value: "keyboard"'))],
        )
        for line, bus in ((773, "virtio"), (779, "usb"))
    ),
    Case(
        "input-keyboard-ps2",
        f"{ADMITTER}:785",
        {f"{DEVICES}.inputs": [{"type": "keyboard", "name": "tablet0", "bus": "ps2"}]},
        [
            (f"{INPUT}.bus", Sub('Unsupported value: "ps2"')),
            (f"{INPUT}.type", Sub('Unsupported value: "keyboard"')),
        ],
    ),
    Case(
        "cpu-request-negative",
        f"{ADMITTER}:793",
        requests(cpu="-200m"),
        [("spec.domain.resources.requests.cpu", "'-200m': must be greater than or equal to 0.")],
    ),
    Case(
        "cpu-limit-negative",
        f"{ADMITTER}:805",
        limits(cpu="-3"),
        [
            ("spec.domain.resources.limits.cpu", "'-3': must be greater than or equal to 0."),
            # The limit is copied into the request (KubeVirt's defaults too).
            ("spec.domain.resources.requests.cpu", Sub("'-3'")),
        ],
    ),
    Case(
        "cpu-request-above-limit",
        f"{ADMITTER}:817",
        {**requests(cpu="2500m"), **limits(cpu="500m")},
        [
            (
                "spec.domain.resources.requests.cpu",
                Sub("is greater than spec.domain.resources.limits.cpu"),
            )
        ],
    ),
    Case(
        "cpu-request-below-limit",
        f"{ADMITTER}:832",
        {**requests(cpu="1500m"), **limits(cpu="2")},
        ACCEPT,
    ),
    Case(
        "memory-request-negative",
        f"{ADMITTER}:850",
        requests(memory="-64Mi"),
        [
            (
                "spec.domain.resources.requests.memory",
                Sub("'-64Mi': must be greater than or equal to 0."),
            )
        ],
    ),
    Case(
        "memory-request-small",
        f"{ADMITTER}:862",
        requests(memory="64m"),
        [("spec.domain.resources.requests.memory", "'64m': must be greater than or equal to 1M.")],
    ),
    Case(
        "memory-limit-negative",
        f"{ADMITTER}:874",
        limits(memory="-65Mi"),
        [("spec.domain.resources.limits.memory", "'-65Mi': must be greater than or equal to 0.")],
    ),
    Case(
        "memory-request-above-limit",
        f"{ADMITTER}:886",
        limits(memory="64Mi"),
        [
            (
                "spec.domain.resources.requests.memory",
                Sub("is greater than spec.domain.resources.limits.memory"),
            )
        ],
    ),
    Case(
        "memory-request-below-limit",
        f"{ADMITTER}:901",
        {**requests(memory="64Mi"), **limits(memory="65Mi")},
        ACCEPT,
    ),
    Case("start-strategy-paused", f"{ADMITTER}:1570", {"spec.startStrategy": "Paused"}, ACCEPT),
    Case("start-strategy-unset", f"{ADMITTER}:1578", {}, ACCEPT),
    Case(
        "start-strategy-invalid",
        f"{ADMITTER}:1584",
        {"spec.startStrategy": "invalid"},
        [("spec.startStrategy", Sub('Unsupported value: "invalid"'))],
    ),
    *(
        Case(
            f"cpu-feature-policy-{policy or 'empty'}",
            f"{ADMITTER}:2156",
            {"spec.domain.cpu": {"features": [{"name": "lahf_lm", "policy": policy}]}},
            ACCEPT,
        )
        for policy in ("", "force", "require", "optional", "disable", "forbid")
    ),
    Case(
        "cpu-feature-policy-invalid",
        f"{ADMITTER}:2172",
        {"spec.domain.cpu": {"features": [{"name": "lahf_lm", "policy": "invalid_policy"}]}},
        [("spec.domain.cpu.features[0].policy", Sub('Unsupported value: "invalid_policy"'))],
    ),
    Case(
        "bootloader-empty",
        f"{ADMITTER}:2515",
        {"spec.subdomain": "testsubdomain", "spec.domain.firmware": {}},
        ACCEPT,
    ),
    Case(
        "bootloader-bios",
        f"{ADMITTER}:2526",
        {"spec.domain.firmware": {"bootloader": {"bios": {}}}},
        ACCEPT,
    ),
    Case("bootloader-efi-smm", f"{ADMITTER}:2539", {**EFI, **SMM}, ACCEPT),
    Case(
        "bootloader-efi-without-smm",
        f"{ADMITTER}:2557",
        EFI,
        [("spec.domain.firmware.bootloader.efi.secureBoot", Sub("SecureBoot requires SMM"))],
    ),
    Case(
        "bootloader-efi-no-secure-boot",
        f"{ADMITTER}:2570",
        {"spec.domain.firmware": {"bootloader": {"efi": {"secureBoot": False}}}},
        ACCEPT,
    ),
    Case(
        "bootloader-bios-and-efi",
        f"{ADMITTER}:2585",
        {"spec.domain.firmware": {"bootloader": {"efi": {}, "bios": {}}}, **SMM},
        [("spec.domain.firmware.bootloader", Sub("mutually exclusive"))],
    ),
    Case(
        "watchdog-i6300esb",
        f"{ADMITTER}:3841",
        {f"{DEVICES}.watchdog": {"name": "w", "i6300esb": {}}},
        ACCEPT,
    ),
    Case(
        "watchdog-diag288",
        f"{ADMITTER}:3848",
        {f"{DEVICES}.watchdog": {"name": "w", "diag288": {}}},
        [(f"{DEVICES}.watchdog.diag288", "amd64 only supports I6300ESB watchdog device")],
    ),
    Case("watchdog-none", f"{ADMITTER}:3855", {}, ACCEPT),
    # RebootPolicy is Beta: on by default.
    Case("reboot-policy", f"{ADMITTER}:3998", {"spec.domain.rebootPolicy": "Terminate"}, ACCEPT),
]

DISKS_TEST: Final = "pkg/storage/admitters/disks_test.go"
EMPTY_DISK: Final = {"emptyDisk": {"capacity": "1Gi"}}


def disks(*items: dict[str, Any]) -> Patch:
    """KubeVirt's test disks after the minimal VMI's, and a volume for each name."""
    patch: Patch = {f"{DISKS}[{i}]": disk for i, disk in enumerate(items, start=1)}
    names = dict.fromkeys(disk["name"] for disk in items)
    for index, name in enumerate(names, start=1):
        patch[f"spec.volumes[{index}]"] = {"name": name, **EMPTY_DISK}
    return patch


def block(logical: int, physical: int, **more: Any) -> Patch:
    size = {"custom": {"logical": logical, "physical": physical, **more}}
    return disks({"name": "blockdisk", "blockSize": size})


D1: Final = f"{DISKS}[1]"
SATA_LOGICAL: Final = "must be 512 for SATA devices"
DISK_CASES: Final = [
    Case("disk-target", f"{DISKS_TEST}:55", disks({"name": "testdisk", "disk": {}}), ACCEPT),
    Case("cdrom-target", f"{DISKS_TEST}:61", disks({"name": "testdisk", "cdrom": {}}), ACCEPT),
    Case("no-target", f"{DISKS_TEST}:66", disks({"name": "testdisk"}), ACCEPT),
    Case(
        "duplicate-names",
        f"{DISKS_TEST}:82",
        disks({"name": "testdisk", "disk": {}}, {"name": "testdisk", "disk": {}}),
        [(f"{DISKS}[2].name", Sub("must not have the same Name."))],
    ),
    Case(
        "sata-read-only",
        f"{DISKS_TEST}:100",
        disks({"name": "testdisk", "disk": {"bus": "sata", "readonly": True}}),
        [(f"{D1}.disk.readonly", "sata hard-disks do not support read-only.")],
    ),
    Case(
        "pci-address-not-virtio",
        f"{DISKS_TEST}:115",
        disks({"name": "testdisk", "disk": {"bus": "scsi", "pciAddress": "0000:04:10.0"}}),
        [(f"{D1}.disk.pciAddress", Sub("pciAddress is not supported by vmid"))],
    ),
    Case(
        "pci-address-malformed",
        f"{DISKS_TEST}:129",
        disks({"name": "testdisk", "disk": {"bus": "virtio", "pciAddress": "0000:81:100.a"}}),
        [(f"{D1}.disk.pciAddress", Sub("pciAddress is not supported by vmid"))],
    ),
    Case(
        "multiple-targets",
        f"{DISKS_TEST}:144",
        disks({"name": "testdisk", "disk": {}, "cdrom": {}}),
        [(D1, Sub("can only have a single target type defined"))],
    ),
    Case(
        "boot-order-1",
        f"{DISKS_TEST}:164",
        disks({"name": "testdisk", "bootOrder": 1, "disk": {}}),
        ACCEPT,
    ),
    Case(
        "boot-order-0",
        f"{DISKS_TEST}:179",
        disks({"name": "testdisk", "bootOrder": 0, "disk": {}}),
        [(f"{D1}.bootOrder", Sub("must have a boot order > 0, if supplied"))],
    ),
    # KubeVirt's case has a lun on sata too: vmid refuses luns (see DELIBERATE).
    Case(
        "supported-buses",
        f"{DISKS_TEST}:195",
        disks(
            {"name": "testdisk1", "disk": {"bus": "virtio"}},
            {"name": "testdisk3", "cdrom": {"bus": "scsi"}},
            {"name": "testdisk4", "disk": {"bus": "usb"}},
            {"name": "testdisk5", "disk": {}},
        ),
        ACCEPT,
    ),
    Case(
        "unsupported-buses",
        f"{DISKS_TEST}:239",
        disks(
            {"name": "testdisk1", "disk": {"bus": "ide"}},
            {"name": "testdisk2", "lun": {"bus": "unsupported"}},
        ),
        [
            (f"{D1}.disk.bus", Sub('Unsupported value: "ide"')),
            (f"{DISKS}[2].lun.bus", Sub('Unsupported value: "unsupported"')),
        ],
    ),
    Case(
        "io-modes",
        f"{DISKS_TEST}:263",
        disks({"name": "testdisk1", "io": "native"}, {"name": "testdisk2", "io": "unsupported"}),
        [(f"{DISKS}[2].io", Sub('Unsupported value: "unsupported"'))],
    ),
    Case(
        "cache-invalid",
        f"{DISKS_TEST}:278",
        disks({"name": "testdisk", "cache": "unspported", "disk": {}}),
        [(f"{D1}.cache", Sub('Unsupported value: "unspported"'))],
    ),
    *(
        Case(
            f"cache-{mode}",
            f"{DISKS_TEST}:298",
            disks({"name": "testdisk", "cache": mode, "disk": {}}),
            ACCEPT,
        )
        for mode in ("none", "writethrough", "writeback")
    ),
    *(
        Case(
            f"error-policy-invalid-{policy or 'empty'}",
            f"{DISKS_TEST}:314",
            disks({"name": "testdisk", "errorPolicy": policy, "disk": {}}),
            [(f"{D1}.errorPolicy", Sub(f'Unsupported value: "{policy}"'))],
        )
        for policy in ("unsupported", "")
    ),
    *(
        Case(
            f"error-policy-{policy}",
            f"{DISKS_TEST}:326",
            disks({"name": "testdisk", "errorPolicy": policy, "disk": {}}),
            ACCEPT,
        )
        for policy in ("stop", "report", "ignore", "enospace")
    ),
    Case(
        "serial-characters",
        f"{DISKS_TEST}:332",
        disks({"name": "testdisk2", "bootOrder": 1, "serial": "$$$$", "disk": {}}),
        [(f"{D1}.serial", Sub("must be made up of the following characters"))],
    ),
    Case(
        "serial-too-long",
        f"{DISKS_TEST}:350",
        disks({"name": "testdisk2", "bootOrder": 1, "serial": "1" * 257, "disk": {}}),
        [(f"{D1}.serial", Sub("256"))],
    ),
    Case(
        "serial-valid",
        f"{DISKS_TEST}:368",
        disks({"name": "testdisk2", "bootOrder": 1, "serial": "SN-1_a", "disk": {}}),
        ACCEPT,
    ),
    *(
        Case(
            f"dedicated-io-thread-{bus}",
            f"{DISKS_TEST}:416",
            disks(
                {"name": "a", "dedicatedIOThread": True, "disk": {"bus": bus}},
                {"name": "b", "dedicatedIOThread": True, "disk": {"bus": "virtio"}},
                {"name": "c", "dedicatedIOThread": False, "disk": {"bus": "sata"}},
            ),
            [(f"{D1}.dedicatedIOThread", f"IOThreads are not supported for disks on a {bus} bus")],
        )
        for bus in ("sata", "scsi", "usb")
    ),
    # Block sizes: KubeVirt's disks have no target, which its mutator makes a sata disk; the
    # unit tests skip the mutator, a cluster does not: a logical size above 512 is refused.
    Case("block-512n", f"{DISKS_TEST}:437", block(512, 512), ACCEPT),
    Case("block-512e", f"{DISKS_TEST}:438", block(512, 4096), ACCEPT),
    Case(
        "block-4kn-on-sata",
        f"{DISKS_TEST}:439",
        block(4096, 4096),
        [(f"{D1}.blockSize.custom.logical", f"Logical size 4096 {SATA_LOGICAL}")],
    ),
    Case(
        "block-1MiB-on-sata",
        f"{DISKS_TEST}:440",
        block(1048576, 1048576),
        [(f"{D1}.blockSize.custom.logical", f"Logical size 1048576 {SATA_LOGICAL}")],
    ),
    Case(
        "block-below-512",
        f"{DISKS_TEST}:459",
        block(128, 128),
        [
            (
                f"{D1}.blockSize.custom.logical",
                "Provided size of 128 is less than the supported minimum size of 512",
            ),
            (
                f"{D1}.blockSize.custom.physical",
                "Provided size of 128 is less than the supported minimum size of 512",
            ),
            (f"{D1}.blockSize.custom.logical", f"Logical size 128 {SATA_LOGICAL}"),
        ],
    ),
    Case(
        "block-above-2MiB",
        f"{DISKS_TEST}:460",
        block(3000000, 3000000),
        [
            (
                f"{D1}.blockSize.custom.logical",
                Sub("greater than the supported maximum size of 2097152"),
            ),
            (
                f"{D1}.blockSize.custom.physical",
                Sub("greater than the supported maximum size of 2097152"),
            ),
            (f"{D1}.blockSize.custom.logical", f"Logical size 3000000 {SATA_LOGICAL}"),
        ],
    ),
    Case(
        "block-not-power-of-2",
        f"{DISKS_TEST}:461",
        block(1234, 1234),
        [
            (f"{D1}.blockSize.custom.logical", "Provided size of 1234 is not a power of 2"),
            (f"{D1}.blockSize.custom.physical", "Provided size of 1234 is not a power of 2"),
            (f"{D1}.blockSize.custom.logical", f"Logical size 1234 {SATA_LOGICAL}"),
        ],
    ),
    Case(
        "block-logical-above-physical",
        f"{DISKS_TEST}:464",
        block(4096, 512),
        [
            (
                f"{D1}.blockSize.custom.logical",
                Sub("must be the same or less than the physical size of 512"),
            ),
            (f"{D1}.blockSize.custom.logical", f"Logical size 4096 {SATA_LOGICAL}"),
        ],
    ),
    Case(
        "block-custom-and-matching",
        f"{DISKS_TEST}:494",
        disks(
            {
                "name": "blockdisk",
                "blockSize": {
                    "custom": {"logical": 1234, "physical": 1234},
                    "matchVolume": {"enabled": True},
                },
            }
        ),
        [
            (
                f"{D1}.blockSize",
                "Block size matching can't be enabled together with a custom value",
            ),
            (f"{D1}.blockSize.custom.logical", "Provided size of 1234 is not a power of 2"),
            (f"{D1}.blockSize.custom.physical", "Provided size of 1234 is not a power of 2"),
            (f"{D1}.blockSize.custom.logical", f"Logical size 1234 {SATA_LOGICAL}"),
        ],
    ),
    Case(
        "block-custom-matching-disabled",
        f"{DISKS_TEST}:513",
        disks(
            {
                "name": "blockdisk",
                "disk": {"bus": "virtio"},
                "blockSize": {
                    "custom": {"logical": 4096, "physical": 4096},
                    "matchVolume": {"enabled": False},
                },
            }
        ),
        ACCEPT,
    ),
    Case(
        "block-sata-4096",
        f"{DISKS_TEST}:531",
        disks(
            {
                "name": "blockdisk",
                "disk": {"bus": "sata"},
                "blockSize": {"custom": {"logical": 4096, "physical": 4096}},
            }
        ),
        [(f"{D1}.blockSize.custom.logical", f"Logical size 4096 {SATA_LOGICAL}")],
    ),
    Case(
        "block-discard-granularity",
        f"{DISKS_TEST}:551",
        disks(
            {
                "name": "blockdisk",
                "disk": {"bus": "virtio"},
                "blockSize": {
                    "custom": {"logical": 4096, "physical": 4096, "discardGranularity": 512}
                },
            }
        ),
        [
            (
                f"{D1}.blockSize.custom.discardGranularity",
                "Discard granularity 512 must be multiples of logical size 4096",
            )
        ],
    ),
]


def nets(interfaces: list[dict[str, Any]], networks: list[dict[str, Any]]) -> Patch:
    return {IFACES: interfaces, "spec.networks": networks}


BRIDGE_DEFAULT: Final = {"name": "default", "bridge": {}}
MULTUS_DEFAULT_MSG: Final = Sub("a default multus network replaces the pod network")
NETWORK_SOURCE_CASES: Final = [
    Case(
        "two-pod-networks",
        f"{NETWORK}/netsource_test.go:35",
        nets(
            [BRIDGE_DEFAULT, {"name": "default2", "bridge": {}}],
            [{"name": "default", "pod": {}}, {"name": "default2", "pod": {}}],
        ),
        [("spec.networks", Sub("more than one interface is connected to a pod network"))],
    ),
    Case(
        "two-types",
        f"{NETWORK}/netsource_test.go:54",
        nets(
            [BRIDGE_DEFAULT],
            [{"name": "default", "multus": {"networkName": "default1"}, "pod": {}}],
        ),
        [("spec.networks[0]", "should have only one network type")],
    ),
    Case(
        "no-type",
        f"{NETWORK}/netsource_test.go:74",
        nets([{"name": "testnet1", "bridge": {}}], [{"name": "testnet1"}]),
        [("spec.networks[0]", "should have a network type")],
    ),
    Case(
        "multus-without-network-name",
        f"{NETWORK}/netsource_test.go:140",
        nets([BRIDGE_DEFAULT], [{"name": "default", "multus": {"networkName": ""}}]),
        [("spec.networks[0]", "CNI delegating plugin must have a networkName")],
    ),
    Case(
        "two-multus-defaults",
        f"{NETWORK}/netsource_test.go:154",
        nets(
            [{"name": "multus1", "bridge": {}}, {"name": "multus2", "bridge": {}}],
            [
                {"name": "multus1", "multus": {"networkName": "multus-net1", "default": True}},
                {"name": "multus2", "multus": {"networkName": "multus-net2", "default": True}},
            ],
        ),
        [
            ("spec.networks[0].multus.default", MULTUS_DEFAULT_MSG),
            ("spec.networks[1].multus.default", MULTUS_DEFAULT_MSG),
        ],
    ),
    Case(
        "pod-and-multus-default",
        f"{NETWORK}/netsource_test.go:187",
        nets(
            [BRIDGE_DEFAULT, {"name": "defaultmultus", "bridge": {}}],
            [
                {"name": "default", "pod": {}},
                {
                    "name": "defaultmultus",
                    "multus": {"networkName": "multus-net1", "default": True},
                },
            ],
        ),
        [("spec.networks[1].multus.default", MULTUS_DEFAULT_MSG)],
    ),
    Case(
        "multus-and-bridge",
        f"{NETWORK}/netsource_test.go:244",
        nets([BRIDGE_DEFAULT], [{"name": "default", "multus": {"networkName": "default"}}]),
        ACCEPT,
    ),
    Case(
        "pod-and-two-multus",
        f"{NETWORK}/netsource_test.go:261",
        nets(
            [BRIDGE_DEFAULT, {"name": "multus1", "bridge": {}}, {"name": "multus2", "bridge": {}}],
            [
                {"name": "default", "pod": {}},
                {"name": "multus1", "multus": {"networkName": "multus-net1"}},
                {"name": "multus2", "multus": {"networkName": "multus-net2"}},
            ],
        ),
        ACCEPT,
    ),
    Case(
        "bridge-and-plugin",
        f"{NETWORK}/binding_test.go:36",
        foo_network(POD, iface(bridge={}, binding={"name": "boo"})),
        [(f"{IFACES}[0].binding", Sub("binding is not supported by vmid"))],
    ),
    Case(
        "no-binding",
        f"{NETWORK}/binding_test.go:74",
        foo_network(POD, iface()),
        [
            (
                f"{IFACES}[0]",
                "logical foo interface must have exactly one binding method or binding plugin",
            )
        ],
    ),
    Case(
        "two-bindings",
        f"{NETWORK}/binding_test.go:94",
        foo_network(POD, iface(bridge={}, masquerade={})),
        [
            (
                f"{IFACES}[0]",
                "logical foo interface must have exactly one binding method or binding plugin",
            )
        ],
    ),
    Case(
        "bridge-binding",
        f"{NETWORK}/binding_test.go:118",
        foo_network(POD, iface(bridge={})),
        ACCEPT,
    ),
    Case(
        "masquerade-on-multus",
        f"{NETWORK}/binding_test.go:136",
        {
            IFACES: [{"name": "default", "masquerade": {}, "ports": [{"name": "test"}]}],
            "spec.networks": [{"name": "default", "multus": {"networkName": "test"}}],
        },
        [(f"{IFACES}[0].masquerade", "Masquerade interface only implemented with pod network")],
    ),
    Case(
        "masquerade-reserved-mac",
        f"{NETWORK}/binding_test.go:159",
        nets(
            [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:00"}],
            [{"name": "default", "pod": {}}],
        ),
        [
            (
                f"{IFACES}[0].macAddress",
                "The requested MAC address is reserved for the in-pod bridge. "
                "Please choose another one.",
            )
        ],
    ),
    *(
        Case(
            f"discontinued-{binding}",
            f"{NETWORK}/discontinued_test.go:{line}",
            foo_network(POD, iface(**{binding: {}})),
            [
                (
                    f"{IFACES}[0].{binding}",
                    f"{binding} interface binding has been discontinued since v1.3",
                )
            ],
        )
        for line, binding in ((56, "slirp"), (61, "passt"), (66, "macvtap"))
    ),
]

CASES: Final = {
    "dns": DNS_CASES,
    "affinity": AFFINITY_CASES,
    "topology": TOPOLOGY_CASES,
    "spec": SPEC_CASES,
    "network": NETWORK_CASES,
    "disks": DISK_CASES,
    "more": MORE_CASES,
    "network-source": NETWORK_SOURCE_CASES,
}
ALL: Final = [(f"{group}-{c.name}", c) for group, cases in CASES.items() for c in cases]


@pytest.mark.parametrize("case", [c for _, c in ALL], ids=[i for i, _ in ALL])
def test_vmid_gives_the_clusters_verdict(base: dict[str, Any], case: Case) -> None:
    assert_problems(problems_of(apply_patch(base, case.patch)), case.verdict)


# KubeVirt test cases whose verdict vmid gives differently on purpose: (case, vmid's problems,
# why). The README lists them too.
DELIBERATE: Final = [
    (
        Case(
            "service-account-volume",
            f"{ADMITTER}:582",
            {
                "spec.serviceAccountName": "my-sa",
                "spec.volumes[1]": {
                    "name": "sa",
                    "serviceAccount": {"serviceAccountName": "my-sa"},
                },
            },
            ACCEPT,
        ),
        [
            (
                "spec.volumes[1].serviceAccount",
                "serviceAccount is not supported by vmid: service account tokens need a "
                "Kubernetes API server",
            )
        ],
        "there is no Kubernetes API server to issue the token",
    ),
    (
        Case(
            "lun-target",
            f"{DISKS_TEST}:58",
            {
                f"{DISKS}[1]": {"name": "testdisk", "lun": {}},
                "spec.volumes[1]": {
                    "name": "testdisk",
                    "persistentVolumeClaim": {"claimName": "c"},
                },
            },
            ACCEPT,
        ),
        [
            (
                f"{DISKS}[1].lun",
                "lun is not supported by vmid: vmid backs claims with files, and a lun needs a "
                "SCSI block device",
            )
        ],
        "vmid backs a claim with a file; a lun passes SCSI commands to a block device",
    ),
    (
        Case(
            "block-size-matching",
            f"{DISKS_TEST}:480",
            disks({"name": "blockdisk", "blockSize": {"matchVolume": {"enabled": True}}}),
            ACCEPT,
        ),
        [
            (
                f"{DISKS}[1].blockSize.matchVolume",
                "matchVolume is not supported by vmid: reading the block size of the volume is "
                "not implemented yet; give custom sizes",
            )
        ],
        "not implemented yet",
    ),
    (
        Case(
            "single-multus-default",
            f"{NETWORK}/netsource_test.go:224",
            nets(
                [{"name": "multus1", "bridge": {}}],
                [{"name": "multus1", "multus": {"networkName": "multus-net1", "default": True}}],
            ),
            ACCEPT,
        ),
        [("spec.networks[0].multus.default", MULTUS_DEFAULT_MSG)],
        "a default multus network replaces a pod's network; vmid has no pod, use pod: {}",
    ),
    (
        Case(
            "host-disk-without-gate",
            f"{ADMITTER}:2268",
            {"spec.volumes[1]": {"name": "host", "hostDisk": {"path": "/d.img", "type": "Disk"}}},
            [("spec.volumes[1].hostDisk", "HostDisk feature gate is not enabled")],
        ),
        ACCEPT,
        "hostDisk is the way to use a file of the host on one host; the gate (Alpha) only "
        "protects a cluster's nodes from their pods",
    ),
]


@pytest.mark.parametrize(
    ("case", "ours"), [d[:2] for d in DELIBERATE], ids=[d[0].name for d in DELIBERATE]
)
def test_deliberate_differences(
    base: dict[str, Any], case: Case, ours: list[tuple[str, str]]
) -> None:
    assert case.verdict != ours
    assert_problems(problems_of(apply_patch(base, case.patch)), ours)
