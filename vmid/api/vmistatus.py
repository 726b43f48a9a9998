"""A VMI object as vmid's status file holds it: KubeVirt's `VirtualMachineInstanceStatus` (with
vmid's own `qemu` block) and the metadata readers use, as frozen values; the daemon writes it and
every reader (`vmid get`, `describe`, the control verbs, a daemon taking over) reads it.

Reading is tolerant (a file an older vmid wrote lacks fields: they default) and keeps the whole
object as read in `VMIObject.data`, so `vmid get -o yaml` prints what no field here names. Pure
data: reading and writing files is vmid/runtime/status.py's. NamedTuples, read by the small
reader at the end, not attrs and cattrs (nor dataclasses, which import `inspect`): every reading
verb imports this module, and those take longer to import than the rest of `vmid get` (issue 16).
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from vmid.api import names

#: The spool file a VMI comes from, kept in its object: a file that no longer parses still names
#: the VMI it held, and a file that holds no VMI is shown by its own name.
FILE_ANNOTATION = "vmid.io/manifest-file"
#: The default of a mapping field: one shared empty mapping, which nothing can change.
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class Phase(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def final(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Condition(NamedTuple):
    """v1.VirtualMachineInstanceCondition (vmid writes every field, empty ones too)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    lastTransitionTime: str = ""

    @property
    def true(self) -> bool:
        return self.status == "True"


class PhaseTransition(NamedTuple):
    """v1.VirtualMachineInstancePhaseTransitionTimestamp: when the VMI entered `phase`."""

    phase: Phase
    phaseTransitionTimestamp: str


class NetworkInterface(NamedTuple):
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


class VolumeStatus(NamedTuple):
    """v1.VolumeStatus of a containerDisk: the image it runs, by digest (`REPO@sha256:...`, as
    Kubernetes' imageID), and the disk's size."""

    name: str
    target: str = ""
    containerDiskVolume: Mapping[str, Any] = _EMPTY
    imageID: str = ""
    size: int = 0


class QemuStatus(NamedTuple):
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


class VMIStatus(NamedTuple):
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
    guestOSInfo: Mapping[str, str] = _EMPTY
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


class ObjectMeta(NamedTuple):
    """The metadata readers use. `namespace` is empty in an object written before vmid knew
    namespaces (it is `default`'s); `name` is empty in a spool file's object (it has none)."""

    name: str = ""
    namespace: str = ""
    creationTimestamp: str = ""
    deletionTimestamp: str = ""
    deletionGracePeriodSeconds: int | None = None
    annotations: Mapping[str, str] = _EMPTY
    labels: Mapping[str, str] = _EMPTY


class VMIObject(NamedTuple):
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
            metadata = _read(ObjectMeta, data.get("metadata") or {})
            status = _read(VMIStatus, data.get("status") or {})
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
        return _read(NetworkInterface, data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"not an interface: {exc!r}") from exc


def _plain(value: Any, omit_defaults: bool = False) -> dict[str, Any]:
    """A record's fields as JSON data (enums as their value, tuples as lists); its fields at
    their default left out if `omit_defaults`."""
    defaults = value._field_defaults
    return {
        name: _json(field)
        for name, field in zip(value._fields, value, strict=True)
        if not omit_defaults or name not in defaults or field != defaults[name]
    }


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _json(value: Any) -> Any:
    if type(value) in _SCALARS:  # most values: before the checks (an ABC's isinstance is slow)
        return value
    if isinstance(value, enum.Enum):
        return str(value)
    if _record(type(value)):
        return _plain(value)
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value


def _record(cls: object) -> bool:
    """Whether `cls` is one of the NamedTuples here."""
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


_R = TypeVar("_R", bound=tuple[Any, ...])


def _read(cls: type[_R], data: object) -> _R:
    """A `cls` from its data: each field converted to its type, as cattrs did (`str(5)` is
    "5"); a missing field defaults, a missing required one is a TypeError, others are ignored.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} is an object, not {type(data).__name__}")
    readers = _READERS.get(cls)
    if readers is None:  # the first of its class: its fields' types are looked at once
        readers = {name: _reader(t) for name, t in typing.get_type_hints(cls).items()}
        _READERS[cls] = readers
    return cls(**{name: read(data[name]) for name, read in readers.items() if name in data})


_READERS: dict[type, dict[str, Callable[[Any], Any]]] = {}


def _reader(hint: Any) -> Callable[[Any], Any]:
    """How to read a value of type `hint`: the types vmistatus's fields have."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType:  # X | None
        (inner,) = (a for a in args if a is not type(None))
        read = _reader(inner)
        if _record(inner):  # written `{}` when there is none (qemu)
            return lambda v: read(v) if v else None
        return lambda v: None if v is None else read(v)
    if origin is tuple:  # tuple[X, ...]
        item = _reader(args[0])
        return lambda v: tuple(item(i) for i in v)
    if origin is Mapping:
        value = _reader(args[1])
        return lambda v: {str(k): value(i) for k, i in v.items()}
    if _record(hint):
        return functools.partial(_read, hint)
    return (lambda v: v) if hint is Any else typing.cast(Callable[[Any], Any], hint)
