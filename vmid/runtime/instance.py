"""One VMI's life as a trio task: prepare its files, launch QEMU, supervise it, stop it.

Cancelling the task is the stop request, as with `trio.run_process(deliver_cancel=...)`: the
shutdown ladder then runs shielded (ACPI powerdown, re-sent every 5 s; when the grace period has
passed, `quit`, then SIGKILL) and the task ends once QEMU is gone and the status is final.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from vmid.api import imageref
from vmid.api.vmistatus import QemuStatus, VolumeStatus, interface_data, interface_from_data
from vmid.config import Accelerator, Logs
from vmid.errors import LaunchError, MachineError, MonitorError, VmidError
from vmid.host import beneath, identity, journal, safefile, storage, unixsock
from vmid.host.identity import QemuUser
from vmid.host.machines import Machines, describe, scope_of
from vmid.plan.build import QEMU_DIR
from vmid.plan.model import Access, ImageOverlay, LaunchPlan, Prepared, add_fd, device_id
from vmid.runtime import agent, probes
from vmid.runtime.logs import VmLogs
from vmid.runtime.network import Network
from vmid.runtime.process import UNKNOWN_EXIT, AdoptedProcess, cmdline, runs_as
from vmid.runtime.proctable import ProcessTable
from vmid.runtime.pull import Puller
from vmid.runtime.qmp import Event, Monitor
from vmid.runtime.status import Phase, Status

log = logging.getLogger(__name__)

POWERDOWN_RESEND_SECONDS = 5.0  # a booting guest can miss ACPI events (KubeVirt re-sends too)
MONITOR_CONNECT_TIMEOUT = 30.0
QUIT_TIMEOUT = 2.0
#: How long QEMU's last events (SHUTDOWN, GUEST_PANICKED) may take to be read once it has
#: exited: its socket is closed by then, so this ends at once unless the host is loaded; a
#: second was too short on a loaded host (a guest that powered off was reported Failed).
HANGUP_TIMEOUT = 10.0
CLEANUP_TIMEOUT = 10.0
#: All of QEMU's environment but the plan's (TZ): none of the daemon's (NOTIFY_SOCKET,
#: WATCHDOG_*, a locale), so QEMU's messages quoted in reasons are stable English, as libvirt.
QEMU_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
}
#: KubeVirt's message when it kills a VM (virt-handler's VMIStopping).
STOPPING = "VirtualMachineInstance stopping"
#: Files one VMI prepares at once: its 30 disks wait for each other, not another VMI for them
#: (qemu-img runs are bounded daemon-wide too: storage.QEMU_IMG_RUNS).
PREPARE_AT_ONCE = 2
#: KubeVirt's Paused reasons and messages (virt-handler), for a pause asked for and for one
#: QEMU made itself on a disk error (werror/rerror=stop: runstate io-error).
PAUSED_BY_USER = ("PausedByUser", "VMI was paused by user")
PAUSED_IO_ERROR = ("PausedIOError", "VMI was paused, low-level IO error detected")
#: query-block's io-status of a disk whose error stopped the guest, in words.
_IO_STATUS = {"nospace": "No space left on device", "failed": "I/O error"}
#: How QEMU's -device ids name a manifest's disk: `ua-disk-root`.
DISK_ID_PREFIX = device_id("disk", "")
#: The guest agent's chardev and virtserialport ids (plan/devices.py guest_agent).
AGENT_CHARDEV = "charchannel0"
AGENT_PORT = "channel0"
#: `vmid`'s requests to the guest agent, in the VMI's runtime directory (root's).
AGENT_REQUESTS = "agent.sock"


class StopMode(enum.Enum):
    """What cancelling a VMI's task does to its QEMU."""

    #: The shutdown ladder: ACPI power-off, killed once the grace period has passed.
    POWER_OFF = "power off"
    #: Nothing: QEMU goes on running for a later daemon to take over (`onDaemonStop: keep`).
    LEAVE_RUNNING = "leave running"


@attrs.define
class _Outcome:
    """What ended the VM, gathered from QMP events and from the stop ladder."""

    guest_shutdown: bool = False
    panicked: bool = False
    reset_terminated: bool = False
    stop: str | None = None  # "killed-after-grace", "killed-at-once", "acpi"
    liveness: str | None = None  # the failed livenessProbe's output, once it killed QEMU


class Instance:
    """The runtime side of one VMI: its plan, its QEMU process, its status."""

    def __init__(
        self,
        plan: LaunchPlan,
        status: Status,
        store: storage.ImageStore,
        qemu_img: str,
        accelerator: Accelerator,
        network: Network,
        adopt: int | None = None,
        user: QemuUser | None = None,
        traverse: tuple[Path, ...] = (),
        logs: Logs | None = None,
        stop_mode: Callable[[], StopMode] = lambda: StopMode.POWER_OFF,
        images: Puller | None = None,
        processes: ProcessTable | None = None,
        machines: Machines | None = None,
        records: Path | None = None,
    ) -> None:
        """`adopt`: the pid of this VM's QEMU left running by an earlier daemon, to take over.

        `user`: run QEMU as this VM's own uid (None: as root), handing it its working directory
        before the launch; it may pass through vmid's directories `traverse`. `logs`: the bounds
        of its log files. `stop_mode`: what a cancellation means, asked when it comes.
        `images`: where containerDisk images come from (pulled as their policy says); without
        it, from the store only. `processes`: the process table kept for the launches (the one
        `user` was allocated from; None: one of its own).
        `machines`: systemd-machined, which gives QEMU a scope of its own (None: no systemd).
        `records`: its state directory, whose records (uid, firmware UUID) are synced before
        its guest runs (None: they are synced already).
        """
        self.plan = plan
        self.status = status
        self.log = journal.for_vmi(log, plan.name)
        self._store = store
        self._images = images
        self._qemu_img = qemu_img
        self._accelerator = accelerator
        self._network = network
        self._attached = False
        self._adopt = adopt
        self._user = user
        self._traverse = traverse
        self._processes = processes or ProcessTable(Path(plan.cwd).parents[2], QEMU_DIR)
        self._machines = machines
        self._records = records
        self._process: trio.Process | AdoptedProcess | None = None
        #: QEMU's real argv (its fd numbers, not the plan's placeholders), once it runs.
        self._argv: list[str] = []
        self._monitor: Monitor | None = None
        self._outcome = _Outcome()
        #: What the last disk error that stops the guest said (BLOCK_IO_ERROR, action stop).
        self._io_error: str | None = None
        self._logs = VmLogs(plan, logs or Logs())
        self._log_nursery: trio.Nursery | None = None
        self._stop_mode = stop_mode
        #: When the shutdown ladder, once begun, kills QEMU (trio's clock): the grace's end.
        self.kill_at: float | None = None
        self._agent = agent.GuestAgent(
            plan.name, Path(plan.sockets.guestAgent), self._on_agent, self.status.event
        )
        #: The NICs as vmid made them, before the guest agent's view is merged in.
        self._domain_interfaces: list[dict[str, Any]] = []
        self.status.probe_ready = None if plan.readinessProbe is None else False
        #: The grace period of the stop to come instead of the plan's (`vmid delete
        #: --grace-period`, as kubectl's overrides terminationGracePeriodSeconds; a VM's
        #: `vmid stop --grace-period`).
        self.grace: int | None = None

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        return f"<Instance name={self.plan.name!r} phase={self.status.phase} pid={pid}>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the VMI until QEMU ends; cancellation stops it gracefully.

        Calls `task_status.started()` once the VMI is Running. Raises VmidError (after marking
        the status Failed) when it cannot be prepared or launched.

        **Cancellation:** the shutdown ladder runs shielded, bounded by the grace period. Taking
        over a running QEMU is shielded too (bounded by the monitor's timeouts): a stop that
        comes meanwhile is a graceful stop once it is supervised (a QEMU that never answers its
        monitor is killed, as libvirt does).
        """
        try:
            async with trio.open_nursery() as nursery:  # the log pipes, drained while QEMU lives
                self._log_nursery = nursery
                try:
                    await self._run(task_status)
                finally:
                    self._logs.end(detached=self.left_running)
        except BaseExceptionGroup as group:  # the log pipes never fail: raise what the VM did
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            with trio.CancelScope(shield=self._adopt is not None):
                await self._start()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._end(exc)
            raise
        task_status.started()
        try:
            await self._supervise()
        finally:
            with trio.CancelScope(shield=True):
                await self._end(None)

    @property
    def left_running(self) -> bool:
        """Its QEMU runs on and is left so on purpose (a daemon stopping with `keep`)."""
        alive = self._process is not None and self._process.returncode is None
        return alive and self._stop_mode() is StopMode.LEAVE_RUNNING

    # Section: start

    async def _start(self) -> None:
        plan = self.plan
        if self._adopt is not None:
            await self._readopt(self._adopt)
            return
        synced = self._sync_records()
        await self._check_alone()
        self.status.write()
        await self._prepare()
        await self._attach()
        listener = _listen(plan)
        try:
            await trio.to_thread.run_sync(self._hand_over)
            self._process = await self._launch(listener)
            self.status.transition(Phase.SCHEDULED)
            self.status.qemu = self._qemu_status()
            self.status.write()
            await self._own_scope(self._process.pid, guest_ran=False)
            client = unixsock.connect(Path(plan.sockets.control))
        finally:
            listener.close()
        with trio.move_on_after(MONITOR_CONNECT_TIMEOUT):
            try:
                self._monitor = await Monitor.connect(plan.name, client)
            except MonitorError as exc:
                raise LaunchError(await self._logs.qemu_said() or str(exc)) from exc
        if self._monitor is None:
            client.close()
            raise LaunchError(
                f"QEMU did not answer on its control monitor within {MONITOR_CONNECT_TIMEOUT:g} s"
            )
        await self._network.serving(plan.name, plan)  # before its guest asks for an address
        await synced()  # its uid's record and its firmware UUID on disk before its guest runs
        await self._boot()

    def _sync_records(self) -> Callable[[], Awaitable[None]]:
        """Begin syncing the VMI's records (uid, firmware UUID) in a worker thread, beside the
        launch (an fsync can take milliseconds); the returned join raises LaunchError if it
        failed. Nothing persistent is the uid's before its guest runs (its working directory
        is made anew at each launch), so the sync need only be done by then."""
        done = trio.Event()
        failed: list[OSError] = []

        async def sync(records: Path) -> None:
            try:
                await trio.to_thread.run_sync(identity.sync_records, records)
            except OSError as exc:
                failed.append(exc)
            finally:
                done.set()

        async def join() -> None:
            await done.wait()
            if failed:
                raise LaunchError(f"cannot save its uid and UUID: {failed[0]}") from failed[0]

        if self._records is None:
            done.set()
        else:
            assert self._log_nursery is not None
            self._log_nursery.start_soon(sync, self._records)
        return join

    async def _check_alone(self) -> None:
        """Never two QEMUs on one VM's disks: refuse to launch while a process of this VMI runs
        that vmid does not supervise (in its directory, or as its uid, which is its alone).

        The supervisor owns every QEMU it found at start and every one it started, so this holds
        only against a bug, or a QEMU whose directory was deleted under it. The kept snapshot
        decides only when it shows nothing in the way; else the table is read again.
        """
        uid = self._user.uid if self._user is not None else None
        if not (await self._processes.current()).in_the_way(self.plan.name, uid):
            return
        snapshot = await self._processes.fresh()
        name = self.plan.name
        pids = [pid for pid in snapshot.directories.get(name, ()) if runs_as(pid, name)]
        if uid is not None:
            pids += identity.processes_of(uid, snapshot.ids)
        if pids:
            raise LaunchError(
                f"a process of this VMI that vmid does not supervise is running (pid {pids[0]}); "
                f"vmid will not start a second QEMU on its disks (stop it: kill {pids[0]})"
            )

    async def _readopt(self, pid: int) -> None:
        """Take over a QEMU an earlier daemon started: watch it, reconnect, resume supervision."""
        self._process = AdoptedProcess(pid)
        self._attached = True  # its taps exist: if re-adoption fails, they go with it
        assert self._log_nursery is not None
        self._logs.reopen(self._log_nursery)
        client = unixsock.connect(Path(self.plan.sockets.control))
        with trio.move_on_after(MONITOR_CONNECT_TIMEOUT):
            self._monitor = await Monitor.connect(self.plan.name, client)
        if self._monitor is None:
            client.close()
            raise LaunchError("the QEMU left by an earlier vmid does not answer on its monitor")
        await self._attach()
        state = (await self._monitor.execute("query-status")).get("status")
        if state == "io-error":
            self._io_error = await self._failed_disks()
        await self._own_scope(pid, guest_ran=state != "prelaunch")
        self.status.forget_deletion()  # the spool decides anew whether it goes
        # What it really runs, and as whom (a QEMU an older vmid started has no uid record).
        self._argv = cmdline(pid)
        uid = os.stat(f"/proc/{pid}").st_uid
        self.status.qemu = self._qemu_status()._replace(uid=uid)
        self.status.event("Normal", "Adopted", f"QEMU pid {pid} re-adopted from an earlier vmid")
        self.log.info("re-adopted qemu pid=%d (%s)", pid, state)
        if self.status.phase is Phase.PENDING:  # it died before it could record the launch
            self.status.transition(Phase.SCHEDULED)
        if state == "prelaunch" and self.status.phase is Phase.SCHEDULED:
            # The earlier daemon died between launch and `cont`: the guest never ran, and its
            # records may not have reached the disk yet.
            synced = self._sync_records()
            await synced()
            await self._boot()
            return
        if self.status.phase is not Phase.RUNNING:
            self.status.transition(Phase.RUNNING)
        # prelaunch: started with startStrategy Paused; io-error: stopped on a disk error.
        self._set_paused(state in ("paused", "prelaunch", "io-error"))
        self.status.write()

    async def _own_scope(self, pid: int, guest_ran: bool) -> None:
        """QEMU in a scope of its own with the VMI's limits (systemd-machined), before its guest
        runs (QEMU waits for `cont`); the scope of a QEMU an earlier vmid started is kept.

        A QEMU whose guest has not run yet fails the VMI when machined refuses it, as libvirt
        fails such a start (a VM never runs without the limits it asked for); a running guest
        is only logged, never killed over bookkeeping. Raises LaunchError.
        """
        if self._machines is None:
            return
        scope = scope_of(pid)
        if scope is not None:
            self.log.info("QEMU pid %d keeps its scope %s", pid, scope)
            return
        try:
            scope = await self._register(pid)
        except MachineError as exc:
            if guest_ran:
                self.log.warning("QEMU pid %d runs without a cgroup of its own: %s", pid, exc)
                return
            raise LaunchError(f"QEMU could not be given a cgroup of its own: {exc}") from exc
        except Exception:
            if not guest_ran:
                raise
            # Whatever went wrong (a bug): a running guest is never killed over bookkeeping.
            self.log.exception("QEMU pid %d runs without a cgroup of its own", pid)
            return
        self.log.info("QEMU pid %d in scope %s (%s)", pid, scope, describe(self.plan.cgroup))

    async def _register(self, pid: int) -> str:
        """machined's scope for QEMU `pid`, unless QEMU ends first: machined never answers for
        a leader that died under it, and the VMI's reason is then what QEMU said.

        Raises MachineError, LaunchError.
        """
        assert self._machines is not None
        assert self._process is not None
        machines, plan = self._machines, self.plan
        scope: str | MachineError = ""

        async def register(done: trio.CancelScope) -> None:
            nonlocal scope
            taps = [tap.device for tap in plan.taps]
            try:  # raised here, it would come out of the nursery in an exception group
                scope = await machines.register(plan.name, plan.uuid, pid, plan.cgroup, taps)
            except MachineError as exc:
                scope = exc
            done.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(register, nursery.cancel_scope)
            await self._process.wait()
            nursery.cancel_scope.cancel()
        if isinstance(scope, MachineError):
            raise scope
        if not scope:
            said = await self._logs.qemu_said()
            raise LaunchError(said or f"QEMU (pid {pid}) ended before it had a cgroup of its own")
        return scope

    async def _failed_disks(self) -> str:
        """What `query-block` says of the disks whose error stopped the guest."""
        assert self._monitor is not None
        try:
            blocks = await self._monitor.execute("query-block")
        except MonitorError as exc:  # the pause is what matters; which disk, a detail
            return f"a disk (query-block failed: {exc})"
        names = _disk_names(self.plan.argv)
        failed = [
            _disk_error(
                names,
                block.get("inserted", {}).get("node-name", "?"),
                _IO_STATUS.get(block["io-status"], block["io-status"]),
            )
            for block in blocks
            if block.get("io-status", "ok") != "ok"
        ]
        return "; ".join(failed) or "a disk"

    async def _prepare(self) -> None:
        """The plan's files, PREPARE_AT_ONCE at a time: two qemu-img runs need not wait.

        Raises the first VmidError or OSError as it is (a bug still comes as a group).
        """
        errors: list[Exception] = []

        limiter = trio.CapacityLimiter(PREPARE_AT_ONCE)

        async def one(item: Prepared) -> None:
            try:
                image = None
                if isinstance(item, ImageOverlay) and self._images is not None:
                    # Waiting for a pull holds no limiter: the VMI's other files go on.
                    image = await self._images.image(item, self.status)
                    self._use_image(item, image)
                async with limiter:
                    await storage.prepare(item, self._store, self._qemu_img, image)
            except (VmidError, OSError) as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for item in self.plan.prepare:
                nursery.start_soon(one, item)
        if errors:
            raise errors[0]

    def _use_image(self, item: ImageOverlay, image: storage.StoredImage) -> None:
        """QEMU gets the digest's file the reference resolved to now: a tag moved later (a pull
        for another VMI) never changes this VM's disk; its volumeStatus names that digest."""
        named, digest_file = str(self._store.reference_path(item.image)), str(image.path)
        files, argv = list(self.plan.files), list(self.plan.argv)
        for index, file in enumerate(self.plan.files):
            if file.path == named:  # the file and the -add-fd naming it (argv_for matches both)
                files[index] = attrs.evolve(file, path=digest_file)
                old, new = (add_fd(file.fd, file.fdset, p) for p in (named, digest_file))
                argv = [new if arg == old else arg for arg in argv]
        self.plan = attrs.evolve(self.plan, files=tuple(files), argv=tuple(argv))
        self._store.used(image)
        image_id = f"{imageref.repository(item.image)}@{image.digest}" if image.digest else ""
        self.status.volumes[item.volume] = VolumeStatus(
            name=item.volume, imageID=image_id, size=image.virtualSize
        )

    async def _attach(self) -> None:
        """The VM's taps on their bridges, with addresses (before QEMU opens the taps)."""
        self._attached = True
        adopted = self._adopt is not None
        owner = self._user.uid if self._user else os.getuid()
        self.status.interfaces = await self._network.attach(
            self.plan.name, self.plan, owner, adopted
        )
        self._domain_interfaces = [interface_data(i) for i in self.status.interfaces]
        for interface in self.status.interfaces:
            if interface.ipAddress:
                self.log.info("interface %s: %s", interface.name, interface.ipAddress)

    async def _detach(self) -> None:
        if not self._attached:
            return
        try:
            await self._network.detach(self.plan.name)
        except VmidError as exc:
            self.log.error("removing its taps failed: %s", exc)

    def _hand_over(self) -> None:
        """QEMU's working directory anew (whatever an earlier QEMU, or a uid that had its
        number before a power loss, left there is gone); the VM's own uid gets it and passes
        through vmid's directories to it (its disks, images, ISOs and EFI files it gets by fd,
        its logs are pipes)."""
        cwd = Path(self.plan.cwd)
        safefile.remove_tree(cwd)
        cwd.mkdir()
        user = self._user
        if user is None:  # QEMU runs as root (qemuAsRoot)
            return
        identity.check_unambiguous(user)
        for directory in self._traverse:
            identity.make_traversable(directory)
        identity.make_traversable(cwd.parent)
        cwd.chmod(0o700)
        identity.give(user, cwd)  # its sockets; root never writes there

    async def _launch(self, listener: socket.socket) -> trio.Process:
        plan = self.plan
        user = self._user
        assert self._log_nursery is not None
        stderr, pipes = self._logs.open(self._log_nursery)  # QEMU writes pipes, vmid the files
        files: dict[int, int] = {}
        taps: dict[str, int] = {}
        try:
            if any(f.access is not Access.LOG for f in plan.files):  # logs are pipes: no hop
                files = await trio.to_thread.run_sync(beneath.open_files, plan.files)
            taps = self._network.open_taps(plan)
            self._argv = list(plan.argv_for(listener.fileno(), taps, {**files, **pipes}))
            process = await trio.lowlevel.open_process(
                identity.launch_argv(user, self._argv) if user else self._argv,
                cwd=plan.cwd,
                env={**QEMU_ENVIRONMENT, **plan.env},
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                pass_fds=(listener.fileno(), *taps.values(), *files.values(), *pipes.values()),
                start_new_session=True,  # a signal to vmid's group never reaches guests
                umask=0o177,  # its sockets: 0600, for its user (and root) only
            )
        finally:
            _close([stderr, *pipes.values(), *files.values(), *taps.values()])
        self.status.event("Normal", "Created", "VirtualMachineInstance defined.")
        self.log.info("qemu started pid=%d", process.pid)
        self.log.debug("qemu argv: %s", " ".join(self._argv))
        return process

    async def _boot(self) -> None:
        assert self._monitor is not None
        for tap in self.plan.taps:
            if not tap.linkUp:
                await self._monitor.execute(
                    "set_link", {"name": device_id("interface", tap.interface), "up": False}
                )
        if not self.plan.startPaused:
            await self._monitor.execute("cont")
        self.status.transition(Phase.RUNNING)
        self._set_paused(self.plan.startPaused)
        self.status.condition(
            "SoftwareEmulation",
            self._accelerator is Accelerator.TCG,
            "TCG" if self._accelerator is Accelerator.TCG else "",
        )
        self.status.event("Normal", "Started", "VirtualMachineInstance started.")
        self.status.write()
        self.log.info("running")

    def _qemu_status(self) -> QemuStatus:
        sockets = self.plan.sockets
        return QemuStatus(
            pid=self._process.pid if self._process else None,
            uid=self._user.uid if self._user else 0,
            qmpSocket=sockets.qmp,
            consoleSocket=sockets.console,
            vncSocket=sockets.vnc,
            guestAgentSocket=sockets.guestAgent,
            argv=tuple(self._argv),
            acpi=self.plan.acpi,
        )

    # Section: supervise

    async def _supervise(self) -> None:
        """Follow QEMU's events until it exits; if cancelled meanwhile, stop it first."""
        assert self._process is not None
        assert self._monitor is not None
        monitor = self._monitor
        async with trio.open_nursery() as nursery:
            # Shielded: the events of a stopping guest (SHUTDOWN) decide its final phase.
            events = trio.CancelScope(shield=True)
            nursery.start_soon(self._follow_events, monitor, events)
            # Shielded too, ended below: a freeze is undone through it before it goes.
            guest_agent = trio.CancelScope(shield=True)
            nursery.start_soon(self._run_agent, monitor, guest_agent)
            try:
                await self._process.wait()
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        if self._process.returncode is None:  # no freeze outlives supervision
                            await self._agent.thaw_before_leaving()
                        guest_agent.cancel()
                        await self._stop()
                        if self._process.returncode in (0, UNKNOWN_EXIT):  # it ended itself:
                            # read its last words (SHUTDOWN, GUEST_PANICKED) before judging.
                            with trio.move_on_after(HANGUP_TIMEOUT):
                                await monitor.wait_hangup()
                    finally:  # whatever the ladder raised: the other tasks must end too
                        guest_agent.cancel()
                        events.cancel()
        for event in monitor.pending_events():
            self._on_event(event)

    async def _follow_events(self, monitor: Monitor, scope: trio.CancelScope) -> None:
        with scope:
            async for event in monitor.events():
                try:
                    self._on_event(event)
                except Exception:  # bookkeeping (a full /run) must never stop a healthy VM
                    self.log.exception("handling event %s failed", event.name)

    async def _run_agent(self, monitor: Monitor, scope: trio.CancelScope) -> None:
        """The guest agent's client, `vmid`'s requests to it, and the probes, while QEMU runs."""
        with scope:
            try:
                chardevs = await monitor.execute("query-chardev")
            except MonitorError as exc:
                self.log.warning("query-chardev failed, the guest agent is not followed: %s", exc)
                return
            port_open = any(
                c.get("label") == AGENT_CHARDEV and c.get("frontend-open") for c in chardevs
            )
            path = Path(self.plan.sockets.control).with_name(AGENT_REQUESTS)
            listener = agent.listen(path)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._agent.serve, listener)
                for kind, probe in (
                    ("Readiness", self.plan.readinessProbe),
                    ("Liveness", self.plan.livenessProbe),
                ):
                    if probe is not None:
                        prober = probes.Prober(kind, probe)
                        address, guest = self._pod_address, self._agent
                        nursery.start_soon(probes.run, prober, address, guest, self._on_probe)
                await self._agent.run(port_open)

    def _pod_address(self) -> str | None:
        """Where tcpSocket and httpGet probes go: the pod network's address vmid gave."""
        for interface in self._domain_interfaces:
            multus = "multus-status" in str(interface.get("infoSource", ""))
            if not multus and interface.get("ipAddress"):
                return str(interface["ipAddress"])
        return None

    def _on_probe(self, prober: probes.Prober, outcome: probes.Outcome, changed: bool) -> None:
        """A probe's run, as the kubelet reports it: an event per failure; Ready follows the
        readinessProbe; a livenessProbe that fails kills QEMU (the VMI ends Failed)."""
        if outcome.result is probes.Result.FAILURE:
            message = f"{prober.kind} probe failed: {outcome.output}"
            self.status.event("Warning", "Unhealthy", message)
            self.log.info("%s", message)
        if not changed or self.status.phase is not Phase.RUNNING:
            return
        if prober.kind == "Readiness":
            self.status.probe_ready = prober.result is probes.Result.SUCCESS
            self.status.update_ready()
            self._write_status()
        elif prober.result is probes.Result.FAILURE and self._process is not None:
            self._outcome.liveness = outcome.output
            message = "Container compute failed liveness probe, will be restarted"
            self.status.event("Normal", "Killing", message)
            self._process.kill()

    def _on_agent(self) -> None:
        """What the guest agent says, into the status as KubeVirt's virt-handler puts it."""
        if self.status.phase is not Phase.RUNNING:
            return
        before = self.status.to_data()
        report = self._agent.report
        if self._agent.connected:
            self.status.condition("AgentConnected", True)
            reason = agent.unsupported_reason(report)
            if reason is None:
                self.status.drop_condition("AgentVersionNotSupported")
            else:
                self.status.condition("AgentVersionNotSupported", True, reason)
        else:
            self.status.drop_condition("AgentConnected")
            self.status.drop_condition("AgentVersionNotSupported")
        self.status.guest_os_info = agent.guest_os_info(report) or self.status.guest_os_info
        freeze = report.get("guest-fsfreeze-status")
        if isinstance(freeze, str):  # virt-handler's: "thawed" is no status
            # Only the word KubeVirt sets: a guest's own string never reaches the status.
            self.status.fs_freeze_status = "frozen" if freeze == "frozen" else ""
        masquerade = frozenset(t.interface for t in self.plan.taps if t.masquerade)
        guest = agent.guest_interfaces(report)
        if guest:
            merged = agent.merge_interfaces(self._domain_interfaces, guest, masquerade)
            self.status.interfaces = [interface_from_data(i) for i in merged]
        if self.status.to_data() != before:
            self._write_status()

    def _on_event(self, event: Event) -> None:
        self.log.info("event %s %s", event.name, dict(event.data))
        if event.name == "SHUTDOWN" and event.data.get("guest"):
            reason = event.data.get("reason")
            self._outcome.guest_shutdown = reason == "guest-shutdown"
            self._outcome.panicked |= reason == "guest-panic"
            self._outcome.reset_terminated = reason == "guest-reset"
            self.status.event("Normal", "GuestShutdown", f"the guest shut down ({reason})")
        elif event.name == "GUEST_PANICKED":
            self._outcome.panicked = True
            self.status.event("Warning", "GuestPanicked", "the guest kernel panicked")
        elif event.name == "RESET":
            # A reset after a guest shutdown is a soft reboot: the guest runs on.
            self._outcome.guest_shutdown = self._outcome.reset_terminated = False
            self.status.event(
                "Normal", "Reset", f"the machine was reset ({event.data.get('reason')})"
            )
            self.status.write()
        elif event.name == "BLOCK_IO_ERROR" and event.data.get("action") == "stop":
            # QEMU sends it before the STOP it causes (block/block-backend.c).
            node = str(event.data.get("node-name") or event.data.get("device"))
            what = f"{event.data.get('operation')} failed: {event.data.get('reason')}"
            self._io_error = _disk_error(_disk_names(self.plan.argv), node, what)
        elif event.name in ("STOP", "RESUME") and self.status.phase is Phase.RUNNING:
            self._on_pause(event.name == "STOP")
        elif event.name == "VSERPORT_CHANGE" and event.data.get("id") == AGENT_PORT:
            self._agent.port_changed(bool(event.data.get("open")))

    def _on_pause(self, paused: bool) -> None:
        current = self.status.conditions.get("Paused")
        if current is not None and (current.status == "True") == paused:
            return  # the RESUME of vmid's own `cont` at boot: nothing changed
        self._set_paused(paused)
        if paused and self._io_error is not None:
            self.status.event("Warning", "IOError", self.status.conditions["Paused"].message)
        else:
            self.status.event(
                "Normal",
                "Paused" if paused else "Unpaused",
                "VirtualMachineInstance paused" if paused else "VirtualMachineInstance unpaused",
            )
        if not paused:
            self._io_error = None  # resumed: QEMU retries the request, and stops again if need be
        self.status.write()

    def _set_paused(self, paused: bool) -> None:
        """The Paused condition (by the user, or on a disk error), and Ready after it."""
        self._agent.set_paused(paused)
        if not paused:
            self.status.condition("Paused", False)
        elif self._io_error is not None:
            reason, message = PAUSED_IO_ERROR
            self.status.condition("Paused", True, reason, f"{message}: {self._io_error}")
        else:
            self.status.condition("Paused", True, *PAUSED_BY_USER)
        self.status.update_ready()

    # Section: stop

    async def _stop(self) -> None:
        """The shutdown ladder; runs shielded, ends when QEMU has exited."""
        if self._process is None or self._process.returncode is not None:
            return
        if self.left_running:
            self.log.info("left running (onDaemonStop: keep)")
            return
        grace = self.plan.gracePeriodSeconds if self.grace is None else self.grace
        at_once = grace == 0 or not self.plan.acpi
        self.kill_at = trio.current_time() + (0 if at_once else grace)
        self.status.begin_deletion(0 if at_once else grace)
        self._write_status()
        if at_once:
            self._outcome.stop = "killed-at-once"
            why = "grace period 0" if grace == 0 else "no ACPI to power it off with"
            self.status.event("Normal", "Deleted", f"{STOPPING}: killed at once ({why})")
            self._process.kill()
            await self._process.wait()
            return
        self._outcome.stop = "acpi"
        with trio.move_on_after(grace):
            while True:
                await self._powerdown()
                with trio.move_on_after(POWERDOWN_RESEND_SECONDS):
                    await self._process.wait()
                    return
        self._outcome.stop = "killed-after-grace"
        self.status.event(
            "Warning", "Deleted", f"{STOPPING}: the grace period of {grace} s passed; killed"
        )
        self.log.warning("grace period of %d s passed: killing", grace)
        await self._kill()

    async def _powerdown(self) -> None:
        assert self._monitor is not None
        try:
            await self._monitor.execute("system_powerdown")
        except MonitorError as exc:
            self.log.warning("system_powerdown failed: %s", exc)
            return
        self.log.info("system_powerdown sent")
        self.status.event("Normal", "ShuttingDown", "Signaled Graceful Shutdown (ACPI)")
        self._write_status()

    def _write_status(self) -> None:
        try:
            self.status.write()
        except OSError as exc:  # a full /run must not keep the ladder from killing at the grace
            self.log.error("cannot write its status: %s", exc)

    async def _kill(self) -> None:
        assert self._process is not None
        assert self._monitor is not None
        with trio.move_on_after(QUIT_TIMEOUT):
            with contextlib.suppress(MonitorError):
                await self._monitor.execute("quit")
            await self._process.wait()
            return
        self._process.kill()
        await self._process.wait()

    # Section: end

    async def _end(self, failure: BaseException | None) -> None:
        """The one way a run ends, launched or not (`failure`: why it could not start): no QEMU
        left but one left running on purpose, its sockets and taps gone, its final phase and
        event recorded. Runs shielded; each step that can wait is bounded."""
        if self._process is not None:
            # The kept process table is read again: first, whatever fails below (a read from
            # now on shows this QEMU while it lives, and the uid it keeps).
            self._processes.ended()
        alive = self._process is not None and self._process.returncode is None
        if failure is not None and alive:
            assert self._process is not None
            self._process.kill()  # a launch that failed or was cancelled: none left behind
            with trio.move_on_after(CLEANUP_TIMEOUT):
                await self._process.wait()
        if self._monitor is not None:
            with trio.move_on_after(CLEANUP_TIMEOUT):
                await self._monitor.aclose()
        if failure is None and self.left_running:
            return
        if self._process is not None:  # the sockets are ours only if our QEMU made them
            _remove_sockets(self.plan)
        await self._detach()
        phase, reason, event = self._verdict(failure)
        if not self.status.phase.final:
            self.status.transition(phase, reason)
        self.status.condition("Ready", False, "GuestNotRunning")
        self.status.drop_condition("AgentConnected")
        self.status.drop_condition("AgentVersionNotSupported")
        self.status.fs_freeze_status = ""
        self.status.event(*event)
        self.status.write()
        if failure is None:
            self.log.info("ended %s %s", phase, reason)
        else:
            self.log.warning("failed to start: %s", reason)

    def _verdict(self, failure: BaseException | None) -> tuple[Phase, str, tuple[str, str, str]]:
        """The phase KubeVirt would give, why, and the event saying so: from what kept it
        from starting, else from how QEMU ended (design.md, shutdown ladder)."""
        if failure is not None:
            reason = _failure_reason(failure)
            return Phase.FAILED, reason, ("Warning", "SyncFailed", reason)
        outcome, code = self._outcome, self._process.returncode if self._process else None
        if outcome.liveness is not None:
            phase, reason = Phase.FAILED, f"Liveness probe failed: {outcome.liveness}"
        elif outcome.panicked:
            phase, reason = Phase.FAILED, "GuestPanicked"
        elif outcome.stop == "killed-after-grace":
            phase = Phase.FAILED
            reason = "the guest did not power off within the grace period; killed"
        elif outcome.stop == "killed-at-once":
            phase, reason = Phase.SUCCEEDED, "stopped"
        elif outcome.guest_shutdown or outcome.reset_terminated:
            phase, reason = Phase.SUCCEEDED, "the guest powered off"
        else:
            phase, reason = Phase.FAILED, f"QEMU ended unexpectedly: {_describe_exit(code)}"
        if phase is Phase.SUCCEEDED:
            return phase, reason, ("Normal", "Stopped", "The VirtualMachineInstance was shut down.")
        crashed = f"The VirtualMachineInstance crashed: {reason}"
        return phase, reason, ("Warning", "Stopped", crashed)


def _failure_reason(failure: BaseException) -> str:
    if isinstance(failure, VmidError | OSError):
        return str(failure)
    if isinstance(failure, Exception):
        return f"internal error: {failure!r}"
    return "stopped before it was running"


def _describe_exit(code: int | None) -> str:
    if code is None or code == UNKNOWN_EXIT:
        return "unknown exit status (it was started by an earlier vmid)"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _disk_names(argv: Sequence[str]) -> dict[str, str]:
    """The manifest's name of the disk on each block node a -device uses: `disk0` -> `root`."""
    names = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-device":
            props = dict(p.split("=", 1) for p in value.split(",")[1:] if "=" in p)
            if "drive" in props and props.get("id", "").startswith(DISK_ID_PREFIX):
                names[props["drive"]] = props["id"].removeprefix(DISK_ID_PREFIX)
    return names


def _disk_error(names: dict[str, str], node: str, what: str) -> str:
    return f"disk {names[node]!r}: {what}" if node in names else f"block node {node!r}: {what}"


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)


def _listen(plan: LaunchPlan) -> socket.socket:
    """Make the VM's directories (but QEMU's own: `_hand_over` makes it anew), then listen on
    its control socket.

    QEMU inherits the listening socket; vmid connects to it as a client.
    """
    control = Path(plan.sockets.control)  # in root's directory, above QEMU's
    control.parent.mkdir(parents=True, exist_ok=True)
    Path(plan.qemuLog).parent.mkdir(parents=True, exist_ok=True)
    return unixsock.listen(control)


def _remove_sockets(plan: LaunchPlan) -> None:
    # QEMU leaves its VNC socket behind, and every socket after a SIGKILL.
    for name in ("control", "qmp", "console", "vnc", "guestAgent"):
        path = getattr(plan.sockets, name)
        if path:
            Path(path).unlink(missing_ok=True)
    Path(plan.sockets.control).with_name(AGENT_REQUESTS).unlink(missing_ok=True)
