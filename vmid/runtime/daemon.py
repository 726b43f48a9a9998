"""The composition root: config, the trio-asyncio loop, the spool watch, the supervisor, signals.

SIGTERM or SIGINT stops every VMI gracefully and in parallel, then exits (with
`onDaemonStop: keep` the VMs are left running). SIGHUP re-reads vmid.yaml and rescans the spool.
While stopping, every signal is answered with a log line and changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from vmid.__main__ import HELD_SIGNALS
from vmid.config import Accelerator, Config, OnDaemonStop, Paths, load_config
from vmid.errors import ConfigError, RequestRefused, StateError
from vmid.host import accel, identity, layout, machines, pidlock, requests
from vmid.runtime import qmp
from vmid.runtime import spool as spool_module
from vmid.runtime.network import Network
from vmid.runtime.spool import Spool
from vmid.runtime.status import Phase
from vmid.runtime.supervisor import Supervisor
from vmid.runtime.systemd import Notifier
from vmid.runtime.vms import Controller

log = logging.getLogger(__name__)

#: Extra time asked of systemd on top of the longest grace: quit, SIGKILL, cleanup.
STOP_MARGIN_SECONDS = 15
#: How long READY=1 waits for the spool's VMIs to be Running (or Failed) at start.
SETTLE_SECONDS = 60
#: systemd's STATUS= line is sent at most this often: counting the VMIs per phase takes a look
#: at each, and fifty VMIs starting at once change it hundreds of times (issue 16).
STATUS_SECONDS = 0.1


async def serve(paths: Paths, config_file: Path, config_required: bool) -> None:
    """Run the daemon until SIGTERM/SIGINT; returns once every VMI is stopped (or kept).

    Signals the entry point held (`vmid.__main__`) are delivered once the receiver is in
    place, and released before any child starts: a blocked mask is inherited across exec.
    """
    # Once stopped (or failed) nothing is left to stop: a signal still queued in the receiver
    # as it closes, or coming until the process is gone, must not reach Python's defaults (a
    # KeyboardInterrupt traceback, death by SIGTERM or SIGHUP). The receiver restores this
    # handler (not SIG_IGN: that would be inherited by the QEMUs and dnsmasq it starts); then
    # SIG_IGN, which the interpreter's own exit keeps (it resets handlers to the defaults).
    for signum in HELD_SIGNALS:
        signal.signal(signum, _stopped)
    try:
        with trio.open_signal_receiver(*HELD_SIGNALS) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
            await _serve(paths, config_file, config_required, signals)
    finally:
        for signum in HELD_SIGNALS:  # nothing is started from here on
            signal.signal(signum, signal.SIG_IGN)
    log.info("vmid stopped")


def _stopped(signum: int, frame: object) -> None:
    """A signal as the daemon ends: nothing is left to stop."""


async def _serve(
    paths: Paths, config_file: Path, config_required: bool, signals: AsyncIterator[int]
) -> None:
    config = load_config(config_file, required=config_required)
    accelerator = accel.resolve(config.accelerator)
    log.info("vmid starting: root=%s accelerator=%s", paths.root, accelerator)
    if accelerator is Accelerator.TCG:
        log.warning("KVM is not used: guests run under TCG software emulation, much slower")
    if not config.qemuAsRoot:
        _check_reachable(paths.root)
        identity.check_launcher()
    if config.qemuAsRoot:
        log.warning(
            "qemuAsRoot: true: every QEMU runs as root, so a guest that escapes into its QEMU "
            "owns the host and every other VM; remove qemuAsRoot from vmid.yaml"
        )
    # Status files hold whole manifests (cloud-init passwords too); logs hold the console.
    os.umask(0o077)
    _make_directories(paths)
    # Held until the process ends (the kernel drops it then, however it ends): one daemon per
    # root, and `vmid get -w` knows when this one stopped.
    pidlock.hold(paths.daemon_pid)
    layout.migrate(paths)  # before anything looks for the VMIs an earlier vmid left
    spool = Spool(paths.spool, config, paths, accelerator)
    notifier = Notifier()
    host_machines, how = await machines.detect(paths.root)
    log.info("%s", how)  # the one line saying whether VMs get cgroups of their own
    async with qmp.bridge(), trio.open_nursery() as vms:
        network = Network(config, paths)
        await vms.start(network.serve)
        supervisor = Supervisor(vms, config, paths, accelerator, network, host_machines)
        controller = Controller(supervisor, paths, config)  # VirtualMachines, over the supervisor
        async with trio.open_nursery() as watchers:
            watchers.start_soon(notifier.watchdog)
            watchers.start_soon(supervisor.keep_processes)
            watchers.start_soon(supervisor.tidy_logs)
            watchers.start_soon(supervisor.tidy_events)
            await watchers.start(spool_module.watch, spool, controller.apply)
            watchers.start_soon(supervisor.collect_images)  # once the spool says what is in use
            watchers.start_soon(controller.run)
            watchers.start_soon(_serve_requests, paths, supervisor)
            with trio.move_on_after(SETTLE_SECONDS):
                await supervisor.wait_settled()
            notifier.notify(READY="1", STATUS=_summary(supervisor))
            watchers.start_soon(_report_status, notifier, supervisor)
            log.info("vmid ready: %s", _summary(supervisor))
            async for signum in signals:
                if signum == signal.SIGHUP:
                    notifier.notify(RELOADING="1")
                    config = await _reload(
                        config, spool, supervisor, network, config_file, config_required
                    )
                    controller.reconfigure(config)
                    await spool.rescan(controller.apply)
                    notifier.notify(READY="1", STATUS=_summary(supervisor))
                    continue
                log.info("vmid stopping (%s)", signal.Signals(signum).name)
                watchers.cancel_scope.cancel()
                break
        # The configuration in force now: `onDaemonStop: keep` set by a reload counts.
        keep = config.onDaemonStop is OnDaemonStop.KEEP
        notifier.notify(STOPPING="1", STATUS=f"stopping: {_summary(supervisor)}")
        if not keep:
            notifier.extend_timeout(supervisor.max_grace() + STOP_MARGIN_SECONDS)
        async with trio.open_nursery() as stopping:
            stopping.start_soon(_acknowledge, signals, supervisor, keep)
            await supervisor.stop_all(keep=keep)
            await network.close(keep=keep)
            stopping.cancel_scope.cancel()


async def _report_status(notifier: Notifier, supervisor: Supervisor) -> None:
    """Forever: after VMIs change, systemd's STATUS= line, once per burst of changes.

    **Cancellation:** the only way this returns.
    """
    while True:
        await supervisor.wait_changed()
        await trio.sleep(STATUS_SECONDS)  # the changes meanwhile are in the line sent next
        notifier.notify(STATUS=_summary(supervisor))


async def _acknowledge(signals: AsyncIterator[int], supervisor: Supervisor, keep: bool) -> None:
    """While stopping, a signal changes nothing (no VM loses its grace): say what comes next."""
    async for signum in signals:
        why = "no reload while stopping" if signum == signal.SIGHUP else "already stopping"
        log.warning(
            "stopping: %s (%s: %s)", _next_step(supervisor, keep), signal.Signals(signum).name, why
        )


async def _serve_requests(paths: Paths, supervisor: Supervisor) -> None:
    """Forever: carry out `vmid restart`'s requests as they come (cancel to stop)."""
    notify = _watch_requests(paths.requests)
    try:
        while True:
            for key in requests.pending(paths.requests, requests.RESTART):
                try:
                    found, grace = requests.take(paths.requests, requests.RESTART, key)
                except RequestRefused as exc:
                    log.warning("%s", exc)
                    continue
                why = supervisor.restart(key, grace) if found else None
                if why is not None:
                    log.warning("%s: restart request not done: %s", key, why)
            with trio.move_on_after(spool_module.RESCAN_SECONDS):
                if await notify.wait():  # overflowed, or the directory was removed
                    notify.close()
                    notify = _watch_requests(paths.requests)
    finally:
        notify.close()


def _watch_requests(directory: Path) -> spool_module.Inotify:
    directory.mkdir(mode=0o700, exist_ok=True)
    return spool_module.Inotify(directory)


def _next_step(supervisor: Supervisor, keep: bool) -> str:
    """`2 VMIs left, next kill in 6 s`: what the shutdown ladder does next."""
    left, kill_at = supervisor.stopping()
    vmis = f"{left} VMI{'' if left == 1 else 's'}"
    if keep:
        return f"leaving {vmis} running (onDaemonStop: keep)" if left else "closing down"
    if not left:
        return "every VMI stopped, removing the network"
    if kill_at is None:
        return f"{vmis} left"
    if kill_at <= trio.current_time():
        return f"{vmis} left, killing one now (its grace is over)"
    return f"{vmis} left, next kill in {math.ceil(kill_at - trio.current_time())} s"


async def _reload(
    config: Config,
    spool: Spool,
    supervisor: Supervisor,
    network: Network,
    config_file: Path,
    required: bool,
) -> Config:
    """Re-read vmid.yaml; the configuration in force afterwards (the old one if it is bad)."""
    try:
        config = load_config(config_file, required=required)
    except ConfigError as exc:
        log.error("configuration not reloaded: %s", exc)
        return config
    config = network.reconfigure(config)
    await spool.reconfigure(config)
    supervisor.reconfigure(config)
    log.info("configuration reloaded")
    return config


def _make_directories(paths: Paths) -> None:
    """vmid's own directories, or StateError saying which one and why (a read-only mount)."""
    try:
        for directory in (paths.runtime, paths.state, paths.logs):
            _make_traversable(directory)
        paths.spool.mkdir(parents=True, exist_ok=True)
        paths.requests.mkdir(mode=0o700, exist_ok=True)
        paths.requests.chmod(0o700)  # only root may ask the daemon anything
    except OSError as exc:
        raise StateError(
            f"cannot prepare {exc.filename}: {os.strerror(exc.errno or 0)}; vmid keeps its "
            "state, runtime files and logs under --root and needs them writable"
        ) from exc


def _check_reachable(root: Path) -> None:
    """Each VM's QEMU, running as its own uid, must pass through `root`'s existing directories.

    Raises:
        ConfigError: one is closed to others (a --root under /root, mode 0700).
    """
    for directory in (root, *root.parents):
        with contextlib.suppress(FileNotFoundError):
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                raise ConfigError(
                    f"{directory} (mode {stat.S_IMODE(mode):04o}) is closed to others, so no VM's "
                    f"QEMU, running as a uid of its own, can reach its files under {root}: "
                    f"chmod o+x {directory}, or use another --root"
                )


def _make_traversable(directory: Path) -> None:
    """Create `directory` (and missing parents) searchable by all, listable by vmid only.

    Each VM's QEMU, running as the VM's own uid, reaches its VM's own files below (dnsmasq
    needs none: it reads its leases as root). Existing parents (`/run`, `/var/lib`) are left
    as they are.
    """
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for created in (*missing, directory):
        created.chmod(0o711)


def _summary(supervisor: Supervisor) -> str:
    """`3 running, 1 failed`: VMIs per phase, in lifecycle order."""
    counts = supervisor.counts()
    return ", ".join(f"{counts[p]} {p.value.lower()}" for p in Phase if p in counts) or "no VMIs"
