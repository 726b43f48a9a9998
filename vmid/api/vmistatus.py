"""A VMI object as vmid's status file holds it: KubeVirt's `VirtualMachineInstanceStatus` (with
vmid's own `qemu` block) and the metadata readers use, as frozen values; the daemon writes it and
every reader (`vmid get`, `describe`, the control verbs, a daemon taking over) reads it.

Reading is tolerant (a file an older vmid wrote lacks fields: they default) and keeps the whole
object as read in `VMIObject.data`, so `vmid get -o yaml` prints what no field here names. Pure
data: reading and writing files is vmid/runtime/status.py's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs

from vmid.api import names

#: The spool file a VMI comes from, kept in its object: a file that no longer parses still names
#: the VMI it held, and a file that holds no VMI is shown by its own name.
FILE_ANNOTATION = "vmid.io/manifest-file"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def final(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


@attrs.frozen
class Condition:
    """v1.VirtualMachineInstanceCondition (vmid writes every field, empty ones too)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    lastTransitionTime: str = ""

    @property
    def true(self) -> bool:
        return self.status == "True"


@attrs.frozen
class PhaseTransition:
    """v1.VirtualMachineInstancePhaseTransitionTimestamp: when the VMI entered `phase`."""

    phase: Phase
    phaseTransitionTimestamp: str


@attrs.frozen
class NetworkInterface:
    """v1.VirtualMachineInstanceNetworkInterface (empty fields are not written)."""

    name: str = ""
    mac: str = ""
    ipAddress: str = ""
    ipAddresses: tuple[str, ...] = ()
    infoSource: str = ""
    linkState: str = ""
    podInterfaceName: str = ""
    interfaceName: str = ""
    queueCount: int = 0


@attrs.frozen
class VolumeStatus:
    """v1.VolumeStatus of a containerDisk: the image it runs, by digest (`REPO@sha256:...`, as
    Kubernetes' imageID), and the disk's size."""

    name: str
    target: str = ""
    containerDiskVolume: Mapping[str, Any] = attrs.field(factory=dict)
    imageID: str = ""
    size: int = 0


@attrs.frozen
class QemuStatus:
    """vmid's extension: the VMI's QEMU, its sockets and its real argv (every field written).

    `uid` is None for a QEMU an older vmid started (it kept no record); `acpi` False when the
    guest has no ACPI power button (soft-reboot cannot work)."""

    pid: int | None = None
    uid: int | None = None
    qmpSocket: str | None = None
    consoleSocket: str | None = None
    vncSocket: str | None = None
    guestAgentSocket: str | None = None
    argv: tuple[str, ...] = ()
    acpi: bool = True


@attrs.frozen
class VMIStatus:
    """The fields of v1.VirtualMachineInstanceStatus vmid fills, and its `qemu` block (None
    until QEMU is launched, written `{}`). `phase` is None only in a file that has none."""

    phase: Phase | None = None
    phaseTransitionTimestamps: tuple[PhaseTransition, ...] = ()
    conditions: tuple[Condition, ...] = ()
    interfaces: tuple[NetworkInterface, ...] = ()
    qemu: QemuStatus | None = None
    reason: str = ""
    volumeStatus: tuple[VolumeStatus, ...] = ()
    #: From the guest agent: KubeVirt's v1.VirtualMachineInstanceGuestOSInfo, as it reports it.
    guestOSInfo: Mapping[str, str] = attrs.field(factory=dict)
    #: KubeVirt's: "frozen" while the guest's file systems are frozen (`vmid freeze`), else "".
    fsFreezeStatus: str = ""

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: str) -> bool:
        """Whether condition `type_` is there and True (absent: False, as kubectl shows it)."""
        found = self.condition(type_)
        return found is not None and found.true

    def to_data(self) -> dict[str, Any]:
        """The status as the status file holds it (keys in this order)."""
        data: dict[str, Any] = {
            "phase": str(self.phase or ""),
            "phaseTransitionTimestamps": [_plain(t) for t in self.phaseTransitionTimestamps],
            "conditions": [_plain(c) for c in self.conditions],
            "interfaces": [_plain(i, omit_defaults=True) for i in self.interfaces],
            "qemu": {} if self.qemu is None else _plain(self.qemu),
        }
        if self.guestOSInfo:
            data["guestOSInfo"] = dict(self.guestOSInfo)
        if self.fsFreezeStatus:
            data["fsFreezeStatus"] = self.fsFreezeStatus
        if self.volumeStatus:
            data["volumeStatus"] = [_plain(v) for v in self.volumeStatus]
        if self.reason:
            data["reason"] = self.reason
        return data


@attrs.frozen
class ObjectMeta:
    """The metadata readers use. `namespace` is empty in an object written before vmid knew
    namespaces (it is `default`'s); `name` is empty in a spool file's object (it has none)."""

    name: str = ""
    namespace: str = ""
    creationTimestamp: str = ""
    deletionTimestamp: str = ""
    deletionGracePeriodSeconds: int | None = None
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class VMIObject:
    """One object read from a status file: typed metadata and status, and `data`, the whole
    object as read (what `-o json|yaml` prints)."""

    metadata: ObjectMeta
    status: VMIStatus
    data: Mapping[str, Any]

    @classmethod
    def from_data(cls, data: object) -> VMIObject:
        """Read an object; a missing field defaults, an unknown one is only in `data`.

        Raises:
            ValueError: not an object, or a field of another type than vmid writes.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a VMI object is a JSON object, not {type(data).__name__}")
        try:
            metadata = _CONVERTER.structure(data.get("metadata") or {}, ObjectMeta)
            status = _CONVERTER.structure(data.get("status") or {}, VMIStatus)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a VMI object vmid wrote: {exc!r}") from exc
        return cls(metadata, status, data)

    @property
    def key(self) -> str:
        """namespace/name (vmid/api/names.py)."""
        return names.key(self.metadata.namespace or None, self.metadata.name)

    @property
    def terminating(self) -> bool:
        """Its deletion has begun (vmid is stopping its QEMU, whatever for)."""
        return bool(self.metadata.deletionTimestamp)


def interface_data(interface: NetworkInterface) -> dict[str, Any]:
    """An interface as the status file holds it (its empty fields left out)."""
    return _plain(interface, omit_defaults=True)


def interface_from_data(data: Mapping[str, Any]) -> NetworkInterface:
    """An interface from its data (what `interface_data` gives, or the agent's merge of it).

    Raises:
        ValueError: a field of another type than KubeVirt's.
    """
    try:
        return _CONVERTER.structure(dict(data), NetworkInterface)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"not an interface: {exc!r}") from exc


def _plain(value: Any, omit_defaults: bool = False) -> dict[str, Any]:
    def keep(attribute: attrs.Attribute[Any], field: Any) -> bool:
        return not omit_defaults or field != attribute.default

    def plain(_: object, __: object, field: Any) -> Any:
        return str(field) if isinstance(field, enum.Enum) else field

    # attrs.asdict (not attr.asdict) makes tuples lists, as JSON has them.
    data: dict[str, Any] = attrs.asdict(value, filter=keep, value_serializer=plain)
    return data


def _converter() -> cattrs.Converter:
    # Plain, not detailed, validation: a reader wants one error to skip the file by, not a tree.
    converter = cattrs.Converter(detailed_validation=False)

    def structure_qemu(value: object, _: object) -> QemuStatus | None:
        return converter.structure(value, QemuStatus) if value else None

    converter.register_structure_hook(QemuStatus | None, structure_qemu)
    return converter


_CONVERTER = _converter()
