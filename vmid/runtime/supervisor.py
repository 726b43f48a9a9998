"""Desired vs actual: starts, stops and restarts VMIs so that they match the spool.

Each VMI runs in its own task and cancel scope; whatever goes wrong in one (a bad image, a
QEMU that refuses to start, a bug) ends that VMI `Failed` and never reaches the others.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Any

import attrs
import trio

from vmid.api import names
from vmid.api import types as t
from vmid.api.dump import to_data
from vmid.config import Accelerator, Config, Paths
from vmid.errors import Problem, RequestRefused, VmidError
from vmid.host import firmwareid, identity, logfile, requests, safefile
from vmid.host.machines import Machines
from vmid.host.registry import skopeo_for
from vmid.host.storage import ImageStore
from vmid.manifests import Entry
from vmid.plan.build import QEMU_DIR, build
from vmid.plan.model import ImageOverlay, LaunchPlan
from vmid.runtime import events, imagegc, logs, takeover
from vmid.runtime.instance import Instance, StopMode
from vmid.runtime.network import Network
from vmid.runtime.proctable import ProcessTable
from vmid.runtime.pull import Puller, PullSettings
from vmid.runtime.spool import Desired
from vmid.runtime.status import STATUS_FILE, Phase, Status, now

log = logging.getLogger(__name__)

#: The longest a shielded cleanup may wait on the network (a tap removed, addresses freed and
#: dnsmasq told): past it, what is left is logged, and the next start's collection frees it.
NETWORK_CLEANUP_SECONDS = 30.0

#: The condition of a VMI on the pod network: whether vmid's DHCP server serves its address.
DHCP_CONDITION = "DHCPReady"
#: Event messages: KubeVirt's (pkg/virt-handler/controller.go), then vmid's words.
DELETED = "Signaled Deletion"
REMOVED = "its manifest was removed"
REMOVED_OFFLINE = "its manifest was removed while vmid was not running"
REFUSED_EDIT = "its changed manifest is refused; the VMI runs on unchanged"
STOPPED_BY_VM = "its VirtualMachine stopped it"

#: How often removed VMIs' events are looked at, at most and at least.
EVENTS_SWEEP_MIN_SECONDS = 1.0
EVENTS_SWEEP_MAX_SECONDS = 60.0


@attrs.define(eq=False)
class _VM:
    """One VMI the supervisor runs: its manifest, its task's scope, and how it ended."""

    #: Its manifest (`entry.key`: the namespace/name the supervisor keys it by).
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
    #: The pid of a QEMU an earlier daemon left for this VMI, to take over.
    adopt: int | None = None
    #: What cancelling its task does to its QEMU (the daemon stopping with `keep`: nothing).
    stop_mode: StopMode = StopMode.POWER_OFF
    #: The spec its QEMU runs (or ran), as data, with the firmware UUID the VMI keeps; None
    #: for a QEMU taken over whose spec nobody recorded: any manifest restarts that one.
    running: dict[str, Any] | None = None
    #: The grace period its next stop has instead of its spec's (`vmid delete --grace-period`,
    #: a VM's `vmid stop --grace-period`).
    grace: int | None = None
    #: The VMI its launch runs, with its firmware UUID (None: read when it is launched).
    vmi: t.VirtualMachineInstance | None = None
    #: The spool's entry its QEMU was last found to run the spec of (the spool hands the same
    #: entry again while its file is unchanged: no spec to compare on each of its scans).
    checked: Entry | None = None


class Supervisor:
    """Owns every VMI task; `apply(desired)` makes the running set match the spool."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: Config,
        paths: Paths,
        accelerator: Accelerator,
        network: Network,
        machines: Machines | None = None,
    ) -> None:
        """`machines`: systemd-machined, to give each QEMU a scope of its own (None: no systemd)."""
        self._nursery = nursery
        self._machines = machines
        self._network = network
        self._config = config
        self._paths = paths
        self._accelerator = accelerator
        self._store = ImageStore(paths.images, config.qemuImg)
        self._images = Puller(nursery, self._store, _pull_settings(paths, config))
        self._events = events.EventStore(paths.events)
        self._vms: dict[str, _VM] = {}
        self._refused: dict[str, tuple[Problem, ...]] = {}
        #: Spool files whose problems no VMI shows (each has a `Failed` row), by path.
        self._files: dict[str, tuple[Problem, ...]] = {}
        #: What the spool asked for last: a VMI that ends is shown refused if its file is.
        self._desired = Desired({}, {}, ())
        self._stopping = False
        self._applied = False
        self._changed = trio.Event()
        #: One uid allocation at a time: two VMIs must never pick the same free number.
        self._uids = trio.Lock()
        #: The uids the VMIs' records hold, kept: an allocation reads none of them.
        self._records = identity.Records(paths.state_instances)
        #: Which processes run as which ids, kept between launches (read again after an end).
        self._processes = ProcessTable(paths.runtime_instances, QEMU_DIR)
        network.on_dhcp(self._dhcp_changed)

    def __repr__(self) -> str:
        return f"<Supervisor vms={len(self._vms)}>"

    def reconfigure(self, config: Config) -> None:
        """Use a new configuration for VMIs started from now on."""
        self._config = config
        self._images.settings = _pull_settings(self._paths, config)

    def counts(self) -> dict[Phase, int]:
        """How many rows of `vmid get` are in each phase (for `systemctl status`): the VMIs, and
        the refused manifests and spool files, each a `Failed` row."""
        counts: dict[Phase, int] = {}
        for vm in self._vms.values():
            counts[vm.status.phase] = counts.get(vm.status.phase, 0) + 1
        if refused := len(self._refused) + len(self._files):
            counts[Phase.FAILED] = counts.get(Phase.FAILED, 0) + refused
        return counts

    def max_grace(self) -> int:
        """The longest grace period among the VMIs that may have to be stopped."""
        graces = [vm.instance.plan.gracePeriodSeconds for vm in self._vms.values() if vm.instance]
        return max(graces, default=0)

    def stopping(self) -> tuple[int, float | None]:
        """How many VMIs have not stopped yet, and the soonest time (trio's clock) the shutdown
        ladder kills one of them (None: none is waiting for its grace to end)."""
        left = [vm for vm in self._vms.values() if not vm.done.is_set()]
        kills = [
            vm.instance.kill_at for vm in left if vm.instance and vm.instance.kill_at is not None
        ]
        return len(left), min(kills, default=None)

    async def wait_settled(self) -> None:
        """Wait until no VMI is still starting (each is Running or has ended)."""
        starting = (Phase.PENDING, Phase.SCHEDULED)
        while any(vm.status.phase in starting for vm in self._vms.values()):
            await self._changed.wait()

    async def keep_processes(self) -> None:
        """Forever: keep the process table's snapshot current for the next launch (cancel to
        stop)."""
        await self._processes.keep_current()

    async def tidy_logs(self) -> None:
        """Forever: delete removed VMIs' logs once their time has passed (cancel to stop)."""
        await logs.tidy(self._paths.log_instances, lambda: self._config.logs, self._existing)

    async def tidy_events(self) -> None:
        """Forever: delete removed VMIs' events once their time has passed (cancel to stop).

        In the event loop's thread, as events are recorded: a VMI's file is never deleted
        between reading and replacing it.
        """
        while True:
            keep = self._config.events.keepAfterRemovalSeconds
            alive = self._alive()
            if alive is not None:
                deleted = self._events.prune(alive, keep)
                if deleted:
                    log.info("events of %d removed VMIs deleted (over %d s old)", deleted, keep)
            await trio.sleep(min(max(keep / 2, EVENTS_SWEEP_MIN_SECONDS), EVENTS_SWEEP_MAX_SECONDS))

    async def collect_images(self) -> None:
        """Forever: image garbage collection, every imageGC.periodSeconds (cancel to stop)."""
        while True:
            await imagegc.collect(self._store, self._config.imageGC, self.images_in_use)
            await trio.sleep(self._config.imageGC.periodSeconds)

    @property
    def events(self) -> events.EventStore:
        """Where the VMIs' events are recorded (the VMs' too: one store per directory)."""
        return self._events

    def images_in_use(self) -> Set[str] | None:
        """The images garbage collection keeps: those of the VMIs not ended (their spec's
        references, the digests they started on, a successor's), of every VirtualMachine's
        template, and those being pulled. None before the spool is read."""
        if not self._applied:
            return None
        entries = [*self._desired.vms.values()]
        used = self._images.pulling()
        for vm in self._vms.values():
            if not vm.status.phase.final:
                entries += [vm.entry, *([vm.successor] if vm.successor else [])]
                used |= {v.imageID.partition("@")[2] for v in vm.status.volumes.values()}
        for entry in entries:
            prepare = entry.planned.plan.prepare if entry.planned else ()
            used |= {item.image for item in prepare if isinstance(item, ImageOverlay)}
        return used - {""}

    def _alive(self) -> Set[tuple[str, str]] | None:
        """The (namespace, name) of every VMI that exists; None before the spool is read."""
        if not self._applied:
            return None
        objects = [vm.status.manifest for vm in self._vms.values()]
        objects += [_bare_object(name) for name in self._refused]
        return {events.identity(o) for o in objects}

    def _existing(self) -> Set[str] | None:
        """The VMIs that exist (running, ended or refused); None before the spool is read."""
        return set(self._vms) | set(self._refused) if self._applied else None

    async def wait_changed(self) -> None:
        """Wait for the next status change of any VMI (the VM controller follows them)."""
        await self._changed.wait()

    def vmi_status(self, key: str) -> Status | None:
        """The live status of VMI `key` (a new object for each new VMI), if it exists."""
        vm = self._vms.get(key)
        return vm.status if vm is not None else None

    def replace(self, key: str, entry: Entry, grace: int | None = None) -> None:
        """Stop VMI `key` (within `grace`, if given) and start a new one of `entry`, even with
        the same spec: a VM's restart, or a new VMI for one that ended."""
        vm = self._vms.get(key)
        if vm is None or vm.remove:
            return
        if vm.successor is None:
            vm.status.event("Normal", "Restarting", "its VirtualMachine replaces it")
        vm.successor = entry
        self.set_grace(key, grace)
        self._stop(vm, remove=False)

    def set_grace(self, key: str, grace: int | None) -> None:
        """Stop VMI `key` within `grace` seconds, not its spec's, when it is stopped next."""
        vm = self._vms.get(key)
        if grace is not None and vm is not None:
            self._set_grace(vm, grace)

    def _status_written(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def apply(self, desired: Desired) -> None:
        """Start what is new, stop what is gone, restart what changed; returns at once."""
        if self._stopping:
            return
        self._desired = desired
        if not self._applied:
            self._applied = True
            self._take_over(desired)
            shutil.rmtree(self._paths.spool_runtime, ignore_errors=True)  # an earlier daemon's
            known = set(desired.vmis) | set(desired.refused) | set(self._vms)
            self._nursery.start_soon(self._collect, known)
        for problem in desired.problems:
            log.error("spool: %s", problem)
        for name, vm in list(self._vms.items()):
            with _guarded(name):
                self._reconcile(name, vm, desired)
        for name, entry in desired.vmis.items():
            if name not in self._vms:
                with _guarded(name):
                    self._start(entry)
        refused = {n: p for n, p in desired.refused.items() if n not in self._vms}
        for name, problems in refused.items():
            if self._refused.get(name) != problems:  # report each change once
                self._report_refused(name, problems)
        for name in set(self._refused) - set(refused) - set(self._vms):
            self._events.record(_bare_object(name), "Normal", "Deleted", f"{DELETED}: {REMOVED}")
            self._nursery.start_soon(self._forget, name)
        self._refused = refused
        self._show_files(desired)
        self._status_written()  # a manifest refused or mended changes the counts, no status

    def _reconcile(self, name: str, vm: _VM, desired: Desired) -> None:
        """Make a VMI the supervisor has match what the spool says of it now."""
        entry = desired.vmis.get(name)
        if entry is None and name in desired.refused:
            self._refused_while_running(vm, desired.refused[name])
        elif entry is None and vm.entry.file in desired.unreadable:
            # Its file is there but says nothing (a YAML error, refused): not a removal.
            self._refused_while_running(vm, desired.unreadable[vm.entry.file])
        elif entry is None:
            self._take_grace(name, vm)
            self._stop(vm, remove=True)
        else:
            self._update(name, vm, entry)

    def _show_files(self, desired: Desired) -> None:
        """A spool file with problems no VMI shows gets a `Failed` row of its own in `vmid get`:
        refused (owner, mode, a FIFO, a symlink out), no YAML, nameless, or a name taken."""
        running = {vm.entry.file for vm in self._vms.values()}
        files: dict[str, tuple[Problem, ...]] = {}
        for problem in desired.problems:
            if problem.file in desired.unreadable and problem.file in running:
                continue  # its VMI runs on and shows them: Synchronized=False
            files[problem.file] = (*files.get(problem.file, ()), problem)
        for file in self._files.keys() - files.keys():
            shutil.rmtree(self._paths.spool_runtime / Path(file).name, ignore_errors=True)
        for file, problems in files.items():
            if self._files.get(file) != problems:
                path = self._paths.spool_runtime / Path(file).name / STATUS_FILE
                # No name: it has none that can be trusted (a file others may write must not
                # claim a VMI's name); `vmid get` shows the file's name instead.
                annotations = {takeover.FILE_ANNOTATION: file}
                _write_refused(path, {"annotations": annotations}, problems)
        self._files = files

    def _take_over(self, desired: Desired) -> None:
        """Before anything starts, own all an earlier daemon left (runtime/takeover.py).

        Every QEMU still running is adopted; the spool then decides as for any running VMI
        (same spec: it goes on; another: a graceful restart; a broken manifest: left alone;
        none: a graceful stop). A VMI that had ended stays ended while its spec is unchanged.
        """
        left = takeover.survey(
            self._config, self._paths, self._accelerator, self._status_written, self._events
        )
        for name, found in left.items():
            try:
                self._take_over_one(found, desired)
            except Exception:  # a bug with one VMI must not leave the others untaken
                log.exception("%s: internal error taking it over", name)

    def _take_over_one(self, found: takeover.Left, desired: Desired) -> None:
        name = found.key
        unreadable = found.entry is not None and found.entry.file in desired.unreadable
        if found.pids:
            self._adopt(found, desired.vmis.get(name))
            file = self._vms[name].entry.file
            if name not in desired.vmis | desired.refused and file not in desired.unreadable:
                log.info("%s: its manifest was removed while vmid was not running", name)
        elif name in desired.vmis or unreadable:  # a broken file is no removal
            self._resume_ended(found, desired.vmis.get(name))
        elif name not in desired.refused and not self._lost_qemu(name):
            gone = found.status.manifest if found.status else _bare_object(name)
            self._events.record(gone, "Normal", "Deleted", f"{DELETED}: {REMOVED_OFFLINE}")
            _remove_state(self._paths, self._records, name)

    def _lost_qemu(self, name: str) -> bool:
        """Whether a process runs as the VMI's uid though no QEMU of it was found (its directory
        deleted under it): its uid record stays, so vmid never starts a second QEMU of that VMI
        on its disks (under another uid) while it runs."""
        uid = identity.recorded(self._paths.instance_state(name))
        pids = identity.processes_of(uid) if uid is not None else []
        if pids:
            log.error(
                "%s: a process of its uid %d runs that vmid does not supervise (pid %d): its "
                "state stays until it is stopped (kill %d)",
                name,
                uid,
                pids[0],
                pids[0],
            )
        return bool(pids)

    def _adopt(self, found: takeover.Left, wanted: Entry | None) -> None:
        name, (pid, *others) = found.key, found.pids
        for other in others:  # only a fault before this daemon can have made them
            log.error("%s: another QEMU of it runs too (pid %d); stop it by hand", name, other)
        entry, running = self._running_entry(found, pid, wanted)
        # The process table is the truth: a live QEMU whose status says it ended is a new run.
        earlier = found.status
        status = earlier if earlier is not None and not earlier.phase.final else None
        status = status or self._new_status(entry)
        self._vms[name] = vm = _VM(entry, status, adopt=pid, running=running)
        log.info("%s: found its QEMU (pid %d) running: taking it over", name, pid)
        self._nursery.start_soon(self._run, name, vm, name=f"vmi {name}")

    def _running_entry(
        self, found: takeover.Left, pid: int, wanted: Entry | None
    ) -> tuple[Entry, dict[str, Any] | None]:
        """The entry to supervise a found QEMU with, and the spec it runs (None: unknown)."""
        if found.status is not None and found.entry is not None:
            return found.entry, found.status.manifest.get("spec")
        if wanted is not None and wanted.planned is not None:
            # No status survived (a crash between fork and its first write): it runs the
            # manifest's spec if it runs exactly what vmid would run for it.
            vmi = self._stored(found.key, wanted)
            if takeover.runs_plan(pid, self._plan(vmi)):
                return wanted, to_data(vmi)["spec"]
        return wanted or self._bare(found.key), None

    def _resume_ended(self, found: takeover.Left, wanted: Entry | None) -> None:
        """A VMI with a status and no QEMU: ended (or died while vmid was not running).

        `wanted`: its manifest; None when its file is there but unreadable (kept as it is).
        """
        earlier, entry = found.status, wanted or found.entry
        if earlier is None or found.entry is None or entry is None:
            return
        if wanted is not None and earlier.phase.final and earlier.terminating:
            # vmid powered it off (its own stop, `onDaemonStop: stop`), not its guest: its
            # manifest runs it again, as after a reboot (and as the VM controller does).
            log.info("%s: powered off as vmid stopped: starting it again", found.key)
            return
        if wanted is not None and self._spec(found.key, wanted) != earlier.manifest.get("spec"):
            return  # another spec: a new VMI
        started = earlier.qemu is not None and bool(earlier.qemu.pid)
        if wanted is not None and not earlier.phase.final and not started:
            return  # it never got as far as a QEMU: start it
        vm = _VM(entry, earlier, task_ended=True, running=earlier.manifest.get("spec"))
        vm.done.set()
        self._vms[found.key] = vm
        if not earlier.phase.final:  # as KubeVirt: a VMI whose QEMU vanished has Failed
            why = "QEMU ended while vmid was not running" if started else "its file does not load"
            self._failed(vm, why, crashed=started)
            self._nursery.start_soon(self._detach, found.key)

    def _bare(self, name: str) -> Entry:
        return takeover.bare_entry(name, self._config, self._paths, self._accelerator)

    def _new_status(self, entry: Entry) -> Status:
        assert entry.key is not None
        assert entry.planned is not None
        manifest = _with_file(to_data(entry.planned.manifest.vmi), entry)
        manifest["metadata"]["creationTimestamp"] = now()
        path = self._paths.instance_runtime(entry.key) / STATUS_FILE
        return Status(path, manifest, self._status_written, self._events)

    async def _forget(self, name: str) -> None:
        """A refused manifest is gone: its addresses and state go too."""
        with trio.CancelScope(shield=True):
            await self._release(name)
            await trio.to_thread.run_sync(_remove_state, self._paths, self._records, name)

    async def _release(self, name: str) -> None:
        """Free the VMI's addresses (and taps); a failure is logged, the rest goes on."""
        with trio.move_on_after(NETWORK_CLEANUP_SECONDS) as scope:
            try:
                await self._network.release(name)
            except VmidError as exc:
                log.error("%s: releasing its addresses failed: %s", name, exc)
        if scope.cancelled_caught:
            log.error("%s: releasing its addresses took too long: given up", name)

    async def _detach(self, name: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(NETWORK_CLEANUP_SECONDS) as scope:
            try:
                await self._network.detach(name)
            except VmidError as exc:
                log.error("%s: removing its taps failed: %s", name, exc)
        if scope.cancelled_caught:
            log.error("%s: removing its taps took too long: given up", name)

    async def _collect(self, known: set[str]) -> None:
        try:
            await self._network.collect(known)
        except VmidError as exc:
            log.error("cleaning up after an earlier vmid: %s", exc)

    async def stop_all(self, keep: bool) -> None:
        """Stop every VMI in parallel (each with its own grace), or leave them running."""
        self._stopping = True
        self._images.close()
        for vm in self._vms.values():
            vm.successor = None
            vm.stop_mode = StopMode.LEAVE_RUNNING if keep else StopMode.POWER_OFF
            vm.scope.cancel()
        for vm in list(self._vms.values()):
            await vm.done.wait()

    def _dhcp_changed(self, names: Set[str], problem: str | None) -> None:
        """vmid's DHCP server failed (`problem`) or serves again (None): the VMIs on the pod
        network say so (a condition and an event, so `vmid describe` shows it)."""
        for name in sorted(names):
            vm = self._vms.get(name)
            if vm is None or vm.status.phase.final:
                continue
            old = vm.status.conditions.get(DHCP_CONDITION)
            if problem is None:
                if old is None or old.status == "True":
                    continue
                message = "vmid's DHCP server serves this VMI's addresses again"
                vm.status.condition(DHCP_CONDITION, True, "DHCPServerRunning", message)
                vm.status.event("Normal", "DHCPServerRecovered", message)
            else:
                message = f"vmid's DHCP server (dnsmasq): {problem}"
                vm.status.condition(DHCP_CONDITION, False, "DHCPServerFailed", message)
                vm.status.event("Warning", "DHCPServerFailed", message)
            try:
                vm.status.write()
            except OSError as exc:
                log.error("%s: cannot write its status: %s", name, exc)

    def restart(self, key: str, grace: int | None) -> str | None:
        """Stop VMI `key` (with `grace` instead of its spec's, if given) and start it again
        from its manifest, as `vmid restart` asks; returns why not, or None."""
        vm, entry = self._vms.get(key), self._desired.vmis.get(key)
        if self._stopping or vm is None or vm.remove:
            return "no such VMI (or it is being deleted)"
        if entry is None:
            return "its manifest is refused: mend it first"
        log.info("%s: restart requested", key)
        vm.status.event("Normal", "Restarting", "restart requested: vmid restart")
        vm.successor = entry
        self._set_grace(vm, grace)
        self._stop(vm, remove=False)
        return None

    def _take_grace(self, key: str, vm: _VM) -> None:
        """A deletion's grace period, if `vmid delete --grace-period` asked for one."""
        try:
            found, grace = requests.take(self._paths.requests, requests.DELETE, key)
        except RequestRefused as exc:
            log.warning("%s", exc)
            return
        if found and grace is not None:
            log.info("%s: deleted with a grace period of %d s", key, grace)
            self._set_grace(vm, grace)

    def _set_grace(self, vm: _VM, grace: int | None) -> None:
        vm.grace = grace
        if vm.instance is not None:
            vm.instance.grace = grace

    # Section: transitions

    def _start(self, entry: Entry) -> None:
        assert entry.key is not None
        # A deletion's request that no deletion took (the daemon was not running) is stale.
        requests.withdraw(self._paths.requests, requests.DELETE, entry.key)
        # Its records (firmware UUID, uid) are synced together once, before its launch uses them.
        vmi = self._stored(entry.key, entry, durable=False)
        vm = _VM(entry, self._new_status(entry), running=to_data(vmi)["spec"], vmi=vmi)
        vm.checked = entry
        self._vms[entry.key] = vm
        vm.status.event("Normal", "SuccessfulCreate", f"Created from its manifest {entry.file}")
        self._nursery.start_soon(self._run, entry.key, vm, name=f"vmi {entry.key}")

    def _stop(self, vm: _VM, remove: bool) -> None:
        if remove:
            vm.successor = None  # an edit (or a re-add) then a removal: nothing must start
            if vm.remove:
                return  # already on its way out
            why = STOPPED_BY_VM if vm.entry.owner else f"{REMOVED} ({vm.entry.file})"
            vm.status.event("Normal", "Deleted", f"{DELETED}: {why}")
        vm.remove = vm.remove or remove
        vm.scope.cancel()
        if vm.task_ended and (vm.remove or vm.successor is not None):
            # An ended VMI has no task left to clean up after it.
            vm.task_ended = False
            self._nursery.start_soon(self._end, vm.entry.key, vm)

    def _update(self, name: str, vm: _VM, entry: Entry) -> None:
        synchronized = vm.status.conditions.get("Synchronized")
        if synchronized is not None and synchronized.status == "False":
            vm.status.condition("Synchronized", True)
            vm.status.write()
        if entry is vm.checked and vm.successor is None and not vm.remove:
            return
        unchanged = vm.running is not None and vm.running == self._spec(name, entry)
        if vm.successor is None and not vm.remove and unchanged:
            vm.entry = vm.checked = entry
            return
        # A changed spec, or a manifest back while its VMI is being removed: a new VMI
        # starts once the old one has stopped; the newest manifest wins.
        if vm.successor is None:
            log.info("%s: manifest changed: restarting with the new spec", name)
            vm.status.event(
                "Normal", "Restarting", f"{entry.file} changed: restarting with its spec"
            )
        vm.successor = entry
        self._stop(vm, remove=False)

    def _refused_while_running(self, vm: _VM, problems: tuple[Problem, ...]) -> None:
        # KubeVirt specs are immutable: a broken edit leaves the running VMI alone.
        old = vm.status.conditions.get("Synchronized")
        message = _summary(problems)
        if old is None or old.message != message:
            vm.status.condition("Synchronized", False, "InvalidManifest", message)
            vm.status.event("Warning", "SyncFailed", f"{REFUSED_EDIT}: {message}")
            vm.status.write()
            for problem in problems:
                log.error("%s", problem)

    def _report_refused(self, key: str, problems: tuple[Problem, ...]) -> None:
        for problem in problems:
            log.error("%s", problem)
        path = self._paths.instance_runtime(key) / STATUS_FILE
        _write_refused(path, _bare_object(key)["metadata"], problems, self._events)

    # Section: one VMI's task

    async def _run(self, name: str, vm: _VM) -> None:
        with vm.scope:
            try:
                # A QEMU being taken over must get its instance whatever comes meanwhile: a stop
                # is then a graceful stop of it, not a VMI forgotten while its QEMU runs on.
                with trio.CancelScope(shield=vm.adopt is not None):
                    instance = vm.instance = await self._instance(name, vm)
                await instance.run()
            except (VmidError, OSError) as exc:
                log.warning("%s: %s", name, exc)
                self._failed(vm, str(exc))
                if vm.instance is None and vm.adopt is None:  # nothing else cleans up after it
                    await self._detach(name)  # (a QEMU being taken over keeps its taps)
            except Exception as exc:  # a bug in one VMI's handling must not stop the others
                log.exception("%s: internal error", name)
                self._failed(vm, f"internal error in vmid: {exc!r}")
        if vm.instance is not None and vm.instance.left_running:
            # The daemon stops with `keep` (even while this VMI was on its way out): its QEMU
            # runs on, so its files stay for the next daemon, which decides anew.
            vm.done.set()
        elif vm.remove or vm.successor is not None:
            await self._end(name, vm)
        else:
            vm.task_ended = True
            vm.done.set()

    async def _end(self, name: str | None, vm: _VM) -> None:
        """The VMI is gone: remove its files, then start its successor, if any."""
        assert name is not None
        vm.status.close()
        with trio.CancelScope(shield=True):
            # Addresses first: once its status is gone, nothing of the VMI is left.
            if vm.successor is None:
                await self._release(name)
            # A restart with a new spec is the same VMI to its user: it keeps its uid and its
            # firmware UUID (cloud-init's instance-id: a resize must not redo the first boot).
            keep = vm.successor is not None
            await trio.to_thread.run_sync(_remove_state, self._paths, self._records, name, keep)
            if keep and vm.successor is None:  # removed meanwhile: nothing of it stays
                await self._forget(name)
        if self._vms.get(name) is vm:
            del self._vms[name]
            log.info("%s: removed", name)
            if vm.successor is not None and not self._stopping:
                self._start(vm.successor)
            elif name in self._desired.refused and not self._stopping:
                # Its manifest came back invalid while it stopped: shown as refused, as any.
                self._refused[name] = self._desired.refused[name]
                self._report_refused(name, self._refused[name])
        self._status_written()
        vm.done.set()

    def _failed(self, vm: _VM, reason: str, crashed: bool = False) -> None:
        """Mark the VMI Failed: it could not start, or (`crashed`) its QEMU ended."""
        if vm.status.phase.final:
            return
        vm.status.transition(Phase.FAILED, reason)
        if crashed:
            vm.status.event("Warning", "Stopped", f"The VirtualMachineInstance crashed: {reason}")
        else:
            vm.status.event("Warning", "SyncFailed", reason)
        vm.status.condition("Ready", False, "GuestNotRunning")
        try:
            vm.status.write()
        except OSError as exc:
            log.error("%s: cannot write its status: %s", vm.entry.key, exc)

    async def _instance(self, name: str, vm: _VM) -> Instance:
        vmi = vm.vmi or self._stored(name, vm.entry)
        plan = self._plan(vmi)
        if vm.adopt is None:  # a new QEMU for this spec (an adopted one keeps its status)
            data = to_data(vmi)
            metadata = _with_file(data, vm.entry)["metadata"]
            metadata["creationTimestamp"] = vm.status.manifest["metadata"]["creationTimestamp"]
            vm.status.manifest = {**data, "metadata": metadata}
        store, qemu_img, paths = self._store, self._config.qemuImg, self._paths
        instance = Instance(
            plan,
            vm.status,
            store,
            qemu_img,
            self._accelerator,
            self._network,
            adopt=vm.adopt,
            user=await self._user(name, vm.adopt),
            records=self._paths.instance_state(name),
            # Its own directory's parents, up to its namespace's.
            traverse=(paths.runtime, paths.runtime_instances, Path(plan.cwd).parents[1]),
            logs=self._config.logs,
            stop_mode=lambda: vm.stop_mode,
            images=self._images,
            processes=self._processes,
            machines=self._machines,
        )
        instance.grace = vm.grace
        return instance

    def _spec(self, name: str, entry: Entry) -> dict[str, Any]:
        """The spec an entry means, as data, with the firmware UUID the VMI keeps."""
        spec: dict[str, Any] = to_data(self._stored(name, entry))["spec"]
        return spec

    def _stored(self, name: str, entry: Entry, durable: bool = True) -> t.VirtualMachineInstance:
        """The entry's VMI with the firmware UUID it keeps while it exists (a VM's: the one
        derived from the VM, the same for each of its VMIs). `durable`: see `firmwareid.kept`."""
        assert entry.planned is not None
        if entry.owner is not None:
            return entry.planned.manifest.vmi
        state = self._paths.instance_state(name)
        return firmwareid.kept(entry.planned.manifest.vmi, state, durable)

    def _gives_uid(self, adopt: int | None) -> bool:
        """Whether a VMI's QEMU gets a uid of its own (at its launch, not at a take-over)."""
        return adopt is None and not self._config.qemuAsRoot

    async def _user(self, name: str, adopt: int | None) -> identity.QemuUser | None:
        """The identity VMI `name`'s QEMU runs as: a uid of its own, kept while the VMI exists.

        A QEMU taken over keeps the uid it runs as: its record, or none for a QEMU an older
        vmid started (the status then shows the uid it really runs as). A new uid is one neither
        a record nor the kept process table (runtime/proctable.py) shows taken.

        Raises:
            IdentityError: no uid of `qemuUids` is left.
        """
        state = self._paths.instance_state(name)
        if adopt is not None and identity.recorded(state) is None:
            return None
        if self._config.qemuAsRoot:
            if adopt is None:
                log.warning("%s: its QEMU runs as root (qemuAsRoot: true in vmid.yaml)", name)
            return None
        uids = self._config.qemuUids
        async with self._uids:
            # The kept process table, current under the lock (a QEMU that ended while this
            # VMI waited may hold a uid its removed record no longer shows): a process of a
            # uid no process had then can only come from vmid's own launch as it.
            running = (await self._processes.current()).ids
            uid = await trio.to_thread.run_sync(
                identity.allocate,
                state,
                uids.first,
                uids.count,
                running,
                self._records,
                adopt is not None,  # a launch's record is synced with its firmware UUID's
            )
        return identity.vmi_user(uid, name)

    def _plan(self, vmi: t.VirtualMachineInstance) -> LaunchPlan:
        plan, findings = build(vmi, self._config, self._paths, self._accelerator)
        assert plan is not None, findings  # the spool planned this very VMI already
        return plan


def _remove_state(
    paths: Paths, records: identity.Records, name: str, keep_identity: bool = False
) -> None:
    """Delete a gone VMI's ephemeral files and runtime directory (logs are kept, given to root).

    Its status goes last, so a reader that finds no status finds nothing else of the VMI
    either (unless a file could not be removed: that is logged); its uid record just before,
    and only once nothing else of the VMI is left (its QEMU's working directory and sockets are
    in the runtime directory): until then no other VMI gets its uid. `keep_identity`: the same
    VMI starts again (a new spec): it keeps its uid and firmware UUID.
    """
    runtime, state = paths.instance_runtime(name), paths.instance_state(name)
    _empty(runtime, keep={STATUS_FILE})
    kept = {identity.UID_RECORD} | ({firmwareid.FIRMWARE_UUID_FILE} if keep_identity else set())
    _empty(state, keep=kept)
    if keep_identity:
        safefile.remove_tree(runtime)
        return
    logfile.mark_removed(paths.instance_logs(name))
    uid = identity.recorded(state)
    if uid is not None:
        if (_entries(runtime) - {STATUS_FILE}) | (_entries(state) - {identity.UID_RECORD}):
            log.error("%s: some of its files could not be removed: uid %d stays taken", name, uid)
            safefile.remove_tree(runtime)
            return
        identity.give_back(paths.instance_logs(name), uid)
    identity.release(state)
    if uid is not None:
        records.forget(uid)
    safefile.remove_tree(runtime)


def _empty(directory: Path, keep: Set[str]) -> None:
    """Remove what `directory` holds but the entries named in `keep` (what cannot be removed
    stays, and is found by whoever checks). Its QEMU's working directory is among them: a
    guest's, nested as deep as it likes (`safefile.remove_tree`)."""
    with contextlib.suppress(FileNotFoundError):
        for item in directory.iterdir():
            if item.name not in keep:
                safefile.remove_tree(item)


def _entries(directory: Path) -> set[str]:
    with contextlib.suppress(FileNotFoundError):
        return {item.name for item in directory.iterdir()}
    return set()


@contextlib.contextmanager
def _guarded(key: str) -> Iterator[None]:
    """What goes wrong with one VMI (a bug, a file that cannot be written) is logged, and the
    spool's other VMIs are still started and stopped."""
    try:
        yield
    except Exception:
        log.exception("%s: internal error applying its manifest", key)


def _bare_object(key: str) -> dict[str, Any]:
    """A VMI object of which vmid knows only the namespace/name (its manifest is refused or
    gone)."""
    namespace, name = names.split(key)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": namespace},
    }


def _with_file(manifest: dict[str, Any], entry: Entry) -> dict[str, Any]:
    """The object as vmid shows it: with the spool file it comes from, as an annotation (and
    the VM that owns it)."""
    metadata = manifest.setdefault("metadata", {})
    annotations = {**metadata.get("annotations", {}), takeover.FILE_ANNOTATION: entry.file}
    metadata["annotations"] = annotations
    if entry.owner is not None:
        metadata["ownerReferences"] = [entry.owner]
    return manifest


def _write_refused(
    path: Path,
    metadata: dict[str, Any],
    problems: tuple[Problem, ...],
    store: events.EventStore | None = None,
) -> None:
    """The status of a manifest that is refused: `Failed`, its problems as the reason (and a
    `SyncFailed` event, for a VMI's: a spool file's row is no VMI's)."""
    status = Status(
        path,
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {**metadata, "creationTimestamp": now()},
        },
        events=store,
    )
    status.transition(Phase.FAILED, _summary(problems))
    status.condition("Synchronized", False, "InvalidManifest", _summary(problems))
    status.event("Warning", "SyncFailed", _summary(problems))
    try:
        status.write()
    except OSError as exc:
        log.error("%s: cannot write this status: %s", path, exc)


def _pull_settings(paths: Paths, config: Config) -> PullSettings:
    images = config.images
    return PullSettings(
        skopeo=skopeo_for(paths, images),
        maxDiskSize=images.maxDiskSize.value(),
        backoff=images.pullBackoffSeconds,
    )


def _summary(problems: tuple[Problem, ...]) -> str:
    return "; ".join(str(p) for p in problems)
