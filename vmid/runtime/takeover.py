"""What an earlier daemon left behind: running QEMUs (from the process table) and status files.

The process table is the truth about which VMIs run; a status file says which spec a QEMU
runs and how a VMI that is not running ended. The supervisor owns all of it before it starts
anything, so it never starts a second QEMU for a VMI and never forgets a running one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import attrs

from vmid.api import names, vmistatus
from vmid.api.load import Locator, Manifest, load_document
from vmid.config import Accelerator, Config, Paths
from vmid.manifests import Entry, Planned
from vmid.plan.build import QEMU_DIR, build
from vmid.plan.model import LaunchPlan
from vmid.runtime.events import EventStore
from vmid.runtime.process import cmdline, find_qemus, wait_for_execs
from vmid.runtime.status import STATUS_FILE, Status

log = logging.getLogger(__name__)

#: The spool file a VMI comes from, kept in its status (vmid/api/vmistatus.py).
FILE_ANNOTATION = vmistatus.FILE_ANNOTATION
_FD = re.compile(r"\bfd=\d+")
#: How long a starting daemon waits for an earlier daemon's fork to exec its QEMU (an instant
#: unless the fork was stopped).
EXEC_WAIT_SECONDS = 2.0


@attrs.frozen
class Left:
    """One VMI an earlier daemon left: its QEMUs, its status, the VMI its status names."""

    #: namespace/name (vmid/api/names.py).
    key: str
    pids: tuple[int, ...]
    status: Status | None
    #: The VMI the status describes, planned; None when there is no usable status.
    entry: Entry | None


def survey(
    config: Config,
    paths: Paths,
    accelerator: Accelerator,
    on_write: Callable[[], None],
    events: EventStore,
) -> dict[str, Left]:
    """Every VMI with a running QEMU, a status file or state under `paths`, by key; their
    statuses record their events in `events`."""
    instances = paths.runtime_instances
    for pid, key in wait_for_execs(instances, QEMU_DIR, EXEC_WAIT_SECONDS):
        log.warning(
            "%s: pid %d, forked by an earlier vmid to become its QEMU, has not within %g s: "
            "vmid goes on without it; stop it by hand (kill %d)",
            key,
            pid,
            EXEC_WAIT_SECONDS,
            pid,
        )
    running = find_qemus(instances, QEMU_DIR)
    recorded = {str(p.parent.relative_to(instances)) for p in instances.glob(f"*/*/{STATUS_FILE}")}
    # State with no status: a daemon killed while a VMI was between two runs (a restart for a
    # new spec keeps its uid and firmware UUID, its status goes) or before its first status.
    kept = {str(p.relative_to(paths.state_instances)) for p in paths.state_instances.glob("*/*")}
    left = {}
    for key in sorted(set(running) | recorded | kept):
        status = _load(instances / key / STATUS_FILE, on_write, events)
        entry = _entry(status, config, paths, accelerator) if status else None
        left[key] = Left(key, tuple(sorted(running.get(key, ()))), status, entry)
    return left


def bare_entry(key: str, config: Config, paths: Paths, accelerator: Accelerator) -> Entry:
    """A VMI of that key with every default: its sockets, directories and default grace, to
    supervise and stop a QEMU whose spec is unknown (its status was never written)."""
    namespace, name = names.split(key)
    data = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"domain": {"memory": {"guest": "1Mi"}, "devices": {}}},
    }
    entry = _planned(data, f"<{key}: a QEMU vmid has no record of>", config, paths, accelerator)
    assert entry is not None, "a minimal VMI always plans"
    return entry


def runs_plan(pid: int, plan: LaunchPlan) -> bool:
    """Whether process `pid` runs exactly `plan`'s argv (fd numbers aside)."""
    return [_FD.sub("fd=", a) for a in cmdline(pid)] == [_FD.sub("fd=", a) for a in plan.argv]


def _load(path: Path, on_write: Callable[[], None], events: EventStore) -> Status | None:
    try:
        return Status.load(path, on_write, events)
    except (OSError, ValueError) as exc:
        if path.exists():
            log.warning("%s: unreadable status (%s): vmid goes by the process table", path, exc)
        return None


def _entry(status: Status, config: Config, paths: Paths, accelerator: Accelerator) -> Entry | None:
    file = status.metadata.annotations.get(FILE_ANNOTATION)
    return _planned(status.manifest, str(file or status.path), config, paths, accelerator)


def _planned(
    data: object, file: str, config: Config, paths: Paths, accelerator: Accelerator
) -> Entry | None:
    vmi, _ = load_document(data)
    if vmi is None or vmi.metadata.name is None:
        return None
    plan, _ = build(vmi, config, paths, accelerator)
    if plan is None:
        return None
    manifest = Manifest(file, vmi, Locator(file, None))
    return Entry(file, manifest.key, Planned(manifest, plan), ())
