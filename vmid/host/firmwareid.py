"""The firmware UUID a VMI keeps from its first start until it is removed (cloud-init's
instance-id: a resize must not make a guest redo its first boot)."""

from __future__ import annotations

import uuid
from pathlib import Path

import attrs

from vmid.api import defaults
from vmid.api import types as t
from vmid.host import safefile

FIRMWARE_UUID_FILE = "firmware-uuid"


def stored(state: Path) -> str | None:
    """The UUID recorded in the VMI's state directory, if it has one."""
    try:
        value = (state / FIRMWARE_UUID_FILE).read_text().strip()
        uuid.UUID(value)
    except (OSError, ValueError):
        return None
    return value


def generated(vmi: t.VirtualMachineInstance) -> bool:
    """Whether the VMI's firmware UUID is the daemon's to choose (the manifest sets none)."""
    return vmi.spec.domain.firmware_uuid() == defaults.firmware_uuid(vmi.metadata.name or "")


def kept(
    vmi: t.VirtualMachineInstance, state: Path, durable: bool = True
) -> t.VirtualMachineInstance:
    """The VMI with the UUID it keeps: its own, else the recorded one, else a new random one
    (recorded), as KubeVirt gives a new standalone VMI a new UUID.

    `durable`: a new record is synced before this returns; False: the caller syncs it
    (`identity.sync_records`) before the guest runs.
    """
    if not generated(vmi):
        return vmi
    value = stored(state)
    if value is None:
        value = str(uuid.uuid4())
        state.mkdir(parents=True, exist_ok=True)
        # Durable and whole: a torn file would give the VMI a new UUID at the next start.
        text = f"{value}\n".encode()
        safefile.write_atomically(state / FIRMWARE_UUID_FILE, text, durable=durable)
    return with_uuid(vmi, value)


def with_uuid(vmi: t.VirtualMachineInstance, value: str) -> t.VirtualMachineInstance:
    firmware = attrs.evolve(vmi.spec.domain.firmware or t.Firmware(), uuid=value)
    domain = attrs.evolve(vmi.spec.domain, firmware=firmware)
    return attrs.evolve(vmi, spec=attrs.evolve(vmi.spec, domain=domain))
