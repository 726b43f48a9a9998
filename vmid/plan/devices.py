"""The devices that are not disks or NICs: console, graphics, guest agent, balloon and the rest."""

from __future__ import annotations

from collections.abc import Iterator

from vmid.api import types as t
from vmid.plan.context import Context
from vmid.plan.ids import CONSOLE_CHARDEV
from vmid.plan.model import Access, device_id
from vmid.plan.qemu import options

CONSOLE_SOCKET = "console.sock"
VNC_SOCKET = "vnc.sock"
AGENT_SOCKET = "qga.sock"
_VIDEO = {
    t.VideoType.VGA: "VGA",
    t.VideoType.CIRRUS: "cirrus-vga",
    t.VideoType.VIRTIO: "virtio-vga",
    t.VideoType.RAMFB: "ramfb",
    t.VideoType.BOCHS: "bochs-display",
}
_PANIC = {t.PanicModel.ISA: "pvpanic", t.PanicModel.PVPANIC: "pvpanic-pci"}


def needs_usb(devices: t.Devices) -> bool:
    """Whether any disk or input sits on USB, so a qemu-xhci controller must exist."""
    targets = [d.disk or d.cdrom or d.lun for d in devices.disks]
    return any(target and target.bus is t.Bus.USB for target in targets) or any(
        i.bus is t.InputBus.USB for i in _inputs(devices)
    )


def usb_controller(ctx: Context) -> Iterator[str]:
    """The USB controller, when a disk or input needs one; before them, as QEMU needs it first."""
    if needs_usb(ctx.vmi.spec.domain.devices):
        yield from ("-device", options("qemu-xhci", {"id": "usb"}))


def console(ctx: Context, log: str) -> Iterator[str]:
    """The serial console on a unix socket, everything it prints also sent to `log`.

    The log QEMU gets is a pipe (an fd in an fdset; logappend, as QEMU cannot truncate a pipe)
    vmid drains into a bounded file: a guest flooding its serial port fills no disk.
    """
    if ctx.vmi.spec.domain.devices.autoattachSerialConsole is False:
        return
    yield "-chardev"
    yield options(
        "socket",
        {
            "id": CONSOLE_CHARDEV,
            "path": CONSOLE_SOCKET,
            "server": True,
            "wait": False,
            "logfile": ctx.files.add(log, Access.LOG),
            "logappend": True,
        },
    )
    yield from ("-device", options("isa-serial", {"chardev": CONSOLE_CHARDEV, "id": "serial0"}))


def graphics(ctx: Context) -> Iterator[str]:
    """VNC on a unix socket and a video card, unless autoattachGraphicsDevice is false."""
    devices = ctx.vmi.spec.domain.devices
    if devices.autoattachGraphicsDevice is False:
        return
    # password=on: no viewer gets in until `vmid vnc` sets a one-time password over QMP (the
    # socket is QEMU's user's, but `vmid vnc` relays it to a TCP port any local user can reach).
    yield from ("-vnc", f"unix:{VNC_SOCKET},password=on")
    video = devices.video.type if devices.video and devices.video.type else t.VideoType.VGA
    extra = {"vgamem_mb": 16} if video is t.VideoType.VGA else {}
    yield from ("-device", options(_VIDEO[video], {"id": "video0", **extra}))


def guest_agent() -> Iterator[str]:
    """The virtio-serial channel qemu-guest-agent talks on (KubeVirt always adds it)."""
    yield from ("-device", options("virtio-serial-pci", {"id": "virtio-serial0"}))
    yield "-chardev"
    yield options(
        "socket", {"id": "charchannel0", "path": AGENT_SOCKET, "server": True, "wait": False}
    )
    yield "-device"
    yield options(
        "virtserialport",
        {
            "bus": "virtio-serial0.0",
            "chardev": "charchannel0",
            "id": "channel0",
            "name": "org.qemu.guest_agent.0",
        },
    )


def misc(ctx: Context) -> Iterator[str]:
    """Balloon, RNG, inputs, watchdog, panic devices and sound, as the spec asks."""
    devices = ctx.vmi.spec.domain.devices
    if devices.autoattachMemBalloon is not False:
        yield "-device"
        yield options(
            ctx.virtio_model("virtio-balloon-pci"), {"id": "balloon0", "free-page-reporting": True}
        )
    if devices.rng is not None:
        yield from ("-object", options("rng-random", {"id": "objrng0", "filename": "/dev/urandom"}))
        yield from (
            "-device",
            options(ctx.virtio_model("virtio-rng-pci"), {"rng": "objrng0", "id": "rng0"}),
        )
    for device in _inputs(devices):
        driver = "usb-tablet" if device.bus is t.InputBus.USB else "virtio-tablet-pci"
        bus = "usb.0" if device.bus is t.InputBus.USB else None
        yield from ("-device", options(driver, {"id": device_id("input", device.name), "bus": bus}))
    yield from _watchdog(devices.watchdog)
    for index, panic in enumerate(devices.panicDevices):
        if panic.model in _PANIC:
            yield from ("-device", options(_PANIC[panic.model], {"id": f"panic{index}"}))
    yield from _sound(devices.sound)


def _inputs(devices: t.Devices) -> tuple[t.Input, ...]:
    if devices.inputs or not devices.autoattachInputDevice:
        return devices.inputs
    return (t.Input(name="default-0", type=t.InputType.TABLET, bus=t.InputBus.USB),)


def _watchdog(watchdog: t.Watchdog | None) -> Iterator[str]:
    if watchdog is None or watchdog.i6300esb is None:
        return
    action = watchdog.i6300esb.action or t.WatchdogAction.RESET
    yield from ("-device", options("i6300esb", {"id": device_id("watchdog", watchdog.name)}))
    yield from ("-action", options(None, {"watchdog": action.value}))


def _sound(sound: t.Sound | None) -> Iterator[str]:
    if sound is None:
        return
    # Without an audiodev QEMU falls back to the host's ALSA and logs errors; the guest only
    # needs the device to exist.
    yield from ("-audiodev", options("none", {"id": "audio0"}))
    ident = device_id("sound", sound.name or "")  # validation refuses a sound without a name
    if sound.model is t.SoundModel.AC97:
        yield from ("-device", options("AC97", {"id": ident, "audiodev": "audio0"}))
        return
    yield from ("-device", options("ich9-intel-hda", {"id": ident}))
    yield from ("-device", options("hda-duplex", {"bus": f"{ident}.0", "audiodev": "audio0"}))
