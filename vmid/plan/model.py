"""The LaunchPlan value: everything the runtime needs to prepare, start and stop one VMI."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from vmid.api import types as t
from vmid.plan.qemu import options

#: The fd `vmid render` shows for the control monitor; the runtime passes its own number.
CONTROL_FD = 3
CONTROL_CHARDEV = "vmid-control"


#: The fds `vmid render` shows for the taps, in order; the runtime passes its own numbers.
TAP_FD_BASE = 4


def control_chardev(fd: int) -> str:
    """The -chardev value of vmid's control monitor: a listening socket QEMU inherits as `fd`."""
    return f"socket,id={CONTROL_CHARDEV},fd={fd},server=on,wait=off"


def tap_netdev(netdev: str, fd: int) -> str:
    """The -netdev value of a tap vmid opened and QEMU inherits as `fd`.

    By fd, as libvirt does: QEMU (perhaps unprivileged) never opens /dev/net/tun itself.
    """
    return f"tap,id={netdev},fd={fd}"


def device_id(kind: str, name: str) -> str:
    """QEMU's id for a device the manifest names: `ua-disk-root`, `ua-interface-default`.

    KubeVirt's user alias (`ua-NAME`) with the kind inside it: a disk, an interface and an input
    may share a name, QEMU's ids may not.
    """
    return f"ua-{kind}-{name}"


def fdset_path(fdset: int) -> str:
    """The name QEMU opens for a passed file: it dups the set's fd of the right access mode."""
    return f"/dev/fdset/{fdset}"


def add_fd(fd: int, fdset: int, opaque: str) -> str:
    """The -add-fd value putting inherited `fd` into `fdset`; `opaque` says which file it is."""
    return options(None, {"fd": fd, "set": fdset, "opaque": opaque})


class Access(enum.Enum):
    """How vmid opens a passed file; QEMU can only use it the same way."""

    READ = "read"  # O_RDONLY: read-only nodes (images under an overlay, ISOs, firmware code)
    WRITE = "write"  # O_RDWR: writable nodes
    #: A log QEMU writes (its console's): the write end of a pipe vmid drains into a bounded
    #: file (runtime/logs.py); QEMU never holds the file itself.
    LOG = "log"


@attrs.frozen(kw_only=True)
class PassedFile:
    """A file vmid opens and QEMU inherits in an fdset: QEMU never opens a disk by its path.

    With `root`, `path` is resolved beneath that directory without following any symlink.
    """

    fdset: int
    #: The fd `vmid render` shows; the runtime passes its own number.
    fd: int
    path: str
    access: Access
    root: str | None = None
    #: A symlink owned by root to a block device may stand for the file (claims, as documented).
    blockDeviceLink: bool = False


class FileSets:
    """Collects the files of a plan being built, one fdset each, numbered from 1."""

    def __init__(self) -> None:
        self._files: list[PassedFile] = []

    def add(
        self, path: str, access: Access, root: str | None = None, block_device_link: bool = False
    ) -> str:
        """Pass `path` to QEMU; the `filename` QEMU gets for it (`/dev/fdset/N`)."""
        fdset = len(self._files) + 1
        self._files.append(
            PassedFile(
                fdset=fdset,
                fd=0,
                path=path,
                access=access,
                root=root,
                blockDeviceLink=block_device_link,
            )
        )
        return fdset_path(fdset)

    def numbered(self, first_fd: int) -> tuple[PassedFile, ...]:
        """The files with the fds `vmid render` shows: `first_fd` on, in order."""
        return tuple(attrs.evolve(f, fd=first_fd + i) for i, f in enumerate(self._files))


@attrs.frozen(kw_only=True)
class ImageOverlay:
    """A qcow2 overlay on a containerDisk image from vmid's image store; writes die with the VMI."""

    path: str
    image: str
    #: The manifest's volume it is (status.volumeStatus names it).
    volume: str = ""
    #: The image's file, when containerDisk.path names one (else the one file in /disk/).
    diskPath: str | None = None
    #: Kubernetes' imagePullPolicy: Always, IfNotPresent or Never.
    pullPolicy: str = "IfNotPresent"


@attrs.frozen(kw_only=True)
class FileOverlay:
    """A qcow2 overlay on a host file (an ephemeral volume on a claim), discarded at stop."""

    path: str
    backing: str
    #: `backing` is resolved beneath it, as a claim (PassedFile.root, blockDeviceLink).
    root: str | None = None


@attrs.frozen(kw_only=True)
class EmptyDisk:
    """A sparse qcow2 of `size` bytes, created once and kept while the VMI exists."""

    path: str
    size: int


@attrs.frozen(kw_only=True)
class HostFile:
    """A raw disk file owned by the user: must exist, or is created sparse with `createSize`."""

    path: str
    createSize: int | None = None
    #: `path` is resolved (and created) beneath it without following symlinks.
    root: str | None = None
    #: A root-owned symlink to a block device may stand for the file (claims).
    blockDeviceLink: bool = False


@attrs.frozen(kw_only=True)
class IsoFile:
    """One file of a generated ISO."""

    name: str
    content: bytes


@attrs.frozen(kw_only=True)
class CloudInitIso:
    """A cloud-init NoCloud (`cidata`) or ConfigDrive (`config-2`) ISO, rebuilt at every start."""

    path: str
    label: str
    files: tuple[IsoFile, ...]


@attrs.frozen(kw_only=True)
class EfiVars:
    """The guest's UEFI variable store, copied from `template` unless already there."""

    path: str
    template: str


Prepared = ImageOverlay | FileOverlay | EmptyDisk | HostFile | CloudInitIso | EfiVars


@attrs.frozen(kw_only=True)
class Port:
    """A port forwarded from the host to the guest (masquerade interfaces)."""

    protocol: str
    port: int


@attrs.frozen(kw_only=True)
class Tap:
    """One guest NIC's tap device, which the network layer creates and attaches to `bridge`."""

    interface: str
    device: str
    #: The -netdev id; `vmid render` shows the tap at fd TAP_FD_BASE + its index in `taps`.
    netdev: str
    mac: str
    bridge: str
    network: str
    masquerade: bool
    ports: tuple[Port, ...] = ()
    linkUp: bool = True


@attrs.frozen(kw_only=True)
class Sockets:
    """Absolute paths of the VM's sockets (QEMU sees them relative to `LaunchPlan.cwd`)."""

    control: str
    qmp: str
    console: str | None
    vnc: str | None
    guestAgent: str


@attrs.frozen(kw_only=True)
class Cgroup:
    """The limits of the VMI's own cgroup (its systemd scope), as systemd's properties name
    them; None: no limit (plan/resources.py computes them)."""

    #: CPUQuota=, in microseconds of CPU time a second (limits.cpu).
    cpuQuotaPerSecUSec: int | None = None
    #: MemoryMax=, in bytes (limits.memory plus QEMU's overhead).
    memoryMax: int | None = None
    #: CPUWeight= (1-10000), from the CPU request.
    cpuWeight: int | None = None


@attrs.frozen(kw_only=True)
class LaunchPlan:
    """How to run one VMI: QEMU's argv, the files and taps it needs, and how to stop it."""

    #: The VMI's namespace/name (vmid/api/names.py).
    name: str
    uuid: str
    argv: tuple[str, ...]
    #: QEMU runs here; socket paths in argv are relative to it, so long names fit sun_path.
    cwd: str
    env: dict[str, str]
    consoleLog: str
    qemuLog: str
    sockets: Sockets
    prepare: tuple[Prepared, ...]
    taps: tuple[Tap, ...]
    #: The files QEMU gets by fd (-add-fd); after the taps' fds in `vmid render`.
    files: tuple[PassedFile, ...]
    gracePeriodSeconds: int
    acpi: bool
    startPaused: bool
    #: The probes, defaulted (the daemon runs them: runtime/probes.py).
    readinessProbe: t.Probe | None = None
    livenessProbe: t.Probe | None = None
    #: Its cgroup's limits, where systemd gives it one (runtime/instance.py).
    cgroup: Cgroup = attrs.field(factory=Cgroup)

    def argv_for(
        self, control_fd: int, tap_fds: Mapping[str, int], file_fds: Mapping[int, int]
    ) -> tuple[str, ...]:
        """The argv with the fds QEMU will inherit in place of `vmid render`'s.

        The control socket; a tap per netdev id (`tap_fds`); a file per fdset (`file_fds`).
        """
        real = {control_chardev(CONTROL_FD): control_chardev(control_fd)}
        for index, tap in enumerate(self.taps):
            real[tap_netdev(tap.netdev, TAP_FD_BASE + index)] = tap_netdev(
                tap.netdev, tap_fds[tap.netdev]
            )
        for file in self.files:
            real[add_fd(file.fd, file.fdset, file.path)] = add_fd(
                file_fds[file.fdset], file.fdset, file.path
            )
        return tuple(real.get(arg, arg) for arg in self.argv)
