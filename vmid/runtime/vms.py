"""The VirtualMachine controller, on top of the supervisor: turns the spool's VMs and their
requested state into VMIs, as KubeVirt's (pkg/virt-controller/watch/vm/vm.go) does.

It hands the supervisor the spool's VMIs plus one VMI per VM that is to have one, named as the
VM; follows every status change to react to a VMI that ended (run strategies, start-failure
back-off); takes `vmid start/stop/restart` requests; and writes each VM's status file.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from vmid.api import names
from vmid.api import types as t
from vmid.api.dump import object_data
from vmid.api.load import KIND
from vmid.api.vm import (
    RunStrategy,
    VirtualMachine,
    blank_volumes,
    imported_volumes,
    owner_reference,
)
from vmid.api.vmistatus import FILE_ANNOTATION
from vmid.config import Config, Paths
from vmid.errors import Problem, VmidError
from vmid.host import datavolumes, safefile
from vmid.manifests import Entry
from vmid.runtime import importer, pull, vmstate
from vmid.runtime.spool import Desired, Inotify
from vmid.runtime.status import Phase, Status, now
from vmid.runtime.supervisor import Supervisor

log = logging.getLogger(__name__)

#: KubeVirt's start-failure back-off (vm.go calculateStartBackoffTime).
MAX_BACKOFF_SECONDS = 300
MIN_INTERVAL_SECONDS = 10
#: The strategies whose start failures back off (vm.go shouldBackoffStart).
BACKOFF = frozenset({RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE, RunStrategy.ONCE})
#: KubeVirt's event message (pkg/virt-controller/watch/vm/vm.go).
_CREATED = "Started the virtual machine by creating the new virtual machine instance {}"
#: How often removed VMs' claim files are looked at, at most.
PURGE_SECONDS = 3600.0
#: How often an import's progress is shown.
PROGRESS_SECONDS = 1.0


def backoff_seconds(fail_count: int, randint: Callable[[int], int] = random.randrange) -> int:
    """The delay before the next start after `fail_count` start failures in a row:
    `interval * n**2` plus up to half of it at random, at most 300 s (`randint(n)`: 0..n-1)."""
    interval = max(MAX_BACKOFF_SECONDS // 30, MIN_INTERVAL_SECONDS)
    delay = interval * max(fail_count, 1) ** 2
    delay += randint(delay // 2 + 1)
    return min(delay, MAX_BACKOFF_SECONDS)


@attrs.frozen
class StartFailure:
    """KubeVirt's status.startFailure; `retry_at` on trio's clock."""

    count: int
    retry_at: float
    retry_after: str  # the same instant, as the status shows it


@attrs.define
class DataVolumeState:
    """One DataVolume as CDI's status shows it (phase, progress). An import's thread writes
    `done` and `total` (bytes) as they come; the controller shows them every PROGRESS_SECONDS."""

    phase: str
    done: int = 0
    total: int | None = None
    message: str = ""

    @property
    def progress(self) -> str:
        """CDI's status.progress: "45.20%", "100.0%" once done, "N/A" with no size known."""
        if self.phase == "Succeeded":
            return "100.0%"
        if not self.total:
            return "N/A"
        return f"{min(self.done / self.total, 1.0) * 100:.2f}%"

    def update(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total


@attrs.define(eq=False)
class _VM:
    entry: Entry
    kept: vmstate.Kept
    #: The ended VMI (its live status object) already acted on.
    handled: Status | None = None
    failure: StartFailure | None = None
    #: When (trio's clock) a new VMI replaces the ended one (None: none is due).
    restart_at: float | None = None
    #: Why a DataVolume's claim file could not be made.
    volume_error: str | None = None
    #: Why its changed manifest is refused (it goes on as it was).
    refused: str | None = None
    #: The DataVolumes being imported: its VMI waits for them (Provisioning).
    importing: set[str] = attrs.field(factory=set)
    #: Each DataVolume's state, by name.
    data_volumes: dict[str, DataVolumeState] = attrs.field(factory=dict)

    @property
    def vm(self) -> VirtualMachine:
        assert self.entry.planned is not None
        assert self.entry.planned.manifest.vm is not None
        return self.entry.planned.manifest.vm

    @property
    def strategy(self) -> RunStrategy:
        own = self.vm.strategy
        return self.kept.override if self.kept.override and self.kept.base is own else own

    def vmi_entry(self) -> Entry:
        entry = attrs.evolve(self.entry, kind=KIND, owner=owner_reference(self.vm))
        if not self.kept.startPaused or entry.planned is None:
            return entry
        # `vmid start --paused` (vm.go SetupVMIFromVM): this VMI starts with its guest paused.
        vmi = entry.planned.manifest.vmi
        spec = attrs.evolve(vmi.spec, startStrategy=t.StartStrategy.PAUSED)
        manifest = attrs.evolve(entry.planned.manifest, vmi=attrs.evolve(vmi, spec=spec))
        return attrs.evolve(entry, planned=attrs.evolve(entry.planned, manifest=manifest))


class Controller:
    """The VMs of the spool; `apply(desired)` in place of the supervisor's."""

    def __init__(self, supervisor: Supervisor, paths: Paths, config: Config) -> None:
        self._supervisor = supervisor
        self._paths = paths
        self._config = config
        self._desired = Desired({}, {}, ())
        self._vms: dict[str, _VM] = {}
        self._applied = False
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        # The supervisor's: a VM and its VMI share a file, and a store keeps what it wrote last.
        self._events = supervisor.events

    def __repr__(self) -> str:
        return f"<Controller vms={len(self._vms)}>"

    def reconfigure(self, config: Config) -> None:
        """Use a new configuration (volumesDir, how long removed volumes are kept)."""
        self._config = config

    def apply(self, desired: Desired) -> None:
        """The spool changed: follow its VMs, then hand the supervisor every VMI."""
        self._desired = desired
        for key in desired.vms.keys() | self._vms.keys():
            self._follow(key, desired)
        self._applied = True
        self._take_requests()
        self._reconcile()

    def _follow(self, key: str, desired: Desired) -> None:
        entry, vm = desired.vms.get(key), self._vms.get(key)
        if entry is not None and vm is None:
            kept = vmstate.load_kept(self._paths, key) or vmstate.Kept(created=now())
            self._vms[key] = vm = _VM(entry, kept, failure=_restored(kept))
            self._provision(key, vm)
        elif entry is not None and vm is not None:
            changed, spec = vm.entry.planned != entry.planned, vm.vm.spec
            vm.entry, vm.refused = entry, None
            if changed:
                log.info("%s: its VirtualMachine changed", key)
                # A new spec's VMI is no start request's; a label edit (metadata) makes no new
                # VMI: one started with `start --paused` stays as it is.
                vm.kept.startPaused = vm.kept.startPaused and vm.vm.spec == spec
                self._provision(key, vm)
        elif vm is not None and key in desired.refused_vms:
            vm.refused = _summary(desired.refused_vms[key])  # KubeVirt would refuse the edit
        elif vm is not None:
            if vm.entry.file in desired.unreadable:  # a broken file is no removal
                vm.refused = _summary(desired.unreadable[vm.entry.file])
                return
            log.info("%s: its VirtualMachine was removed", key)
            del self._vms[key]
            self._move_aside(key, vm)
            shutil.rmtree(self._paths.vm_state(key), ignore_errors=True)
            shutil.rmtree(self._paths.vm_runtime(key), ignore_errors=True)

    def _reconcile(self) -> None:
        """Advance every VM, hand the supervisor the VMIs, write the VMs' statuses."""
        if not self._applied:
            return
        self._hand_over()
        # The first hand-over takes over what an earlier daemon left (a VMI that ended while
        # no daemon ran): its strategy answers that at once.
        if any(self._changed(k, vm) for k, vm in self._vms.items()):
            self._hand_over()
        self._write_statuses()
        self._wake.set()

    def _hand_over(self) -> None:
        """Advance every VM, then hand the supervisor every VMI."""
        for key, vm in self._vms.items():
            self._advance(key, vm)
            self._save(key, vm)
        vmis = dict(self._desired.vmis)
        vmis.update({k: vm.vmi_entry() for k, vm in self._vms.items() if self._runs(vm)})
        problems = self._desired.problems + tuple(
            p for k, ps in self._desired.refused_vms.items() if k not in self._vms for p in ps
        )
        self._supervisor.apply(attrs.evolve(self._desired, vmis=vmis, problems=problems))

    # Section: DataVolumes

    def _provision(self, key: str, vm: _VM) -> None:
        """Make the claim files of the VM's blank DataVolumes that are missing (once: a file
        there is kept as it is, the VM's data)."""
        volumes = self._paths.volumes(self._config)
        vm.volume_error = None
        for name, (url, size) in imported_volumes(vm.vm).items():
            if name in vm.importing:
                continue  # one import at a time: it goes on
            if datavolumes.claim_file(volumes, name).exists():
                vm.data_volumes[name] = DataVolumeState("Succeeded")
                continue
            clone = url.startswith("pvc://")
            vm.data_volumes[name] = DataVolumeState(
                "CloneScheduled" if clone else "ImportScheduled"
            )
            vm.importing.add(name)
            self._start_import(key, vm, name, url, size)
        for name, size in blank_volumes(vm.vm).items():
            vm.data_volumes[name] = DataVolumeState("Succeeded")
            try:
                if datavolumes.create_blank(volumes, name, size):
                    log.info("%s: DataVolume %s made (%d bytes, blank)", key, name, size)
                    vm.kept.volumes = sorted({*vm.kept.volumes, name})
            except OSError as exc:
                vm.volume_error = f"DataVolume {name}: cannot make its claim file: {exc}"
                vm.data_volumes[name] = DataVolumeState("Failed", message=vm.volume_error)
                log.error("%s: %s", key, vm.volume_error)
        self._save(key, vm)

    def _start_import(self, key: str, vm: _VM, name: str, url: str, size: int) -> None:
        if self._nursery is not None:  # else run() starts it
            self._nursery.start_soon(self._import, key, vm, name, url, size)

    async def _import(self, key: str, vm: _VM, name: str, url: str, size: int) -> None:
        """Import one http or registry DataVolume (the VMI waits for every one of them)."""
        volumes = self._paths.volumes(self._config)
        log.info("%s: DataVolume %s: importing %s", key, name, url)
        state = vm.data_volumes[name] = DataVolumeState(
            "CloneInProgress" if url.startswith("pvc://") else "ImportInProgress"
        )
        try:
            got = await importer.import_url(
                url, volumes, name, size, self._paths, self._config, state.update
            )
        except (VmidError, OSError) as exc:
            vm.volume_error = f"DataVolume {name}: {exc}"
            state.phase, state.message = "Failed", str(exc)
            log.error("%s: %s", key, vm.volume_error)
            self._event(key, "Warning", "DataVolumeError", vm.volume_error)
        else:
            state.phase = "Succeeded"
            log.info("%s: DataVolume %s imported (%d bytes from %s)", key, name, got, url)
            self._event(
                key, "Normal", "ImportSucceeded", f"DataVolume {name}: {got} bytes from {url}"
            )
            vm.kept.volumes = sorted({*vm.kept.volumes, name})
            self._save(key, vm)
        vm.importing.discard(name)
        if self._vms.get(key) is not vm:  # removed meanwhile: its volume goes as its others
            self._move_aside(key, vm)
            return
        self._reconcile()

    def _move_aside(self, key: str, vm: _VM) -> None:
        """The VM is removed: its DataVolumes go too, but only aside, for a while (a removed
        file is an easy mistake)."""
        volumes = self._paths.volumes(self._config)
        namespace, name = names.split(key)
        for claim in vm.kept.volumes:
            try:
                moved = datavolumes.move_aside(volumes, claim, f"{namespace}_{name}")
            except OSError as exc:
                log.error("%s: cannot move DataVolume %s aside: %s", key, claim, exc)
                continue
            if moved is not None:
                keep = self._config.deletedVolumesKeepSeconds
                log.info("%s: DataVolume %s moved to %s (deleted in %d s)", key, claim, moved, keep)

    async def _purge(self) -> None:
        """Forever: delete removed VMs' claim files once they have been aside long enough."""
        while True:
            keep = self._config.deletedVolumesKeepSeconds
            volumes = self._paths.volumes(self._config)
            deleted = await trio.to_thread.run_sync(datavolumes.purge, volumes, keep)
            for name in deleted:
                log.info("removed VM's DataVolume %s deleted (aside over %d s)", name, keep)
            await trio.sleep(min(max(keep / 2, 1.0), PURGE_SECONDS))

    # Section: run strategies

    def _advance(self, key: str, vm: _VM) -> None:
        """What the VM's strategy makes of its VMI as it is now (vm.go syncRunStrategy)."""
        strategy = vm.strategy
        if vm.kept.seen is not strategy:  # a new VM, or another strategy
            log.info("%s: run strategy %s", key, strategy)
            vm.kept.wanted = strategy in BACKOFF or (
                strategy is RunStrategy.MANUAL and vm.kept.wanted
            )
            vm.kept.seen = strategy
        if strategy not in BACKOFF:
            vm.failure = None
        if not vm.kept.wanted:
            vm.restart_at = None
        status = self._supervisor.vmi_status(key)
        if status is None or not vm.kept.wanted:
            return
        if status.phase is Phase.RUNNING:
            vm.failure = None  # reset once a VMI runs (vm.go syncStartFailureStatus)
        if status.phase.final and vm.handled is not status:
            vm.handled = status
            # One an earlier daemon counted already (it stopped during the back-off).
            counted = vm.failure is not None and vm.kept.lastFailed == _identity(status)
            self._ended(key, vm, status, strategy, counted)

    def _ended(
        self, key: str, vm: _VM, status: Status, strategy: RunStrategy, counted: bool = False
    ) -> None:
        failed = status.phase is Phase.FAILED
        early = not any(t.phase is Phase.RUNNING for t in status.transitions)
        if not early:
            vm.failure = None  # it ran: the count starts again, whenever it was seen running
        if status.terminating:
            # vmid stopped it, not its guest: the daemon stopped (a restart, an upgrade) while
            # the VM was to run. It runs again, whatever its strategy does with a guest's end.
            vm.restart_at = trio.current_time()
            return
        if early and strategy in BACKOFF and not counted:
            vm.kept.lastFailed = _identity(status)
            count = vm.failure.count + 1 if vm.failure else 1
            delay = backoff_seconds(count)
            vm.failure = StartFailure(
                count, trio.current_time() + delay, _timestamp(time.time() + delay)
            )
            log.warning("%s: start failure %d: next start in %d s", key, count, delay)
            message = f"VMI {status.reason or 'failed'}: start failure {count}, next in {delay} s"
            self._event(key, "Warning", "CrashLoopBackOff", message)
        if strategy is RunStrategy.ALWAYS or (strategy is RunStrategy.RERUN_ON_FAILURE and failed):
            # KubeVirt's restart of a VMI that ran is at once; one that never ran backs off.
            vm.restart_at = vm.failure.retry_at if early and vm.failure else trio.current_time()
        elif strategy is RunStrategy.RERUN_ON_FAILURE:
            vm.kept.wanted = False  # Succeeded: deleted, not restarted
        # Manual and Once: the ended VMI stays.

    async def run(self) -> None:
        """Forever: take requests as they come, follow VMI changes, restart when due."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for key, vm in self._vms.items():
                for name, (url, size) in imported_volumes(vm.vm).items():
                    if name in vm.importing:
                        nursery.start_soon(self._import, key, vm, name, url, size)
            nursery.start_soon(self._watch_requests)
            nursery.start_soon(self._follow_statuses)
            nursery.start_soon(self._show_progress)
            nursery.start_soon(self._restarts)
            nursery.start_soon(self._purge)

    async def _follow_statuses(self) -> None:
        while True:
            await self._supervisor.wait_changed()
            if any(self._changed(k, vm) for k, vm in self._vms.items()):
                self._reconcile()
            else:
                self._write_statuses()

    async def _show_progress(self) -> None:
        """Forever: while DataVolumes import, show how far they are (CDI's status.progress)."""
        while True:
            await trio.sleep(PROGRESS_SECONDS)
            if any(vm.importing for vm in self._vms.values()):
                self._write_statuses()

    def _changed(self, key: str, vm: _VM) -> bool:
        """Whether the VM's VMI did something its strategy answers (ended, or ran)."""
        status = self._supervisor.vmi_status(key)
        if status is None or not vm.kept.wanted:
            return False
        ended = status.phase.final and vm.handled is not status
        return ended or (status.phase is Phase.RUNNING and vm.failure is not None)

    async def _restarts(self) -> None:
        while True:
            due = [vm.restart_at for vm in self._vms.values() if vm.restart_at is not None]
            with trio.move_on_at(min(due, default=math.inf)):
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            for key, vm in self._vms.items():
                if vm.restart_at is not None and vm.restart_at <= trio.current_time():
                    vm.restart_at, vm.kept.startPaused = None, False
                    log.info("%s: starting a new VMI (run strategy %s)", key, vm.strategy)
                    self._event(
                        key, "Normal", "SuccessfulCreate", _CREATED.format(names.split(key)[1])
                    )
                    self._supervisor.replace(key, vm.vmi_entry())
            self._write_statuses()

    # Section: requests

    async def _watch_requests(self) -> None:
        directory = self._paths.vm_requests
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        notify = Inotify(directory)
        try:
            while True:
                self._take_requests(reconcile=True)
                await notify.wait()
        finally:
            notify.close()

    def _take_requests(self, reconcile: bool = False) -> None:
        if not self._applied:
            return  # the spool's VMs first: a request names one of them
        requests = vmstate.take(self._paths)
        for request in requests:
            vm = self._vms.get(request.key)
            if vm is None:
                log.warning(
                    "%s: %s requested, but there is no such VM", request.key, request.action
                )
                continue
            log.info("%s: %s requested", request.key, request.action)
            self._event(
                request.key, "Normal", request.action.capitalize(), f"vmid {request.action}"
            )
            self._act(request, vm)
        if requests and reconcile:
            self._reconcile()

    def _act(self, request: vmstate.Request, vm: _VM) -> None:
        """virtctl's start/stop/restart (pkg/virt-api/rest/lifecycle.go), refusals aside (the
        CLI refuses as virtctl's API does; what comes here is done)."""
        key, strategy = request.key, vm.strategy
        status = self._supervisor.vmi_status(key)
        self._supervisor.set_grace(key, request.grace)
        # A start request's `paused` holds for the VMI it starts (KubeVirt's stateChangeRequest).
        vm.kept.startPaused = request.action == "start" and request.paused
        if request.action == "stop":
            vm.restart_at = None
            if strategy in (RunStrategy.ALWAYS, RunStrategy.ONCE):
                self._override(vm, RunStrategy.HALTED)
            else:
                vm.kept.wanted = False
            return
        if request.action == "start" and strategy is RunStrategy.HALTED:
            self._override(vm, RunStrategy.ALWAYS)
            return
        vm.kept.wanted = True
        if status is not None and (request.action == "restart" or status.phase.final):
            vm.handled = status  # stopped on purpose: no failure, no second restart
            vm.failure, vm.restart_at = None, None
            self._supervisor.replace(key, vm.vmi_entry(), request.grace)

    def _override(self, vm: _VM, strategy: RunStrategy) -> None:
        vm.kept.override, vm.kept.base = strategy, vm.vm.strategy

    def _event(self, key: str, type_: str, reason: str, message: str) -> None:
        """An event about VM `key` (`vmid events NAME` shows it beside its VMI's)."""
        namespace, name = names.split(key)
        obj = {"kind": "VirtualMachine", "metadata": {"name": name, "namespace": namespace}}
        self._events.record(obj, type_, reason, message)

    def _save(self, key: str, vm: _VM) -> None:
        failure = vm.failure
        vm.kept.failCount = failure.count if failure is not None else 0
        vm.kept.retryAfter = failure.retry_after if failure is not None else ""
        try:
            if vmstate.load_kept(self._paths, key) != vm.kept:
                vmstate.save_kept(self._paths, key, vm.kept)
        except OSError as exc:
            log.error("%s: cannot keep its state: %s", key, exc)

    # Section: status

    def _runs(self, vm: _VM) -> bool:
        """Whether the VM is to have its VMI now: wanted, and its DataVolumes ready."""
        return vm.kept.wanted and not vm.importing and vm.volume_error is None

    def _write_statuses(self) -> None:
        for key, vm in self._vms.items():
            path = vmstate.status_path(self._paths, key)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if vm.vm.spec.dataVolumeTemplates:
                    _write(vmstate.data_volumes_path(self._paths, key), self._dvs(key, vm))
                _write(path, self._status(key, vm))
            except OSError as exc:
                log.error("%s: cannot write its status: %s", key, exc)

    def _dvs(self, key: str, vm: _VM) -> dict[str, Any]:
        """The VM's DataVolumes as CDI's objects (`vmid get dv`), in a List."""
        namespace, _ = names.split(key)
        templates = object_data(vm.vm)["spec"]["dataVolumeTemplates"]
        items = []
        for template in templates:
            name = template["metadata"]["name"]
            state = vm.data_volumes.get(name) or DataVolumeState("Pending")
            metadata = {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": vm.kept.created,
                "ownerReferences": [owner_reference(vm.vm)],
            }
            status = {
                "phase": state.phase,
                "progress": state.progress,
                "restartCount": 0,
                "claimName": name,
                "conditions": _dv_conditions(state),
            }
            items.append(
                {
                    "apiVersion": "cdi.kubevirt.io/v1beta1",
                    "kind": "DataVolume",
                    "metadata": metadata,
                    "spec": template["spec"],
                    "status": status,
                }
            )
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def _status(self, key: str, vm: _VM) -> dict[str, Any]:
        namespace, name = names.split(key)
        vmi = self._supervisor.vmi_status(key)
        conditions = vmi.conditions if vmi is not None else {}
        ready = "Ready" in conditions and conditions["Ready"].status == "True"
        status: dict[str, Any] = {
            "printableStatus": self._printable(vm, vmi),
            "ready": ready,
            "created": vmi is not None,
            "runStrategy": vm.strategy.value,
            "conditions": [_ready_condition(vmi)],
        }
        status["conditions"] += _data_volumes_condition(vm)
        if vm.refused is not None:
            status["conditions"].append(
                {
                    "type": "Synchronized",
                    "status": "False",
                    "reason": "InvalidManifest",
                    "message": vm.refused,
                }
            )
        if vm.failure is not None:
            status["startFailure"] = {
                "consecutiveFailCount": vm.failure.count,
                "retryAfterTimestamp": vm.failure.retry_after,
            }
        if vmi is not None and vmi.reason and vmi.phase.final:
            status["conditions"].append(
                {
                    "type": "Failure",
                    "status": "True",
                    "reason": vmi.phase.value,
                    "message": vmi.reason,
                }
            )
        own = vm.vm.metadata  # its labels: what `get vm -l` selects on, as kubectl's
        metadata = {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": vm.kept.created,
            "annotations": {**own.annotations, FILE_ANNOTATION: vm.entry.file},
        }
        if own.labels:
            metadata["labels"] = dict(own.labels)
        spec = object_data(vm.vm)["spec"]
        return {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": metadata,
            "spec": spec,
            "status": status,
        }

    def _printable(self, vm: _VM, vmi: Status | None) -> str:
        """KubeVirt's printableStatus (vm.go setPrintableStatus), as far as vmid has them."""
        if vm.volume_error is not None and (vmi is None or vmi.phase.final):
            return "DataVolumeError"
        if vm.importing and (vmi is None or vmi.phase.final):
            return "Provisioning"
        if vm.failure is not None and vm.kept.wanted and (vmi is None or vmi.phase.final):
            return "CrashLoopBackOff"
        if vmi is None or vmi.phase.final:
            return "Stopped"
        if vmi.terminating:
            return "Stopping"
        if vmi.reason in pull.REASONS:
            return vmi.reason  # its image does not pull (vm.go: the VMI's condition says so)
        if vmi.phase is not Phase.RUNNING:
            return "Starting"
        paused = vmi.conditions.get("Paused")
        return "Paused" if paused is not None and paused.status == "True" else "Running"


def _ready_condition(vmi: Status | None) -> dict[str, str]:
    """The VM's Ready condition: its VMI's, reason and message too (vm.go
    syncReadyConditionFromVMI), so a VMI waiting for its image says why."""
    found = vmi.conditions.get("Ready") if vmi is not None else None
    if vmi is None:
        status, reason, message = "False", "VMINotExists", "VMI does not exist"
    elif found is None:
        status, reason = "False", "VMIConditionMissing"
        message = "VMI is missing the Ready condition"
    else:
        status, reason, message = found.status, found.reason, found.message
    condition = {"type": "Ready", "status": status, "reason": reason, "message": message}
    return {k: v for k, v in condition.items() if v}


def _summary(problems: tuple[Problem, ...]) -> str:
    return "; ".join(str(p) for p in problems)


def _data_volumes_condition(vm: _VM) -> list[dict[str, str]]:
    """KubeVirt's DataVolumesReady, while one is imported or could not be made."""
    if vm.volume_error is not None:
        why = {"reason": "DataVolumeError", "message": vm.volume_error}
    elif vm.importing:
        states = {n: vm.data_volumes.get(n) or DataVolumeState("Pending") for n in vm.importing}
        importing = [f"{n} ({s.phase} {s.progress})" for n, s in sorted(states.items())]
        why = {"reason": "Provisioning", "message": "importing " + ", ".join(importing)}
    else:
        return []
    return [{"type": "DataVolumesReady", "status": "False", **why}]


def _dv_conditions(state: DataVolumeState) -> list[dict[str, str]]:
    """CDI's Ready and Running conditions of a DataVolume (Running False with reason Error is
    what KubeVirt reads as DataVolumeError)."""
    done, failed = state.phase == "Succeeded", state.phase == "Failed"
    running = {"type": "Running", "status": "False" if done or failed else "True"}
    if done:
        running["reason"] = "Completed"
    elif failed:
        running |= {"reason": "Error", "message": state.message}
    return [{"type": "Ready", "status": "True" if done else "False"}, running]


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` as JSON, if that changes it."""
    text = json.dumps(data, indent=2, sort_keys=True).encode()
    if not path.exists() or path.read_bytes() != text:
        safefile.write_atomically(path, text)


def _timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _restored(kept: vmstate.Kept) -> StartFailure | None:
    """The start failures an earlier daemon counted, its back-off going on where it was."""
    if kept.failCount <= 0:
        return None
    try:
        wait = calendar.timegm(time.strptime(kept.retryAfter, "%Y-%m-%dT%H:%M:%SZ")) - time.time()
    except ValueError:  # a damaged stamp: the next start is due
        wait = 0.0
    return StartFailure(kept.failCount, trio.current_time() + max(wait, 0.0), kept.retryAfter)


def _identity(status: Status) -> str:
    """Which VMI ended (KubeVirt's lastFailedVMIUID): when it was made and when it ended."""
    created = status.manifest.get("metadata", {}).get("creationTimestamp", "")
    return f"{created} {status.transitions[-1].phaseTransitionTimestamp}"
