"""The LaunchPlan value: everything the runtime needs to prepare, start and stop one VMI."""

from __future__ import annotations

import attrs

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


@attrs.frozen(kw_only=True)
class ImageOverlay:
    """A qcow2 overlay on a containerDisk image from vmid's image store; writes die with the VMI."""

    path: str
    image: str


@attrs.frozen(kw_only=True)
class FileOverlay:
    """A qcow2 overlay on a host file (an ephemeral volume on a claim), discarded at stop."""

    path: str
    backing: str


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
class LaunchPlan:
    """How to run one VMI: QEMU's argv, the files and taps it needs, and how to stop it."""

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
    gracePeriodSeconds: int
    acpi: bool
    startPaused: bool

    def argv_for(self, control_fd: int, tap_fds: dict[str, int]) -> tuple[str, ...]:
        """The argv with the fds QEMU will inherit: the control socket, a tap per netdev."""
        real = {control_chardev(CONTROL_FD): control_chardev(control_fd)}
        for index, tap in enumerate(self.taps):
            real[tap_netdev(tap.netdev, TAP_FD_BASE + index)] = tap_netdev(
                tap.netdev, tap_fds[tap.netdev]
            )
        return tuple(real.get(arg, arg) for arg in self.argv)
