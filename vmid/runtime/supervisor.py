"""Desired vs actual: starts, stops and restarts VMIs so that they match the spool.

Each VMI runs in its own task and cancel scope; whatever goes wrong in one (a bad image, a
QEMU that refuses to start, a bug) ends that VMI `Failed` and never reaches the others.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from vmid.api import defaults
from vmid.api import types as t
from vmid.api.dump import to_data
from vmid.api.load import Locator, Manifest, load_document
from vmid.config import Accelerator, Config, Paths
from vmid.errors import Problem, VmidError
from vmid.host import identity
from vmid.host.storage import ImageStore
from vmid.manifests import Entry, Planned
from vmid.plan.build import build
from vmid.plan.model import LaunchPlan
from vmid.runtime.instance import Instance
from vmid.runtime.network import Network
from vmid.runtime.process import find_qemu, name_option
from vmid.runtime.spool import Desired
from vmid.runtime.status import Phase, Status, now

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
FIRMWARE_UUID_FILE = "firmware-uuid"


@attrs.define(eq=False)
class _VM:
    """One VMI the supervisor runs: its manifest, its task's scope, and how it ended."""

    entry: Entry
    status: Status
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    instance: Instance | None = None
    #: Remove the VMI's state once its task ends (its manifest is gone).
    remove: bool = False
    #: The changed manifest to start once this VMI has stopped (the newest one wins).
    successor: Entry | None = None
    #: The task ended and left the VMI in place (its manifest is still there).
    task_ended: bool = False

    @property
    def spec(self) -> t.VirtualMachineInstanceSpec:
        assert self.entry.planned is not None
        return self.entry.planned.manifest.vmi.spec


class Supervisor:
    """Owns every VMI task; `apply(desired)` makes the running set match the spool."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: Config,
        paths: Paths,
        accelerator: Accelerator,
        network: Network,
    ) -> None:
        self._nursery = nursery
        self._network = network
        self._config = config
        self._paths = paths
        self._accelerator = accelerator
        self._store = ImageStore(paths.state / "images", config.qemuImg)
        self._vms: dict[str, _VM] = {}
        self._refused: dict[str, tuple[Problem, ...]] = {}
        self._stopping = False
        self._applied = False
        self._on_change: Callable[[], None] = lambda: None
        self._changed = trio.Event()
        #: One uid allocation at a time: two VMIs must never pick the same free number.
        self._uids = trio.Lock()

    def __repr__(self) -> str:
        return f"<Supervisor vms={len(self._vms)}>"

    def reconfigure(self, config: Config) -> None:
        """Use a new configuration for VMIs started from now on."""
        self._config = config

    def counts(self) -> dict[Phase, int]:
        """How many VMIs are in each phase (for `systemctl status`)."""
        counts: dict[Phase, int] = {}
        for vm in self._vms.values():
            counts[vm.status.phase] = counts.get(vm.status.phase, 0) + 1
        return counts

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every status change (for systemd's STATUS= line)."""
        self._on_change = callback

    def max_grace(self) -> int:
        """The longest grace period among the VMIs that may have to be stopped."""
        graces = [vm.instance.plan.gracePeriodSeconds for vm in self._vms.values() if vm.instance]
        return max(graces, default=0)

    async def wait_settled(self) -> None:
        """Wait until no VMI is still starting (each is Running or has ended)."""
        starting = (Phase.PENDING, Phase.SCHEDULED)
        while any(vm.status.phase in starting for vm in self._vms.values()):
            await self._changed.wait()

    def _status_written(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._on_change()

    def apply(self, desired: Desired) -> None:
        """Start what is new, stop what is gone, restart what changed; returns at once."""
        if self._stopping:
            return
        if not self._applied:
            self._applied = True
            self._leftovers(desired)
            known = set(desired.vmis) | set(desired.refused) | set(self._vms)
            self._nursery.start_soon(self._collect, known)
        for problem in desired.problems:
            log.error("spool: %s", problem)
        for name, vm in list(self._vms.items()):
            entry = desired.vmis.get(name)
            if entry is None and name in desired.refused:
                self._refused_while_running(vm, desired.refused[name])
            elif entry is None:
                self._stop(vm, remove=True)
            else:
                self._update(name, vm, entry)
        for name, entry in desired.vmis.items():
            if name not in self._vms:
                self._start(entry)
        refused = {n: p for n, p in desired.refused.items() if n not in self._vms}
        for name, problems in refused.items():
            if self._refused.get(name) != problems:  # report each change once
                self._report_refused(name, problems)
        for name in set(self._refused) - set(refused) - set(self._vms):
            _remove_state(self._paths, name)
        self._refused = refused

    def _leftovers(self, desired: Desired) -> None:
        """VMIs an earlier daemon ran whose manifests are gone: stop them gracefully, clean up."""
        for path in sorted(self._paths.runtime.glob(f"instances/*/{STATUS_FILE}")):
            name = path.parent.name
            if name in desired.vmis or name in desired.refused:
                continue
            entry = self._entry_from_status(name, path)
            if entry is None:
                _remove_state(self._paths, name)
                continue
            log.info("%s: its manifest was removed while vmid was not running: stopping it", name)
            vm = _VM(entry, Status(path, {}, self._status_written), remove=True)
            self._vms[name] = vm
            self._nursery.start_soon(self._run, name, vm, name=f"vmi {name}")

    def _entry_from_status(self, name: str, path: Path) -> Entry | None:
        """An entry for the VMI an earlier daemon's status describes, if its QEMU still runs."""
        try:
            earlier = Status.load(path)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        vmi, _ = load_document(earlier.manifest)
        if vmi is None or earlier.phase.final:
            return None
        plan, _ = build(vmi, self._config, self._paths, self._accelerator)
        if plan is None or find_qemu(path, name_option(plan.argv), plan.cwd) is None:
            return None
        manifest = Manifest(str(path), vmi, Locator(str(path), None))
        return Entry(str(path), name, Planned(manifest, plan), ())

    async def _detach(self, name: str) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._network.detach(name)
            except VmidError as exc:
                log.error("%s: removing its taps failed: %s", name, exc)

    async def _collect(self, known: set[str]) -> None:
        try:
            await self._network.collect(known)
        except VmidError as exc:
            log.error("cleaning up after an earlier vmid: %s", exc)

    async def stop_all(self, keep: bool) -> None:
        """Stop every VMI in parallel (each with its own grace), or leave them running."""
        self._stopping = True
        for vm in self._vms.values():
            vm.successor = None
            if vm.instance is not None:
                vm.instance.detach = keep
            vm.scope.cancel()
        for vm in list(self._vms.values()):
            await vm.done.wait()

    # Section: transitions

    def _start(self, entry: Entry) -> None:
        assert entry.name is not None
        manifest = to_data(entry.planned.manifest.vmi) if entry.planned else {}
        manifest.setdefault("metadata", {})["creationTimestamp"] = now()
        path = self._paths.instance_runtime(entry.name) / STATUS_FILE
        status = Status(path, manifest, self._status_written)
        vm = _VM(entry, status)
        self._vms[entry.name] = vm
        self._nursery.start_soon(self._run, entry.name, vm, name=f"vmi {entry.name}")

    def _stop(self, vm: _VM, remove: bool) -> None:
        if remove and vm.remove:
            return  # already on its way out (a re-adopted leftover stops by itself)
        vm.remove = vm.remove or remove
        vm.scope.cancel()
        if vm.task_ended and (vm.remove or vm.successor is not None):
            # An ended VMI has no task left to clean up after it.
            vm.task_ended = False
            self._nursery.start_soon(self._end, vm.entry.name, vm)

    def _update(self, name: str, vm: _VM, entry: Entry) -> None:
        synchronized = vm.status.conditions.get("Synchronized")
        if synchronized is not None and synchronized.status == "False":
            vm.status.condition("Synchronized", True)
            vm.status.write()
        if vm.entry.planned is None or entry.planned is None:
            return
        unchanged = vm.spec == entry.planned.manifest.vmi.spec
        if vm.successor is None and not vm.remove and unchanged:
            vm.entry = entry
            return
        # A changed spec, or a manifest back while its VMI is being removed: a new VMI
        # starts once the old one has stopped; the newest manifest wins.
        if vm.successor is None:
            log.info("%s: manifest changed: restarting with the new spec", name)
        vm.successor = entry
        self._stop(vm, remove=False)

    def _refused_while_running(self, vm: _VM, problems: tuple[Problem, ...]) -> None:
        # KubeVirt specs are immutable: a broken edit leaves the running VMI alone.
        old = vm.status.conditions.get("Synchronized")
        message = _summary(problems)
        if old is None or old.message != message:
            vm.status.condition("Synchronized", False, "InvalidManifest", message)
            vm.status.write()
            for problem in problems:
                log.error("%s", problem)

    def _report_refused(self, name: str, problems: tuple[Problem, ...]) -> None:
        for problem in problems:
            log.error("%s", problem)
        status = Status(
            self._paths.instance_runtime(name) / STATUS_FILE,
            {
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachineInstance",
                "metadata": {"name": name, "creationTimestamp": now()},
            },
        )
        status.transition(Phase.FAILED, _summary(problems))
        status.condition("Synchronized", False, "InvalidManifest", _summary(problems))
        try:
            status.write()
        except OSError as exc:
            log.error("%s: cannot write its status: %s", name, exc)

    # Section: one VMI's task

    async def _run(self, name: str, vm: _VM) -> None:
        with vm.scope:
            try:
                vm.instance = await self._instance(name, vm)
                await vm.instance.run()
            except (VmidError, OSError) as exc:
                log.warning("%s: %s", name, exc)
                self._failed(vm, str(exc))
                if vm.instance is None:  # failed before it had an instance to clean up
                    await self._detach(name)
            except Exception as exc:  # a bug in one VMI's handling must not stop the others
                log.exception("%s: internal error", name)
                self._failed(vm, f"internal error in vmid: {exc!r}")
        if vm.remove or vm.successor is not None:
            await self._end(name, vm)
        else:
            vm.task_ended = True
            vm.done.set()

    async def _end(self, name: str | None, vm: _VM) -> None:
        """The VMI is gone: remove its files, then start its successor, if any."""
        assert name is not None
        with trio.CancelScope(shield=True):
            # Addresses first: once its status is gone, nothing of the VMI is left.
            if vm.successor is None:
                try:
                    await self._network.release(name)
                except VmidError as exc:
                    log.error("%s: releasing its addresses failed: %s", name, exc)
            # A restart with a new spec is the same VMI to its user: it keeps its uid.
            keep_uid = vm.successor is not None
            await trio.to_thread.run_sync(_remove_state, self._paths, name, keep_uid)
        if self._vms.get(name) is vm:
            del self._vms[name]
            log.info("%s: removed", name)
            if vm.successor is not None and not self._stopping:
                self._start(vm.successor)
        self._status_written()
        vm.done.set()

    def _failed(self, vm: _VM, reason: str) -> None:
        if vm.status.phase.final:
            return
        vm.status.transition(Phase.FAILED, reason)
        try:
            vm.status.write()
        except OSError as exc:
            log.error("%s: cannot write its status: %s", vm.entry.name, exc)

    async def _instance(self, name: str, vm: _VM) -> Instance:
        assert vm.entry.planned is not None
        vmi = _with_stored_uuid(vm.entry.planned.manifest.vmi, self._paths.instance_state(name))
        plan, findings = build(vmi, self._config, self._paths, self._accelerator)
        assert plan is not None, findings  # the spool planned this very VMI already
        adopt = self._adoptable(vm, plan, to_data(vmi)["spec"])
        if adopt is None and vm.remove:
            raise VmidError("its QEMU ended before it could be re-adopted")
        if adopt is None:
            vm.status.manifest = {**to_data(vmi), "metadata": vm.status.manifest["metadata"]}
        store, qemu_img, paths = self._store, self._config.qemuImg, self._paths
        instance = Instance(
            plan,
            vm.status,
            store,
            qemu_img,
            self._accelerator,
            self._network,
            adopt=adopt,
            user=await self._user(name, adopt),
            traverse=(
                paths.state,
                paths.state / "instances",
                paths.runtime,
                paths.runtime / "instances",
                paths.logs,
            ),
        )
        instance.stop_once_running = vm.remove
        return instance

    async def _user(self, name: str, adopt: int | None) -> identity.QemuUser | None:
        """The identity VMI `name`'s QEMU runs as: a uid of its own, kept while the VMI exists.

        Raises:
            IdentityError: no uid of `qemuUids` is left.
        """
        if self._config.qemuAsRoot:
            if adopt is None:
                log.warning("%s: its QEMU runs as root (qemuAsRoot: true in vmid.yaml)", name)
            return None
        uids = self._config.qemuUids
        state = self._paths.instance_state(name)
        async with self._uids:
            uid = await trio.to_thread.run_sync(identity.allocate, state, uids.first, uids.count)
        return identity.vmi_user(uid, name)

    def _adoptable(self, vm: _VM, plan: LaunchPlan, spec: dict[str, Any]) -> int | None:
        """The pid of this VM's QEMU from an earlier daemon, if it runs this very spec.

        Then the VM's status becomes the one that daemon wrote (phases, conditions, age).
        """
        try:
            earlier = Status.load(vm.status.path, self._status_written)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        pid = find_qemu(vm.status.path, name_option(plan.argv), plan.cwd)
        if pid is None and not earlier.phase.final and earlier.qemu.get("pid"):
            vm.status = earlier  # as KubeVirt: a VMI whose QEMU vanished has Failed
            raise VmidError("QEMU ended while vmid was not running")
        if pid is None:
            return None
        if earlier.manifest.get("spec") != spec or earlier.phase.final:
            return None  # the instance's guard refuses to start a second QEMU, and says why
        vm.status = earlier
        return pid


def _with_stored_uuid(vmi: t.VirtualMachineInstance, state: Path) -> t.VirtualMachineInstance:
    """A VMI without its own firmware UUID gets a random one, kept while the VMI exists.

    So cloud-init's instance-id is stable across daemon restarts, and new for a new VMI of the
    same name, as KubeVirt does for standalone VMIs.
    """
    name = vmi.metadata.name or ""
    current = vmi.spec.domain.firmware_uuid()
    if current != defaults.firmware_uuid(name):
        return vmi
    stored = state / FIRMWARE_UUID_FILE
    try:
        value = stored.read_text().strip()
        uuid.UUID(value)
    except (OSError, ValueError):
        value = str(uuid.uuid4())
        state.mkdir(parents=True, exist_ok=True)
        stored.write_text(value + "\n")
    firmware = attrs.evolve(vmi.spec.domain.firmware or t.Firmware(), uuid=value)
    domain = attrs.evolve(vmi.spec.domain, firmware=firmware)
    return attrs.evolve(vmi, spec=attrs.evolve(vmi.spec, domain=domain))


def _remove_state(paths: Paths, name: str, keep_uid: bool = False) -> None:
    """Delete a gone VMI's ephemeral files and runtime directory (logs are kept, given to root).

    Its uid record goes last, and only once nothing else of the VMI is left (its QEMU's working
    directory and sockets are in the runtime directory): until then no other VMI gets its uid.
    """
    runtime, state = paths.instance_runtime(name), paths.instance_state(name)
    shutil.rmtree(runtime, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        for item in state.iterdir():
            if item.name == identity.UID_RECORD:
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):  # checked below
                    item.unlink()
    if keep_uid:
        return
    uid = identity.recorded(state)
    if uid is not None:
        if runtime.exists() or any(i.name != identity.UID_RECORD for i in state.iterdir()):
            log.error("%s: some of its files could not be removed: uid %d stays taken", name, uid)
            return
        identity.give_back(paths.instance_logs(name), uid)
    identity.release(state)


def _summary(problems: tuple[Problem, ...]) -> str:
    return "; ".join(str(p) for p in problems)
