"""The daemon configuration (`vmid.yaml`) and the host paths derived from `--root`.

Every key has a built-in default, documented in conf/vmid.yaml; the file only overrides them.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import attrs

from vmid.api import load
from vmid.api.quantity import Quantity
from vmid.api.types import Enum
from vmid.errors import ConfigError, FileRefused, ManifestError
from vmid.host import safefile
from vmid.paths import NAMESPACES as NAMESPACES  # where vmid's users import them from
from vmid.paths import Paths as Paths

MIN_LOG_SIZE = 4096
MAX_LOG_SIZE = 1 << 40
MAX_LOG_BACKUPS = 100


class Accelerator(Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class OnDaemonStop(Enum):
    STOP = "stop"
    KEEP = "keep"


@attrs.frozen(kw_only=True)
class Firmware:
    """OVMF images for EFI guests (Debian's `ovmf` package)."""

    efiCode: str = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    efiVars: str = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    efiSecureCode: str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    efiSecureVars: str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"


@attrs.frozen(kw_only=True)
class PortRange:
    """The host ports a manifest may forward to its VM (`ports[]`), both ends included."""

    #: Not below 1024: the well-known ports are the host's services' (ssh, DNS, HTTP, ...),
    #: which a forward would silently take from whatever starts listening after the VM.
    min: int = 1024
    max: int = 65535


@attrs.frozen(kw_only=True)
class PodNetwork:
    """vmid's NAT network, KubeVirt's pod network on one host."""

    bridge: str = "vmid0"
    #: The guests' addresses; the first host address is the bridge's (the gateway).
    cidr: str = "10.0.2.0/24"
    #: DNS servers offered by DHCP; null: the host's own (non-loopback) resolvers.
    dnsServers: tuple[str, ...] | None = None
    #: Let vmid turn on net.ipv4.ip_forward (needed for guests to reach beyond the host).
    ipForward: bool = True
    #: dnsmasq drops its root privileges to this user once its DHCP socket is open.
    dhcpUser: str = "nobody"
    publishPorts: PortRange = attrs.field(factory=PortRange)


@attrs.frozen(kw_only=True)
class Logs:
    """Bounds on every log file a guest (or a DHCP client) can make grow, as virtlogd's."""

    #: A log file is rotated when it reaches this size (console.log -> console.log.1 ...).
    maxSize: Quantity = attrs.field(factory=lambda: Quantity.parse("2Mi"))
    #: How many rotated files are kept beside the current one.
    maxBackups: int = 3
    #: A removed VMI's log directory is deleted this long after its removal.
    keepAfterRemovalSeconds: int = 86400


@attrs.frozen(kw_only=True)
class Events:
    """How long `vmid events` still shows a removed VMI's events."""

    #: A removed VMI's events are deleted this long after its last one (its removal), as
    #: kube-apiserver's --event-ttl (1h) deletes events.
    keepAfterRemovalSeconds: int = 3600


@attrs.frozen(kw_only=True)
class Images:
    """Pulling containerDisks from registries with skopeo (containers-registries.conf(5))."""

    skopeo: str = "skopeo"
    #: containers-auth.json(5) credentials, used when the file exists; under --root.
    authFile: str = "/etc/vmid/auth.json"
    #: A containers-policy.json(5) for skopeo --policy (under --root); null: skopeo's own.
    policy: str | None = None
    #: The largest disk file an image may hold (a quantity), as extracted from its layers.
    maxDiskSize: Quantity = attrs.field(factory=lambda: Quantity.parse("64Gi"))
    #: The first wait after a failed pull; doubled after each failure up to 300 s (kubelet's).
    pullBackoffSeconds: float = 10.0


@attrs.frozen(kw_only=True)
class ImageGC:
    """Image garbage collection, as kubelet's (imageGCHighThresholdPercent and the like)."""

    #: Usage of the image store's filesystem (percent) from which unused images are removed;
    #: 100 never collects.
    highThresholdPercent: int = 85
    #: Usage (percent) collection brings it back to, least recently used images first.
    lowThresholdPercent: int = 80
    #: An image stored less than this long ago is never collected (kubelet's imageMinimumGCAge).
    minimumAgeSeconds: float = 120.0
    #: How often the daemon checks usage (kubelet's fixed 5 minutes).
    periodSeconds: float = 300.0


@attrs.frozen(kw_only=True)
class QemuUids:
    """The uids (and equal gids) vmid gives QEMU processes: one of its own for each VMI."""

    first: int = 90000
    count: int = 10000


#: Numbers a QEMU uid range must never include (systemd's docs/UIDS-GIDS.md): root and the
#: distribution's system users, systemd's DynamicUser= range, nobody and 16-bit (uid_t) -1.
RESERVED_UIDS = (
    (0, 999, "root and system users"),
    (61184, 65519, "systemd's DynamicUser="),
    (65534, 65535, "nobody and the 16-bit (uid_t) -1"),
)
#: From 2^31 up, parts of the kernel (devpts, setfsuid) mistake uids for negative numbers.
MAX_UID = 2**31 - 1


@attrs.frozen(kw_only=True)
class Config:
    """vmid.yaml. Keys are camelCase, like the manifests they sit beside."""

    accelerator: Accelerator = Accelerator.AUTO
    qemu: str = "qemu-system-x86_64"
    qemuImg: str = "qemu-img"
    #: Each VMI's QEMU runs as a uid (and gid) of its own from this range.
    qemuUids: QemuUids = attrs.field(factory=QemuUids)
    #: Run every QEMU as root instead (logged as a warning at every start).
    qemuAsRoot: bool = False
    #: Replaced by qemuUids; only there to refuse it with a message saying so.
    qemuUser: str | None = None
    #: QEMU's seccomp sandbox (-sandbox on,...).
    sandbox: bool = True
    onDaemonStop: OnDaemonStop = OnDaemonStop.STOP
    #: Directories under which hostDisk volumes may live; empty refuses every hostDisk.
    hostDiskRoots: tuple[str, ...] = ()
    #: Where persistentVolumeClaim and dataVolume names map to `<dir>/<claimName>.img`;
    #: relative to the state directory unless absolute.
    volumesDir: str = "volumes"
    #: How long the claim files of a removed VM's DataVolumes are kept in volumesDir/.deleted.
    deletedVolumesKeepSeconds: int = 86400
    firmware: Firmware = attrs.field(factory=Firmware)
    podNetwork: PodNetwork = attrs.field(factory=PodNetwork)
    #: multus networkName -> host bridge; a name not listed means a bridge of that name.
    multusBridges: dict[str, str] = attrs.field(factory=dict)
    logs: Logs = attrs.field(factory=Logs)
    events: Events = attrs.field(factory=Events)
    images: Images = attrs.field(factory=Images)
    imageGC: ImageGC = attrs.field(factory=ImageGC)


def load_config(file: Path, required: bool) -> Config:
    """Read vmid.yaml; a missing file means all defaults unless it was asked for by name.

    Raises:
        ConfigError: the file is unreadable or has unknown keys or bad values.
    """
    try:
        # Non-blocking and checked on the fd: a FIFO as vmid.yaml must not wedge a SIGHUP.
        # Symlinks are followed: /etc/vmid is root's, and config management links files there.
        data = safefile.read_regular(file, load.MAX_BYTES + 1, follow=True)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{file}: no such configuration file") from None
        return Config()
    except FileRefused as exc:
        raise ConfigError(f"{file}: not read: it is {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {os.strerror(exc.errno or 0)}") from exc
    try:
        config = load.load_object(str(file), data, Config)
    except ManifestError as exc:
        raise ConfigError(f"invalid configuration:\n{exc}") from exc
    _check_network(file, config)
    _check_pool(file, IPv4Network(config.podNetwork.cidr))
    _check_host_paths(file, config)
    _check_multus_bridges(file, config)
    _check_logs(file, config.logs)
    _check_events(file, config.events)
    if config.deletedVolumesKeepSeconds < 0:
        raise ConfigError(f"{file}: deletedVolumesKeepSeconds: must not be negative (0: at once)")
    _check_images(file, config.images)
    _check_image_gc(file, config.imageGC)
    _check_qemu_uids(file, config)
    return config


def _check_images(file: Path, images: Images) -> None:
    for key, value in (("authFile", images.authFile), ("policy", images.policy)):
        if value is not None and not value.startswith("/"):
            raise ConfigError(f"{file}: images.{key}: {value!r} must be an absolute path")
    if images.maxDiskSize.value() < 1 << 20:
        raise ConfigError(f"{file}: images.maxDiskSize: {images.maxDiskSize} is below 1Mi")
    if not 0 < images.pullBackoffSeconds <= 300:
        raise ConfigError(
            f"{file}: images.pullBackoffSeconds: {images.pullBackoffSeconds:g} must be above 0 "
            "and at most 300"
        )


def _check_image_gc(file: Path, gc: ImageGC) -> None:
    low, high = gc.lowThresholdPercent, gc.highThresholdPercent
    if not 0 <= low <= high <= 100:
        raise ConfigError(
            f"{file}: imageGC: lowThresholdPercent ({low}) and highThresholdPercent ({high}) "
            "must be percents with low <= high"
        )
    if gc.minimumAgeSeconds < 0 or gc.periodSeconds <= 0:
        raise ConfigError(
            f"{file}: imageGC: minimumAgeSeconds must not be negative and periodSeconds must "
            "be above 0"
        )


def _check_qemu_uids(file: Path, config: Config) -> None:
    if config.qemuUser is not None:
        raise ConfigError(
            f"{file}: qemuUser: no longer supported: each VMI's QEMU now runs as a uid of its "
            "own from qemuUids (no user to create); remove qemuUser (qemuAsRoot: true runs "
            "QEMU as root, not recommended)"
        )
    uids = config.qemuUids
    last = uids.first + uids.count - 1
    if uids.count < 1 or uids.first < 0 or last > MAX_UID:
        raise ConfigError(
            f"{file}: qemuUids: first: {uids.first}, count: {uids.count} must name at least "
            f"one uid, all below 2^31; e.g. first: {QemuUids().first}, count: {QemuUids().count}"
        )
    for low, high, what in RESERVED_UIDS:
        if uids.first <= high and low <= last:
            raise ConfigError(
                f"{file}: qemuUids: {uids.first}-{last} overlaps {low}-{high} ({what}); "
                f"choose another range, e.g. first: {QemuUids().first}"
            )


def _check_network(file: Path, config: Config) -> None:
    pod = config.podNetwork
    try:
        pool = IPv4Network(pod.cidr)
    except ValueError as exc:
        raise ConfigError(f"{file}: podNetwork.cidr: {exc}; e.g. 10.0.2.0/24") from exc
    if pool.prefixlen > 30:
        raise ConfigError(f"{file}: podNetwork.cidr: {pool} is too small for a gateway and a VM")
    if not (pod.bridge.startswith("vmid") and len(pod.bridge) <= 15 and pod.bridge.isalnum()):
        raise ConfigError(
            f"{file}: podNetwork.bridge: {pod.bridge!r} must start with 'vmid' (vmid removes "
            "only links so named), be alphanumeric and at most 15 characters"
        )
    ports = pod.publishPorts
    if not 1 <= ports.min <= ports.max <= 65535:
        raise ConfigError(
            f"{file}: podNetwork.publishPorts: {{min: {ports.min}, max: {ports.max}}} is not a "
            "range of ports: 1 <= min <= max <= 65535"
        )
    for server in pod.dnsServers or ():
        try:
            IPv4Address(server)
        except ValueError as exc:
            raise ConfigError(f"{file}: podNetwork.dnsServers: {exc}") from exc
    for name, bridge in config.multusBridges.items():
        if not bridge or len(bridge) > 15 or "/" in bridge or bridge.isspace():
            raise ConfigError(f"{file}: multusBridges.{name}: {bridge!r} is not a link name")


#: Addresses no guest pool may take: the host's own loopback, what the kernel and routers treat
#: specially, and "this network" (RFC 6890).
_SPECIAL_NETWORKS = {
    IPv4Network("0.0.0.0/8"): "'this network', never a host's address",
    IPv4Network("127.0.0.0/8"): "loopback: guests would shadow the host's own services",
    IPv4Network("169.254.0.0/16"): "link-local, never routed",
    IPv4Network("224.0.0.0/4"): "multicast, never a host's address",
    IPv4Network("240.0.0.0/4"): "reserved, and its last address is the broadcast address",
}
#: Directories a hostDisk root may neither be, be inside, nor contain: the system's own and
#: vmid's state (a manifest could otherwise hand a guest /etc/shadow, /dev/sda or another VM's
#: disks). With `--root`, vmid's own directories move, but a production host's do not.
_SYSTEM_DIRS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/vmid",
    "/var/log/vmid",
)


def _check_pool(file: Path, pool: IPv4Network) -> None:
    for special, why in _SPECIAL_NETWORKS.items():
        if pool.overlaps(special):
            raise ConfigError(
                f"{file}: podNetwork.cidr: {pool} overlaps {special}, {why}; "
                "use a private range such as 10.0.2.0/24"
            )


def _check_host_paths(file: Path, config: Config) -> None:
    for root in config.hostDiskRoots:
        why = _not_a_root(root)
        if why:
            raise ConfigError(f"{file}: hostDiskRoots: {root!r} {why}")
    volumes = Path(config.volumesDir)
    if ".." in volumes.parts:
        raise ConfigError(
            f"{file}: volumesDir: {config.volumesDir!r} must not contain '..': a relative "
            "volumesDir stays inside vmid's state directory"
        )
    if volumes.is_absolute() and _system_dir(str(volumes)):
        raise ConfigError(
            f"{file}: volumesDir: {config.volumesDir!r} is or holds a system directory "
            f"({_system_dir(str(volumes))}): claims would name files there"
        )


def _not_a_root(root: str) -> str | None:
    """Why `root` cannot hold hostDisk volumes, or None."""
    if not root.startswith("/"):
        return "must be an absolute path: vmid's working directory is no place for disks"
    if ".." in root.split("/"):
        return "must not contain '..': name the directory itself"
    system = _system_dir(root)
    if system:
        return (
            f"is or holds a system directory ({system}): a manifest could hand a guest "
            "the host's files; use a directory of its own, such as /srv/vmid-disks"
        )
    return None


def _system_dir(path: str) -> str | None:
    """The system directory `path` is, is inside, or contains (`/` contains them all)."""
    normal = os.path.normpath(path).rstrip("/") + "/"
    for system in _SYSTEM_DIRS:
        if normal.startswith(system + "/") or (system + "/").startswith(normal):
            return system
    return None


def _check_multus_bridges(file: Path, config: Config) -> None:
    for name, bridge in config.multusBridges.items():
        if bridge == "lo":
            raise ConfigError(
                f"{file}: multusBridges.{name}: 'lo' is the loopback device, not a bridge: "
                "guests would reach the host's local services"
            )
        if bridge.startswith("vmid"):
            raise ConfigError(
                f"{file}: multusBridges.{name}: {bridge!r} is a name vmid manages (its pod "
                "bridge and its taps are vmid*): name a bridge of your own"
            )


def _check_logs(file: Path, logs: Logs) -> None:
    size = logs.maxSize.exact
    if not MIN_LOG_SIZE <= size <= MAX_LOG_SIZE:
        raise ConfigError(
            f"{file}: logs.maxSize: {logs.maxSize} is out of range: from 4Ki to 1Ti, e.g. 2Mi"
        )
    if not 0 <= logs.maxBackups <= MAX_LOG_BACKUPS:
        raise ConfigError(f"{file}: logs.maxBackups: {logs.maxBackups} is not from 0 to 100")
    if logs.keepAfterRemovalSeconds < 0:
        raise ConfigError(
            f"{file}: logs.keepAfterRemovalSeconds: must not be negative (0 deletes at once)"
        )


def _check_events(file: Path, events: Events) -> None:
    if events.keepAfterRemovalSeconds < 0:
        raise ConfigError(
            f"{file}: events.keepAfterRemovalSeconds: must not be negative (0 deletes at once)"
        )
