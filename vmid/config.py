"""The daemon configuration (`vmid.yaml`) and the host paths derived from `--root`.

Every key has a built-in default, documented in conf/vmid.yaml; the file only overrides them.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import attrs

from vmid.api import load
from vmid.api.types import Enum
from vmid.errors import ConfigError, ManifestError


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
    firmware: Firmware = attrs.field(factory=Firmware)
    podNetwork: PodNetwork = attrs.field(factory=PodNetwork)
    #: multus networkName -> host bridge; a name not listed means a bridge of that name.
    multusBridges: dict[str, str] = attrs.field(factory=dict)


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


@attrs.frozen
class Paths:
    """Where vmid keeps everything, all under one root (`/` in production).

    The root is made absolute: QEMU runs in the VM's runtime directory, so every path in its
    argv must be absolute.
    """

    root: Path = attrs.field(converter=_absolute)

    @property
    def spool(self) -> Path:
        return self.root / "etc/vmid/instances"

    @property
    def config_file(self) -> Path:
        return self.root / "etc/vmid/vmid.yaml"

    @property
    def state(self) -> Path:
        return self.root / "var/lib/vmid"

    @property
    def runtime(self) -> Path:
        return self.root / "run/vmid"

    @property
    def logs(self) -> Path:
        return self.root / "var/log/vmid"

    def instance_state(self, name: str) -> Path:
        return self.state / "instances" / name

    def instance_runtime(self, name: str) -> Path:
        return self.runtime / "instances" / name

    def instance_logs(self, name: str) -> Path:
        return self.logs / name

    def volumes(self, config: Config) -> Path:
        return self.state / config.volumesDir


def load_config(file: Path, required: bool) -> Config:
    """Read vmid.yaml; a missing file means all defaults unless it was asked for by name.

    Raises:
        ConfigError: the file is unreadable or has unknown keys or bad values.
    """
    try:
        with file.open("rb") as stream:
            data = stream.read(load.MAX_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{file}: no such configuration file") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {os.strerror(exc.errno or 0)}") from exc
    try:
        config = load.load_object(str(file), data, Config)
    except ManifestError as exc:
        raise ConfigError(f"invalid configuration:\n{exc}") from exc
    _check_network(file, config)
    _check_qemu_uids(file, config)
    return config


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
    for server in pod.dnsServers or ():
        try:
            IPv4Address(server)
        except ValueError as exc:
            raise ConfigError(f"{file}: podNetwork.dnsServers: {exc}") from exc
    for name, bridge in config.multusBridges.items():
        if not bridge or len(bridge) > 15 or "/" in bridge or bridge.isspace():
            raise ConfigError(f"{file}: multusBridges.{name}: {bridge!r} is not a link name")
