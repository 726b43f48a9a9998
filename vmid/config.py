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
from vmid.errors import ConfigError, ManifestError

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
class Logs:
    """Bounds on every log file a guest (or a DHCP client) can make grow, as virtlogd's."""

    #: A log file is rotated when it reaches this size (console.log -> console.log.1 ...).
    maxSize: Quantity = attrs.field(factory=lambda: Quantity.parse("2Mi"))
    #: How many rotated files are kept beside the current one.
    maxBackups: int = 3
    #: A removed VMI's log directory is deleted this long after its removal.
    keepAfterRemovalSeconds: int = 86400


@attrs.frozen(kw_only=True)
class Config:
    """vmid.yaml. Keys are camelCase, like the manifests they sit beside."""

    accelerator: Accelerator = Accelerator.AUTO
    qemu: str = "qemu-system-x86_64"
    qemuImg: str = "qemu-img"
    #: Run QEMU as this user (QEMU's -runas) instead of vmid's own.
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
    logs: Logs = attrs.field(factory=Logs)


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
    _check_logs(file, config.logs)
    return config


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
