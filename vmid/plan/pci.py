"""q35's root bus: which of a plan's devices take a PCI slot on it, and whether they all fit."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence

from vmid.api.findings import Finding
from vmid.plan.model import device_id

#: Free slots on pcie.0 with -nodefaults: 32 less the host bridge (00.0) and the ICH9 LPC, AHCI
#: and SMBus functions (1f.*). Measured on QEMU 7.2: a 31st pci-testdev gets "PCI: no
#: slot/function available".
ROOT_BUS_SLOTS = 30
#: Drivers vmid plugs into the root bus (it names no bus for them): one slot each.
ROOT_BUS_DRIVERS = frozenset(
    {
        "AC97",
        "VGA",
        "bochs-display",
        "cirrus-vga",
        "e1000",
        "e1000e",
        "i6300esb",
        "ich9-intel-hda",
        "igb",
        "ne2k_pci",
        "pcnet",
        "pvpanic-pci",
        "qemu-xhci",
        "rtl8139",
        "virtio-balloon-pci",
        "virtio-blk-pci",
        "virtio-net-pci",
        "virtio-rng-pci",
        "virtio-scsi-pci",
        "virtio-serial-pci",
        "virtio-tablet-pci",
        "virtio-vga",
    }
)
#: The others: on the ISA, IDE, SCSI, USB, HDA or virtio-serial buses, or no bus (ramfb).
OTHER_DRIVERS = frozenset(
    {
        "hda-duplex",
        "ide-cd",
        "ide-hd",
        "isa-serial",
        "pvpanic",
        "ramfb",
        "scsi-cd",
        "scsi-hd",
        "usb-bot",
        "usb-storage",
        "usb-tablet",
        "virtserialport",
    }
)
_ID = re.compile(r"(?:^|,)id=([^,]*)")
_KINDS = {"disk": "disks on virtio", "interface": "interfaces", "input": "inputs on virtio"}


def root_bus_devices(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(driver, id) of every -device in `argv` that takes a slot on the root bus."""
    placed = []
    for flag, value in itertools.pairwise(argv):
        if flag != "-device":
            continue
        head = value.split(",", 1)[0]
        driver = head.removesuffix("-non-transitional").removesuffix("-transitional")
        assert driver in ROOT_BUS_DRIVERS or driver in OTHER_DRIVERS, f"unplaced {driver}"
        if driver in ROOT_BUS_DRIVERS:
            found = _ID.search(value)
            placed.append((driver, found.group(1) if found else ""))
    return placed


def check_fit(argv: Sequence[str]) -> list[Finding]:
    """A finding when the plan's PCI devices are more than q35's root bus has slots for."""
    placed = root_bus_devices(argv)
    if len(placed) <= ROOT_BUS_SLOTS:
        return []
    kinds = Counter(_kind(driver, ident) for driver, ident in placed)
    listing = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    return [
        Finding(
            ("spec", "domain", "devices"),
            f"{len(placed)} PCI devices do not fit on q35's root bus, which has room for "
            f"{ROOT_BUS_SLOTS}: {listing}; put disks on bus scsi (one controller holds them "
            "all) or sata",
        )
    ]


def _kind(driver: str, ident: str) -> str:
    for kind, text in _KINDS.items():
        if ident.startswith(device_id(kind, "")):
            return text
    return driver
