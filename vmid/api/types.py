"""KubeVirt's VirtualMachineInstance wire model as frozen attrs values.

Attribute names are the YAML's camelCase keys, so error paths read like the manifest. Each class
may list `IGNORED` keys (valid in KubeVirt, meaningless on one host) and `UNSUPPORTED` keys (valid
in KubeVirt, refused by vmid with the reason given); every other unknown key is an error.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

import attrs

from vmid.api.quantity import Quantity

NO_CLUSTER = "there is no Kubernetes API server on a vmid host to read it from"
NOT_YET = "not implemented yet"


class Enum(enum.StrEnum):
    """A closed set of strings; the loader reports any other value with the allowed ones."""


# Section: enums


class Bus(Enum):
    VIRTIO = "virtio"
    SATA = "sata"
    SCSI = "scsi"
    USB = "usb"


class Cache(Enum):
    NONE = "none"
    WRITETHROUGH = "writethrough"
    WRITEBACK = "writeback"


class IOMode(Enum):
    NATIVE = "native"
    THREADS = "threads"


class ErrorPolicy(Enum):
    STOP = "stop"
    IGNORE = "ignore"
    REPORT = "report"
    ENOSPACE = "enospace"


class Tray(Enum):
    OPEN = "open"
    CLOSED = "closed"


class HostDiskType(Enum):
    DISK = "Disk"
    DISK_OR_CREATE = "DiskOrCreate"


class PullPolicy(Enum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class Protocol(Enum):
    TCP = "TCP"
    UDP = "UDP"


class InterfaceState(Enum):
    UP = "up"
    DOWN = "down"
    ABSENT = "absent"


class WatchdogAction(Enum):
    POWEROFF = "poweroff"
    RESET = "reset"
    SHUTDOWN = "shutdown"


class InputType(Enum):
    TABLET = "tablet"


class InputBus(Enum):
    USB = "usb"
    VIRTIO = "virtio"


class PanicModel(Enum):
    ISA = "isa"
    HYPERV = "hyperv"
    PVPANIC = "pvpanic"


class SoundModel(Enum):
    ICH9 = "ich9"
    AC97 = "ac97"


class VideoType(Enum):
    VGA = "vga"
    CIRRUS = "cirrus"
    VIRTIO = "virtio"
    RAMFB = "ramfb"
    BOCHS = "bochs"


class StartStrategy(Enum):
    PAUSED = "Paused"


class EvictionStrategy(Enum):
    NONE = "None"
    LIVE_MIGRATE = "LiveMigrate"
    LIVE_MIGRATE_IF_POSSIBLE = "LiveMigrateIfPossible"
    EXTERNAL = "External"


class RebootPolicy(Enum):
    REBOOT = "Reboot"
    TERMINATE = "Terminate"


class FeaturePolicy(Enum):
    FORCE = "force"
    REQUIRE = "require"
    OPTIONAL = "optional"
    DISABLE = "disable"
    FORBID = "forbid"


#: Enums whose "" KubeVirt reads as unset (Go's zero string) rather than refusing it.
EMPTY_MEANS_UNSET: frozenset[type[Enum]] = frozenset({SoundModel, InterfaceState, FeaturePolicy})


class TickPolicy(Enum):
    DELAY = "delay"
    CATCHUP = "catchup"
    MERGE = "merge"
    DISCARD = "discard"


class IOThreadsPolicy(Enum):
    SHARED = "shared"
    AUTO = "auto"
    SUPPLEMENTAL_POOL = "supplementalPool"


# Section: metadata


@attrs.frozen(kw_only=True)
class ObjectMeta:
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "finalizers",
            "ownerReferences",
            "managedFields",
            "selfLink",
        }
    )
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "generateName": "a VMI on a vmid host needs a fixed metadata.name",
    }
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    annotations: dict[str, str] = attrs.field(factory=dict)


# Section: resources, CPU, memory, machine, firmware, clock, features


@attrs.frozen(kw_only=True)
class ResourceRequirements:
    IGNORED: ClassVar[frozenset[str]] = frozenset({"overcommitGuestOverhead"})
    requests: dict[str, Quantity] = attrs.field(factory=dict)
    limits: dict[str, Quantity] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ReservedOverhead:
    """Refused, as by a default cluster: its ReservedOverheadMemlock feature gate is Alpha."""

    addedOverhead: Quantity | None = None
    memLock: str | None = None


@attrs.frozen(kw_only=True)
class Memory:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {"hugepages": f"hugepages are {NOT_YET}"}
    guest: Quantity | None = None
    #: The memory hotplug ceiling: vmid does not hotplug memory, but a VM's is checked as
    #: KubeVirt checks it (vmid/api/vm.py).
    maxGuest: Quantity | None = None
    reservedOverhead: ReservedOverhead | None = None


@attrs.frozen(kw_only=True)
class CPUFeature:
    name: str
    policy: FeaturePolicy | None = None  # defaults to require


@attrs.frozen(kw_only=True)
class CPU:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "numa": f"guest NUMA topology is {NOT_YET}",
        "realtime": f"realtime vCPU scheduling is {NOT_YET}",
    }
    cores: int | None = None
    sockets: int | None = None
    threads: int | None = None
    model: str | None = None
    features: tuple[CPUFeature, ...] = ()
    dedicatedCpuPlacement: bool = False
    isolateEmulatorThread: bool = False
    # The CPU hotplug ceiling: vmid does not hotplug CPUs, but KubeVirt checks sockets against it.
    maxSockets: int | None = None


@attrs.frozen(kw_only=True)
class Machine:
    type: str | None = None


@attrs.frozen(kw_only=True)
class BIOS:
    useSerial: bool = False


@attrs.frozen(kw_only=True)
class EFI:
    secureBoot: bool | None = None
    persistent: bool = False


@attrs.frozen(kw_only=True)
class Bootloader:
    bios: BIOS | None = None
    efi: EFI | None = None


@attrs.frozen(kw_only=True)
class Firmware:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "kernelBoot": f"booting a kernel from a container image is {NOT_YET}",
        "acpi": f"SLIC/MSDM tables come from Secrets, and {NO_CLUSTER}",
    }
    uuid: str | None = None
    serial: str | None = None
    bootloader: Bootloader | None = None


@attrs.frozen(kw_only=True)
class ClockOffsetUTC:
    offsetSeconds: int | None = None


@attrs.frozen(kw_only=True)
class Timer:
    present: bool | None = None
    tickPolicy: TickPolicy | None = None


@attrs.frozen(kw_only=True)
class RTCTimer:
    present: bool | None = None
    tickPolicy: TickPolicy | None = None
    track: str | None = None


@attrs.frozen(kw_only=True)
class Timers:
    # KVM and Hyper-V clock sources are tuned by QEMU itself; only hpet and rtc map to options.
    IGNORED: ClassVar[frozenset[str]] = frozenset({"kvm", "hyperv", "pit"})
    hpet: Timer | None = None
    rtc: RTCTimer | None = None


@attrs.frozen(kw_only=True)
class Clock:
    utc: ClockOffsetUTC | None = None
    timezone: str | None = None
    timer: Timers | None = None


@attrs.frozen(kw_only=True)
class FeatureState:
    enabled: bool | None = None


@attrs.frozen(kw_only=True)
class FeatureAPIC:
    enabled: bool | None = None
    endOfInterrupt: bool = False


@attrs.frozen(kw_only=True)
class FeatureSpinlocks:
    enabled: bool | None = None
    spinlocks: int | None = None


@attrs.frozen(kw_only=True)
class FeatureVendorID:
    enabled: bool | None = None
    vendorid: str | None = None


@attrs.frozen(kw_only=True)
class SyNICTimer:
    enabled: bool | None = None
    direct: FeatureState | None = None


@attrs.frozen(kw_only=True)
class FeatureHyperv:
    relaxed: FeatureState | None = None
    vapic: FeatureState | None = None
    spinlocks: FeatureSpinlocks | None = None
    vpindex: FeatureState | None = None
    runtime: FeatureState | None = None
    synic: FeatureState | None = None
    synictimer: SyNICTimer | None = None
    reset: FeatureState | None = None
    vendorid: FeatureVendorID | None = None
    frequencies: FeatureState | None = None
    reenlightenment: FeatureState | None = None
    tlbflush: FeatureState | None = None
    ipi: FeatureState | None = None
    evmcs: FeatureState | None = None


@attrs.frozen(kw_only=True)
class FeatureKVM:
    hidden: bool = False


@attrs.frozen(kw_only=True)
class Features:
    acpi: FeatureState | None = None
    apic: FeatureAPIC | None = None
    smm: FeatureState | None = None
    hyperv: FeatureHyperv | None = None
    hypervPassthrough: FeatureState | None = None
    kvm: FeatureKVM | None = None
    pvspinlock: FeatureState | None = None


# Section: devices


@attrs.frozen(kw_only=True)
class DiskTarget:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {"pciAddress": f"fixed PCI addresses are {NOT_YET}"}
    bus: Bus | None = None
    readonly: bool = False


@attrs.frozen(kw_only=True)
class CDRomTarget:
    bus: Bus | None = None
    readonly: bool | None = None
    tray: Tray | None = None


@attrs.frozen(kw_only=True)
class LunTarget:
    bus: Bus | None = None
    readonly: bool = False
    reservation: bool = False


@attrs.frozen(kw_only=True)
class CustomBlockSize:
    logical: int
    physical: int
    discardGranularity: int | None = None


@attrs.frozen(kw_only=True)
class BlockSize:
    custom: CustomBlockSize | None = None
    # Matching the volume's block size is refused (not implemented yet) unless disabled.
    matchVolume: FeatureState | None = None


@attrs.frozen(kw_only=True)
class Disk:
    # tag only labels the disk in ConfigDrive device metadata, which vmid does not write.
    IGNORED: ClassVar[frozenset[str]] = frozenset({"tag"})
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "changedBlockTracking": f"changed block tracking for backups is {NOT_YET}"
    }
    name: str
    disk: DiskTarget | None = None
    cdrom: CDRomTarget | None = None
    lun: LunTarget | None = None
    bootOrder: int | None = None
    serial: str | None = None
    cache: Cache | None = None
    io: IOMode | None = None
    errorPolicy: ErrorPolicy | None = None
    dedicatedIOThread: bool = False
    shareable: bool = False
    blockSize: BlockSize | None = None


@attrs.frozen(kw_only=True)
class Port:
    name: str | None = None
    protocol: Protocol | None = None
    port: int | None = None


@attrs.frozen(kw_only=True)
class EmptyBinding:
    """A binding with no settings (`bridge: {}`, `masquerade: {}`)."""


@attrs.frozen(kw_only=True)
class Interface:
    DISCONTINUED: ClassVar[tuple[str, ...]] = ("slirp", "passt", "macvtap")
    IGNORED: ClassVar[frozenset[str]] = frozenset({"tag"})
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "sriov": "SR-IOV needs a device plugin and a cluster network operator",
        "passtBinding": f"the passt binding is {NOT_YET}",
        "binding": "network binding plugins run as Kubernetes sidecars",
        "pciAddress": f"fixed PCI addresses are {NOT_YET}",
        "dhcpOptions": f"custom DHCP options are {NOT_YET}",
        "portRanges": f"port ranges are {NOT_YET}; list the ports",
    }
    name: str
    bridge: EmptyBinding | None = None
    masquerade: EmptyBinding | None = None
    # Discontinued in KubeVirt v1.3 but still in its schema: parsed so the message can say so.
    slirp: EmptyBinding | None = None
    passt: EmptyBinding | None = None
    macvtap: EmptyBinding | None = None
    model: str | None = None
    macAddress: str | None = None
    ports: tuple[Port, ...] = ()
    bootOrder: int | None = None
    acpiIndex: int | None = None
    state: InterfaceState | None = None


@attrs.frozen(kw_only=True)
class Rng:
    """virtio-rng fed from the host's /dev/urandom."""


@attrs.frozen(kw_only=True)
class Input:
    name: str
    type: InputType | None = None
    bus: InputBus | None = None


@attrs.frozen(kw_only=True)
class I6300ESB:
    action: WatchdogAction | None = None


@attrs.frozen(kw_only=True)
class Watchdog:
    name: str
    i6300esb: I6300ESB | None = None
    diag288: I6300ESB | None = None


@attrs.frozen(kw_only=True)
class PanicDevice:
    model: PanicModel | None = None


@attrs.frozen(kw_only=True)
class Sound:
    name: str | None = None
    model: SoundModel | None = None


@attrs.frozen(kw_only=True)
class Video:
    type: VideoType | None = None


@attrs.frozen(kw_only=True)
class Devices:
    IGNORED: ClassVar[frozenset[str]] = frozenset({"disableHotplug"})
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "gpus": "GPUs are assigned by Kubernetes device plugins",
        "hostDevices": "host devices are assigned by Kubernetes device plugins",
        "clientPassthrough": "USB redirection goes through virtctl and the KubeVirt API",
        "downwardMetrics": "downward metrics come from virt-handler",
        "filesystems": f"virtiofs filesystems are {NOT_YET}",
        "tpm": f"emulated TPMs (swtpm) are {NOT_YET}",
    }
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    inputs: tuple[Input, ...] = ()
    panicDevices: tuple[PanicDevice, ...] = ()
    watchdog: Watchdog | None = None
    rng: Rng | None = None
    sound: Sound | None = None
    video: Video | None = None
    autoattachPodInterface: bool | None = None
    autoattachGraphicsDevice: bool | None = None
    autoattachSerialConsole: bool | None = None
    autoattachMemBalloon: bool | None = None
    autoattachInputDevice: bool | None = None
    autoattachVSOCK: bool | None = None
    logSerialConsole: bool | None = None
    blockMultiQueue: bool | None = None
    networkInterfaceMultiqueue: bool | None = None
    useVirtioTransitional: bool | None = None


@attrs.frozen(kw_only=True)
class DiskIOThreads:
    """The supplementalPool's size: checked as KubeVirt does, otherwise ignored (vmid gives
    dedicated disks their own thread, the others share QEMU's main loop)."""

    supplementalPoolThreadCount: int | None = None


@attrs.frozen(kw_only=True)
class DomainSpec:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "launchSecurity": "SEV, SNP and TDX need a confidential-computing host setup",
        "chassis": f"SMBIOS chassis information is {NOT_YET}",
    }
    devices: Devices
    resources: ResourceRequirements | None = None
    memory: Memory | None = None
    cpu: CPU | None = None
    machine: Machine | None = None
    firmware: Firmware | None = None
    clock: Clock | None = None
    features: Features | None = None
    ioThreadsPolicy: IOThreadsPolicy | None = None
    ioThreads: DiskIOThreads | None = None
    rebootPolicy: RebootPolicy | None = None

    def firmware_uuid(self) -> str:
        """The SMBIOS system UUID; always set once defaults are applied."""
        assert self.firmware is not None
        assert self.firmware.uuid is not None
        return self.firmware.uuid


# Section: volumes


@attrs.frozen(kw_only=True)
class ContainerDiskSource:
    # Registry credentials come from vmid.yaml's images.authFile (no Kubernetes secrets here).
    IGNORED: ClassVar[frozenset[str]] = frozenset({"imagePullSecret"})
    image: str
    path: str | None = None
    imagePullPolicy: PullPolicy | None = None


@attrs.frozen(kw_only=True)
class EmptyDiskSource:
    capacity: Quantity


@attrs.frozen(kw_only=True)
class HostDisk:
    path: str | None = None
    type: HostDiskType | None = None
    capacity: Quantity | None = None
    shared: bool = False


@attrs.frozen(kw_only=True)
class CloudInitSource:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "secretRef": f"Secrets need Kubernetes, and {NO_CLUSTER}; put the data inline",
        "networkDataSecretRef": f"Secrets need Kubernetes, and {NO_CLUSTER}; put the data inline",
    }
    userData: str | None = None
    userDataBase64: str | None = None
    networkData: str | None = None
    networkDataBase64: str | None = None


@attrs.frozen(kw_only=True)
class PersistentVolumeClaimSource:
    claimName: str
    readOnly: bool = False
    hotpluggable: bool = False


@attrs.frozen(kw_only=True)
class DataVolumeSource:
    name: str | None = None
    hotpluggable: bool = False


@attrs.frozen(kw_only=True)
class ClaimReference:
    """Kubernetes' own PersistentVolumeClaimVolumeSource, which has no `hotpluggable`."""

    claimName: str
    readOnly: bool = False


@attrs.frozen(kw_only=True)
class EphemeralVolumeSource:
    persistentVolumeClaim: ClaimReference


@attrs.frozen(kw_only=True)
class Volume:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "configMap": f"ConfigMaps need Kubernetes, and {NO_CLUSTER}",
        "secret": f"Secrets need Kubernetes, and {NO_CLUSTER}",
        "downwardAPI": "the downward API describes a Kubernetes pod, and there is none",
        "serviceAccount": "service account tokens need a Kubernetes API server",
        "sysprep": f"sysprep data comes from a ConfigMap or Secret, and {NO_CLUSTER}",
        "downwardMetrics": "downward metrics come from virt-handler",
        "memoryDump": "memory dumps are taken through the KubeVirt API",
        "containerPath": "container paths are mounted by the virt-launcher pod",
    }
    SOURCES: ClassVar[tuple[str, ...]] = (
        "containerDisk",
        "emptyDisk",
        "hostDisk",
        "cloudInitNoCloud",
        "cloudInitConfigDrive",
        "persistentVolumeClaim",
        "dataVolume",
        "ephemeral",
    )
    name: str
    containerDisk: ContainerDiskSource | None = None
    emptyDisk: EmptyDiskSource | None = None
    hostDisk: HostDisk | None = None
    cloudInitNoCloud: CloudInitSource | None = None
    cloudInitConfigDrive: CloudInitSource | None = None
    persistentVolumeClaim: PersistentVolumeClaimSource | None = None
    dataVolume: DataVolumeSource | None = None
    ephemeral: EphemeralVolumeSource | None = None

    def sources(self) -> list[str]:
        """The names of the source fields that are set (exactly one in a valid volume)."""
        return [s for s in self.SOURCES if getattr(self, s) is not None]


# Section: networks


@attrs.frozen(kw_only=True)
class PodNetwork:
    vmNetworkCIDR: str | None = None
    vmIPv6NetworkCIDR: str | None = None


@attrs.frozen(kw_only=True)
class MultusNetwork:
    networkName: str
    default: bool = False


@attrs.frozen(kw_only=True)
class Network:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "resourceClaim": "dynamic resource allocation (DRA) claims are a Kubernetes feature"
    }
    name: str
    pod: PodNetwork | None = None
    multus: MultusNetwork | None = None


# Section: scheduling and DNS: Kubernetes' pod types, meaningless on one host but validated as
# KubeVirt validates them (operators and the like stay strings: KubeVirt's messages name them).


@attrs.frozen(kw_only=True)
class LabelSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class LabelSelector:
    matchLabels: dict[str, str] = attrs.field(factory=dict)
    matchExpressions: tuple[LabelSelectorRequirement, ...] = ()


@attrs.frozen(kw_only=True)
class NodeSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class NodeSelectorTerm:
    matchExpressions: tuple[NodeSelectorRequirement, ...] = ()
    matchFields: tuple[NodeSelectorRequirement, ...] = ()


@attrs.frozen(kw_only=True)
class NodeSelector:
    nodeSelectorTerms: tuple[NodeSelectorTerm, ...]


@attrs.frozen(kw_only=True)
class PreferredSchedulingTerm:
    weight: int
    preference: NodeSelectorTerm


@attrs.frozen(kw_only=True)
class NodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution: NodeSelector | None = None
    preferredDuringSchedulingIgnoredDuringExecution: tuple[PreferredSchedulingTerm, ...] = ()


@attrs.frozen(kw_only=True)
class PodAffinityTerm:
    topologyKey: str
    labelSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    namespaces: tuple[str, ...] = ()
    matchLabelKeys: tuple[str, ...] = ()
    mismatchLabelKeys: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class WeightedPodAffinityTerm:
    weight: int
    podAffinityTerm: PodAffinityTerm


@attrs.frozen(kw_only=True)
class PodAffinity:
    requiredDuringSchedulingIgnoredDuringExecution: tuple[PodAffinityTerm, ...] = ()
    preferredDuringSchedulingIgnoredDuringExecution: tuple[WeightedPodAffinityTerm, ...] = ()


@attrs.frozen(kw_only=True)
class PodAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution: tuple[PodAffinityTerm, ...] = ()
    preferredDuringSchedulingIgnoredDuringExecution: tuple[WeightedPodAffinityTerm, ...] = ()


@attrs.frozen(kw_only=True)
class Affinity:
    nodeAffinity: NodeAffinity | None = None
    podAffinity: PodAffinity | None = None
    podAntiAffinity: PodAntiAffinity | None = None


@attrs.frozen(kw_only=True)
class TopologySpreadConstraint:
    maxSkew: int
    topologyKey: str
    whenUnsatisfiable: str
    labelSelector: LabelSelector | None = None
    matchLabelKeys: tuple[str, ...] = ()
    minDomains: int | None = None
    nodeAffinityPolicy: str | None = None
    nodeTaintsPolicy: str | None = None


@attrs.frozen(kw_only=True)
class PodDNSConfigOption:
    name: str | None = None
    value: str | None = None


@attrs.frozen(kw_only=True)
class PodDNSConfig:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[PodDNSConfigOption, ...] = ()


# Section: probes


class URIScheme(Enum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"


@attrs.frozen(kw_only=True)
class ExecAction:
    command: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class HTTPHeader:
    name: str
    value: str


@attrs.frozen(kw_only=True)
class HTTPGetAction:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "host": "probes target the guest's pod-network address, as a pod's target its IP",
    }
    port: int
    path: str | None = None
    scheme: URIScheme | None = None
    httpHeaders: tuple[HTTPHeader, ...] = ()


@attrs.frozen(kw_only=True)
class TCPSocketAction:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "host": "probes target the guest's pod-network address, as a pod's target its IP",
    }
    port: int


@attrs.frozen(kw_only=True)
class Probe:
    """Kubernetes' Probe with KubeVirt's handlers (exec and guestAgentPing go through qemu-ga)."""

    exec: ExecAction | None = None
    httpGet: HTTPGetAction | None = None
    tcpSocket: TCPSocketAction | None = None
    guestAgentPing: EmptyBinding | None = None
    initialDelaySeconds: int | None = None
    timeoutSeconds: int | None = None
    periodSeconds: int | None = None
    successThreshold: int | None = None
    failureThreshold: int | None = None

    def handlers(self) -> list[str]:
        """The handler fields that are set (exactly one in a valid probe)."""
        names = ("httpGet", "tcpSocket", "exec", "guestAgentPing")
        return [name for name in names if getattr(self, name) is not None]


# Section: the VMI


@attrs.frozen(kw_only=True)
class VirtualMachineInstanceSpec:
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {"nodeSelector", "tolerations", "schedulerName", "priorityClassName"}
    )
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "accessCredentials": f"access credentials come from Secrets, and {NO_CLUSTER}",
        "resourceClaims": "dynamic resource allocation (DRA) claims are a Kubernetes feature",
        "utilityVolumes": "utility volumes are managed by KubeVirt controllers",
    }
    domain: DomainSpec
    volumes: tuple[Volume, ...] = ()
    networks: tuple[Network, ...] = ()
    terminationGracePeriodSeconds: int | None = None
    hostname: str | None = None
    subdomain: str | None = None
    startStrategy: StartStrategy | None = None
    evictionStrategy: EvictionStrategy | None = None
    architecture: str | None = None
    # Scheduling, DNS, the pod's service account: ignored on one host, validated as KubeVirt does.
    affinity: Affinity | None = None
    topologySpreadConstraints: tuple[TopologySpreadConstraint, ...] = ()
    dnsPolicy: str | None = None
    dnsConfig: PodDNSConfig | None = None
    serviceAccountName: str | None = None
    readinessProbe: Probe | None = None
    livenessProbe: Probe | None = None


@attrs.frozen(kw_only=True)
class VirtualMachineInstance:
    # status is written by KubeVirt (and vmid), never read from a manifest.
    IGNORED: ClassVar[frozenset[str]] = frozenset({"status"})
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: VirtualMachineInstanceSpec
