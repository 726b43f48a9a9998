"""A VMI's status as KubeVirt shapes it: the phase machine, conditions, and its status file.

The file holds the whole object (`vmid get -o yaml` prints it) and is replaced atomically, so a
reader never sees half of it.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmid.api.vmistatus import (
    Condition,
    NetworkInterface,
    ObjectMeta,
    PhaseTransition,
    QemuStatus,
    VMIObject,
    VMIStatus,
    VolumeStatus,
)
from vmid.api.vmistatus import Phase as Phase  # where the writer's users import it from
from vmid.errors import StateUnreadable
from vmid.host import safefile
from vmid.paths import Paths

if TYPE_CHECKING:
    from vmid.runtime.events import EventStore


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.SCHEDULED, Phase.FAILED}),
    Phase.SCHEDULED: frozenset({Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED}),
    Phase.RUNNING: frozenset({Phase.SUCCEEDED, Phase.FAILED}),
    Phase.SUCCEEDED: frozenset(),
    Phase.FAILED: frozenset(),
}


class IllegalTransition(AssertionError):
    """A phase change KubeVirt never makes: a bug in vmid, never the user's fault."""


def now() -> str:
    """The current time as Kubernetes prints it (RFC 3339, UTC, seconds)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: A status file holds one manifest (at most 256 KiB of YAML) and its status: far below this.
MAX_FILE_BYTES = 16 << 20
STATUS_FILE = "status.json"
#: KubeVirt's readiness gate on a VMI's pod: a paused VMI's pod, so the VMI, is not Ready.
UNPAUSED_GATE = "kubevirt.io/virtual-machine-unpaused"


class Status:
    """The live status of one VMI, written to `path` on every change; its events go to
    `events` (none kept without one)."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        on_write: Callable[[], None] = lambda: None,
        events: EventStore | None = None,
    ) -> None:
        self.path = path
        self._on_write = on_write
        self._events = events
        #: Its files are being removed: a late write would bring them back (`close`).
        self._closed = False
        self.manifest = manifest
        self.phase = Phase.PENDING
        self.reason = ""
        self.transitions: list[PhaseTransition] = [_transition(Phase.PENDING)]
        self.conditions: dict[str, Condition] = {}
        self.interfaces: list[NetworkInterface] = []
        #: KubeVirt's volumeStatus: a containerDisk's names the image (by digest) it runs.
        self.volumes: dict[str, VolumeStatus] = {}
        #: None until QEMU is launched.
        self.qemu: QemuStatus | None = None
        #: Whether the readinessProbe succeeds (None: the VMI has none), which Ready follows.
        self.probe_ready: bool | None = None
        #: KubeVirt's status.guestOSInfo, from the guest agent (empty: none reported).
        self.guest_os_info: dict[str, str] = {}
        #: KubeVirt's status.fsFreezeStatus: "frozen" while the guest's file systems are.
        self.fs_freeze_status = ""

    def __repr__(self) -> str:
        return f"<Status phase={self.phase} reason={self.reason!r}>"

    @classmethod
    def load(
        cls,
        path: Path,
        on_write: Callable[[], None] = lambda: None,
        events: EventStore | None = None,
    ) -> Status:
        """The status an earlier daemon wrote (raises OSError or ValueError)."""
        obj = VMIObject.from_data(read_json(path))
        recorded = obj.status
        if recorded.phase is None:
            raise ValueError("it records no phase")
        status = cls(path, {k: v for k, v in obj.data.items() if k != "status"}, on_write, events)
        status.phase = recorded.phase
        status.reason = recorded.reason
        status.transitions = list(recorded.phaseTransitionTimestamps)
        status.conditions = {c.type: c for c in recorded.conditions}
        status.interfaces = list(recorded.interfaces)
        status.volumes = {v.name: v for v in recorded.volumeStatus}
        status.guest_os_info = dict(recorded.guestOSInfo)
        status.fs_freeze_status = recorded.fsFreezeStatus
        status.qemu = recorded.qemu
        return status

    def event(self, type_: str, reason: str, message: str) -> None:
        """Record an event about this VMI (KubeVirt's Normal/Warning, a reason, a message)."""
        if self._events is not None:
            self._events.record(self.manifest, type_, reason, message)

    def transition(self, phase: Phase, reason: str = "") -> None:
        """Move to `phase`; a move KubeVirt never makes raises IllegalTransition."""
        if phase not in _NEXT[self.phase]:
            raise IllegalTransition(f"{self.phase} -> {phase}")
        self.phase = phase
        self.reason = reason or self.reason
        self.transitions.append(_transition(phase))

    def condition(self, type_: str, status: bool, reason: str = "", message: str = "") -> None:
        """Set a condition; its transition time changes only when its status does."""
        text = "True" if status else "False"
        old = self.conditions.get(type_)
        stamp = old.lastTransitionTime if old and old.status == text else now()
        self.conditions[type_] = Condition(type_, text, reason, message, stamp)

    def drop_condition(self, type_: str) -> None:
        """Remove a condition KubeVirt sets only while it holds (AgentConnected)."""
        self.conditions.pop(type_, None)

    @property
    def metadata(self) -> ObjectMeta:
        """The object's metadata, as readers read it (raises ValueError if malformed)."""
        return VMIObject.from_data(self.manifest).metadata

    @property
    def terminating(self) -> bool:
        """Its deletion has begun (vmid is stopping its QEMU, whatever for)."""
        return "deletionTimestamp" in self.manifest.get("metadata", {})

    def begin_deletion(self, grace: int) -> None:
        """Mark the VMI terminating as the API server marks a VMI being deleted: when the
        deletion began (kept if it had), and the grace it has before its QEMU is killed."""
        metadata = self.manifest.setdefault("metadata", {})
        metadata.setdefault("deletionTimestamp", now())
        metadata["deletionGracePeriodSeconds"] = grace
        self.update_ready()

    def forget_deletion(self) -> None:
        """A deletion an earlier daemon began is not this one's: it decides anew."""
        metadata = self.manifest.get("metadata", {})
        metadata.pop("deletionTimestamp", None)
        metadata.pop("deletionGracePeriodSeconds", None)

    def update_ready(self) -> None:
        """Ready, as KubeVirt derives it for a Running VMI: not while it is being deleted (its
        pod is terminating), nor while it is paused (its pod's readiness gate is False), nor
        while its readinessProbe fails (its pod's container is not ready)."""
        if self.phase is not Phase.RUNNING:
            return
        paused = self.conditions.get("Paused")
        if self.terminating:
            self.condition("Ready", False, "PodTerminating", "the VMI is terminating")
        elif paused is not None and paused.true:
            gate = f'the status of pod readiness gate "{UNPAUSED_GATE}" is not "True", but False'
            self.condition("Ready", False, "ReadinessGatesNotReady", gate)
        elif self.probe_ready is False:
            unready = "containers with unready status: [compute]"
            self.condition("Ready", False, "ContainersNotReady", unready)
        else:
            self.condition("Ready", True)

    def typed(self) -> VMIStatus:
        """This status as every reader reads it."""
        return VMIStatus(
            phase=self.phase,
            phaseTransitionTimestamps=tuple(self.transitions),
            conditions=tuple(self.conditions.values()),
            interfaces=tuple(self.interfaces),
            qemu=self.qemu,
            reason=self.reason,
            volumeStatus=tuple(self.volumes.values()),
            guestOSInfo=dict(self.guest_os_info),
            fsFreezeStatus=self.fs_freeze_status,
        )

    def close(self) -> None:
        """No more writes: the VMI's files are being removed. Something that still changes its
        status meanwhile (a broken edit of its file: Synchronized=False) must not recreate its
        directory after the removal, a status no daemon would remove (found by tests/chaos.py)."""
        self._closed = True

    def to_data(self) -> dict[str, Any]:
        """The whole object: the manifest (defaulted) and this status."""
        return {**self.manifest, "status": self.typed().to_data()}

    def write(self) -> None:
        """Replace the status file atomically (nothing once closed)."""
        if self._closed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One line: json.dumps indents only in pure Python, 5x slower than its C encoder, and a
        # status is written three times per launch (`vmid get -o json` shows it indented).
        _replace(self.path, json.dumps(self.to_data()) + "\n")
        self._on_write()


def _replace(path: Path, text: str) -> None:
    # Not durable: /run is a tmpfs, and the status is written on every change.
    safefile.write_atomically(path, text.encode())


def _transition(phase: Phase) -> PhaseTransition:
    return PhaseTransition(phase, now())


def read_json(path: Path) -> Any:
    """A JSON file vmid wrote, read without blocking on a FIFO or following a symlink."""
    return json.loads(safefile.read_regular(path, MAX_FILE_BYTES))


def status_patterns(paths: Paths) -> tuple[str, ...]:
    """Where status files are, as globs below `paths.runtime`: a VMI's (by namespace/name), and a
    spool file's that no VMI shows. The one place readers (`vmid get`, its watch) learn the
    layout."""
    patterns = (
        paths.instance_runtime("*/*") / STATUS_FILE,
        paths.spool_runtime / "*" / STATUS_FILE,
    )
    return tuple(str(p.relative_to(paths.runtime)) for p in patterns)


def status_files(paths: Paths) -> list[Path]:
    """Every status file there is now: VMIs by namespace/name, then spool files by name.

    Raises:
        StateUnreadable: no daemon ever ran with this root, or the caller may not read its
            state; an empty list is a daemon with no VMI.
    """
    found = []
    instances = paths.runtime_instances
    for namespace in _listed(paths.runtime, instances):
        for name in _listed(paths.runtime, instances / namespace):
            found.append(instances / namespace / name / STATUS_FILE)
    found += [
        paths.spool_runtime / n / STATUS_FILE for n in _listed(paths.runtime, paths.spool_runtime)
    ]
    return found


def read_objects(paths: Paths) -> list[VMIObject]:
    """Every object the daemon has written under its runtime directory (as `status_files`).

    Raises:
        StateUnreadable: as `status_files`, or a status file the caller may not read.
    """
    objects = []
    for path in status_files(paths):
        try:
            objects.append(VMIObject.from_data(read_json(path)))
        except PermissionError as exc:
            raise _denied(path) from exc
        except (OSError, ValueError):
            continue  # removed or being replaced right now (or no object vmid wrote)
    return objects


def _listed(runtime: Path, directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        if not runtime.is_dir():
            raise no_state(runtime) from None
        return []  # the daemon makes them with its first VMI; or gone right now
    except PermissionError as exc:
        raise _denied(directory) from exc


def no_state(directory: Path) -> StateUnreadable:
    """A directory of vmid's that does not exist: a --root no daemon ever ran with."""
    return StateUnreadable(f"no vmid state at {directory}: is the daemon running with this --root?")


def _denied(path: Path) -> StateUnreadable:
    return StateUnreadable(f"permission denied reading {path}: run as root")
