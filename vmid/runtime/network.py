"""The host side of every VMI's NICs: vmid's bridge, the taps, addresses, DHCP and NAT.

One `Network` per daemon. `attach` before QEMU starts, `serving` before its guest runs,
`detach` once it is gone, `release` when the VMI is removed; every change is serialized and ends
with dnsmasq's static leases and vmid's nftables table matching the registry (for `attach`, in
a task of its own that `serving` waits for: QEMU starts meanwhile). dnsmasq runs under `serve`,
watched: its exit and the problems it logs are reported to the VMIs on the pod network, and it
is restarted. It takes new leases without a restart where its user can reach them (see
vmid/host/dnsmasq.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Set
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import attrs
import trio

from vmid.api.vmistatus import NetworkInterface
from vmid.config import Config, Paths, PodNetwork, PortRange
from vmid.errors import LinkExists, NetworkError
from vmid.host import dnsmasq, ipam, listeners, nftables
from vmid.host import network as links
from vmid.plan.model import LaunchPlan
from vmid.runtime import logs

log = logging.getLogger(__name__)

DHCP_READY_TIMEOUT = 5.0
DHCP_STOP_TIMEOUT = 5.0
DHCP_BACKOFF_MIN = 1.0
DHCP_BACKOFF_MAX = 30.0
#: A dnsmasq that ran this long before dying is restarted at once again.
DHCP_HEALTHY_SECONDS = 60.0


@attrs.define
class _Pending:
    """A sync `attach` started: done, and what went wrong."""

    done: trio.Event = attrs.field(factory=trio.Event)
    error: NetworkError | OSError | None = None


class Network:
    """vmid's pod network and the taps of every VMI; see the module docstring."""

    def __init__(self, config: Config, paths: Paths) -> None:
        self._config = config
        self._dir = paths.network_runtime
        self._logs = paths.logs
        self._registry = ipam.load(paths.attachments)
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._dhcp: trio.Process | None = None
        self._dhcp_scope: trio.CancelScope | None = None
        self._dhcp_ready = trio.Event()
        #: The running dnsmasq has read its configuration (and handles SIGHUP).
        self._dhcp_up = False
        #: Its lease files changed before it was up: it re-reads them once it is.
        self._dhcp_reread = False
        self._dhcp_restart = False
        #: dnsmasq's directory of lease files and the group that reads them; None: its leases
        #: are in its configuration file (see `_ensure_pod`).
        self._hosts: tuple[Path, str] | None = None
        #: The lease files in that directory: {name: content}.
        self._host_files: dict[str, str] = {}
        #: Set to end a pause between two starts of dnsmasq at once (its leases changed).
        self._dhcp_wake = trio.Event()
        #: How many times the leases were rewritten: a dnsmasq started before the last time
        #: may have read the ones before.
        self._leases_written = 0
        #: What is wrong with dnsmasq now, as reported; None while it serves.
        self._dhcp_problem: str | None = None
        self._on_dhcp: Callable[[Set[str], str | None], None] = lambda names, problem: None
        #: The active attachments vmid's tables were last rendered from (none: no tables, as
        #: `collect` leaves them); None: not known, after nft failed.
        self._applied: tuple[ipam.Attachment, ...] | None = ()
        self._pod_ready = False
        #: The syncs `attach` left running, by VMI, for `serving` to wait for.
        self._pending: dict[str, _Pending] = {}

    def __repr__(self) -> str:
        return f"<Network bridge={self._bridge} {self._registry!r} dhcp={self._dhcp!r}>"

    @property
    def _bridge(self) -> str:
        return self._config.podNetwork.bridge

    @property
    def _pool(self) -> IPv4Network:
        return IPv4Network(self._config.podNetwork.cidr)

    @property
    def _conf_file(self) -> Path:
        return self._dir / f"dnsmasq-{self._bridge}.conf"

    @property
    def _pid_file(self) -> Path:
        return self._dir / f"dnsmasq-{self._bridge}.pid"

    @property
    def _hosts_path(self) -> Path:
        return self._dir / f"dnsmasq-{self._bridge}.d"

    def reconfigure(self, config: Config) -> Config:
        """The configuration to use from now on: the pod network (but publishPorts) stays as
        it is while VMIs use it (the planner must use the same); other keys apply at once."""
        if self._pod_ready and _fixed(config.podNetwork) != _fixed(self._config.podNetwork):
            log.warning("podNetwork changes apply after a restart of vmid with no VM running")
            config = _with_pod(config, self._config)
        self._config = config
        return config

    def on_dhcp(self, callback: Callable[[Set[str], str | None], None]) -> None:
        """Call `callback(vmis, problem)` when dnsmasq fails (what went wrong) and when it
        serves again (None), with the VMIs on the pod network it affects."""
        self._on_dhcp = callback

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery dnsmasq runs in; cancel to stop it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # Section: VMIs

    async def attach(
        self, name: str, plan: LaunchPlan, owner: int, adopted: bool = False
    ) -> list[NetworkInterface]:
        """Record, create and enslave `plan`'s taps (owned by uid `owner`, the VM's QEMU's);
        the interfaces' status entries.

        `adopted`: the VM runs already (re-adopted), its taps exist and its QEMU holds them.

        Raises:
            NetworkError: a missing host bridge, a port a host process listens on, a conflict
                with another VMI or a link vmid did not make for it, no free address, or the
                kernel refusing; the VMI should fail with that message.
        """
        if not plan.taps:
            return []
        async with self._lock:
            for tap in plan.taps:
                if tap.bridge != self._bridge and not await trio.to_thread.run_sync(
                    links.bridge_exists, tap.bridge
                ):
                    raise NetworkError(
                        f"interface {tap.interface}: network {tap.network} is attached to bridge "
                        f"{tap.bridge}, which does not exist on this host; create it, or map the "
                        "network's name to a bridge in multusBridges in vmid.yaml"
                    )
            forwards = [(tap.interface, port) for tap in plan.taps for port in tap.ports]
            if forwards and not adopted:  # a re-adopted VM's forwards exist: it keeps them
                await trio.to_thread.run_sync(listeners.check_free, forwards)
            reuse = await self._reusable_taps(name, plan, adopted)
            self._registry.assign(name, plan.taps, self._bridge, self._pool)
            await trio.to_thread.run_sync(self._registry.save)
            if any(tap.bridge == self._bridge for tap in plan.taps):
                await self._ensure_pod()
            for index, tap in enumerate(plan.taps):
                try:
                    await trio.to_thread.run_sync(
                        links.ensure_tap, tap.device, tap.bridge, owner, tap.device in reuse
                    )
                except LinkExists as exc:  # made by someone else since the lookup
                    self._registry.forget(name, {t.device for t in plan.taps[index:]})
                    await trio.to_thread.run_sync(self._registry.save)
                    raise _foreign(tap.interface, tap.device) from exc
            if adopted:
                await self._sync()
                if any(tap.bridge == self._bridge for tap in plan.taps):
                    self._check_dhcp(name, adopted)
            else:
                self._sync_soon(name)
        by_interface = {a.interface: a for a in self._registry.of(name)}
        return [
            _interface_status(by_interface[tap.interface], tap.linkUp, tap.bridge != self._bridge)
            for tap in plan.taps
        ]

    def _sync_soon(self, name: str) -> None:
        """Bring dnsmasq and nftables in line with the registry in a task of their own: a new
        VM's QEMU starts meanwhile (`nft -f` and a restart of dnsmasq took 20-30 ms of each
        launch); `serving` waits for it before the guest runs."""
        if self._nursery is None:
            raise NetworkError("vmid's network service is not running")
        pending = self._pending[name] = _Pending()

        async def sync() -> None:
            try:
                async with self._lock:
                    await self._sync(wait=False)
            except (NetworkError, OSError) as exc:  # the VMI's to fail with, not the service's
                pending.error = exc
            except Exception as exc:  # a bug here fails this VMI, not every VMI's network
                log.exception("%s: bringing the network in line failed", name)
                pending.error = NetworkError(f"internal error in vmid: {exc!r}")
            except BaseException:  # cancelled: the service stops; never a guest without rules
                pending.error = NetworkError("vmid's network service stopped")
                raise
            finally:
                pending.done.set()

        self._nursery.start_soon(sync, name=f"network sync for {name}")

    async def serving(self, name: str, plan: LaunchPlan) -> None:
        """Wait until the host serves what `attach` made for a new VM, before its guest runs:
        the guard rules of its taps in force, dnsmasq serving its lease.

        Raises:
            NetworkError: the rules were refused, or dnsmasq does not serve (the VMI fails, as
                when `attach` raises).
        """
        pending = self._pending.pop(name, None)
        if pending is not None:
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
        if not any(tap.bridge == self._bridge for tap in plan.taps):
            return
        with trio.move_on_after(DHCP_READY_TIMEOUT):
            while not (ready := self._dhcp_ready).is_set():
                await ready.wait()  # a restart meanwhile sets the one it replaces: wait anew
        self._check_dhcp(name, adopted=False)

    def _check_dhcp(self, name: str, adopted: bool) -> None:
        """A new VMI on the pod network fails unless dnsmasq serves its address: its status must
        never show an address its guest does not get. One running already is told."""
        if self._dhcp_ready.is_set() and self._dhcp_problem is None:
            return
        problem = self._dhcp_problem or f"it did not start within {DHCP_READY_TIMEOUT:g} s"
        if adopted:
            self._on_dhcp({name}, problem)
            return
        raise NetworkError(
            f"vmid's DHCP server for the pod network (dnsmasq on {self._bridge}) does not serve: "
            f"{problem}"
        )

    async def _reusable_taps(self, name: str, plan: LaunchPlan, adopted: bool) -> set[str]:
        """The taps of `plan` that exist and are `name`'s to take: recorded for it, or held by
        its re-adopted QEMU. A tap another VMI records, or a link nobody made for this VMI,
        fails the attach and is left alone (never enslaved, never deleted).
        """
        self._registry.check_devices(name, plan.taps)
        ours = {a.device for a in self._registry.of(name)}
        found = await trio.to_thread.run_sync(links.existing, [t.device for t in plan.taps])
        for tap in plan.taps:
            if tap.device in found and tap.device not in ours and not adopted:
                raise _foreign(tap.interface, tap.device)
        return found

    def open_taps(self, plan: LaunchPlan) -> dict[str, int]:
        """An fd on each of `plan`'s taps, by netdev id, for QEMU to inherit; close them after.

        Raises:
            NetworkError: a tap cannot be opened (no fd is left open then).
        """
        fds: dict[str, int] = {}
        try:
            for tap in plan.taps:
                fds[tap.netdev] = links.open_tap(tap.device)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    async def detach(self, name: str) -> None:
        """`name`'s QEMU is gone: delete its taps and forwards; it keeps its addresses."""
        self._pending.pop(name, None)  # its own sync follows that one
        attachments = self._registry.of(name)
        if not attachments:
            return
        async with self._lock:
            for item in attachments:
                await trio.to_thread.run_sync(links.delete_link, item.device)
            self._registry.deactivate(name)
            await trio.to_thread.run_sync(self._registry.save)
            await self._sync()

    async def release(self, name: str) -> None:
        """`name` is removed: its taps go (if any are left) and its addresses are free again."""
        if not self._registry.of(name):
            return
        await self.detach(name)
        async with self._lock:
            self._registry.release(name)
            await trio.to_thread.run_sync(self._registry.save)
            await self._sync()

    async def collect(self, known: set[str]) -> None:
        """After a crash: release VMIs not in `known` (their recorded taps go with them).

        A tap the registry does not list is not known to be vmid's: it is named, not deleted.
        """
        for name in sorted(self._registry.vmis() - known):
            log.info("%s: releasing the addresses of a VMI that is gone", name)
            await self.release(name)
        async with self._lock:  # an attach meanwhile records its taps before making them
            if not any(a.active for a in self._registry):
                await self._tear_down()  # what an earlier daemon of this root left, if anything
            listed = {a.device for a in self._registry}
            for device in sorted(await trio.to_thread.run_sync(links.vmid_taps) - listed):
                log.warning(
                    "tap %s is recorded for no VMI: left alone (ip link del %s if unused)",
                    device,
                    device,
                )

    async def close(self, keep: bool) -> None:
        """Daemon stopping: stop dnsmasq; unless VMs are kept running, remove rules and bridge."""
        if self._dhcp_scope is not None:
            self._dhcp_scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        if keep:
            return
        async with self._lock:
            if not any(a.active for a in self._registry):
                await self._tear_down()

    async def _tear_down(self) -> None:
        """No VM uses the pod network: its dnsmasq, vmid's tables and bridge go, also when an
        earlier daemon of this root made them (its dnsmasq configuration says so). Never
        otherwise: another vmid (another --root) in this network namespace may be using them."""
        if not (self._pod_ready or self._conf_file.exists()):
            return
        await trio.to_thread.run_sync(dnsmasq.kill_stale, self._pid_file)
        self._applied = None
        await nftables.apply(nftables.ruleset(self._bridge, self._pool, ()))
        self._applied = ()
        await trio.to_thread.run_sync(links.delete_link, self._bridge)
        await trio.to_thread.run_sync(shutil.rmtree, self._hosts_path, True)
        self._conf_file.unlink(missing_ok=True)
        self._pod_ready = False

    # Section: the pod network

    async def _ensure_pod(self) -> None:
        """vmid's bridge with the gateway address, forwarding, and dnsmasq running."""
        if self._pod_ready:
            return
        if self._nursery is None:
            raise NetworkError("vmid's network service is not running")
        gateway = IPv4Interface(f"{ipam.gateway(self._pool)}/{self._pool.prefixlen}")
        await trio.to_thread.run_sync(links.ensure_bridge, self._bridge, gateway)
        if self._config.podNetwork.ipForward:
            await trio.to_thread.run_sync(links.enable_ip_forward)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._dir.chmod(0o711)  # searchable: dnsmasq's user reaches its leases' directory
        user = self._config.podNetwork.dhcpUser
        self._hosts = await trio.to_thread.run_sync(dnsmasq.hosts_dir, self._hosts_path, user)
        self._host_files = {}
        if self._hosts is None:  # its leases go in its configuration, which it reads as root
            self._dir.chmod(0o700)
            dnsmasq.write_conf(self._conf_file, dnsmasq.leases(self._bridge, self._registry))
        else:
            dnsmasq.write_conf(self._conf_file, "")
            await self._sync_hosts()
        self._dhcp_scope = trio.CancelScope()
        await self._nursery.start(self._serve_dhcp, self._dhcp_scope)
        self._pod_ready = True
        log.info("pod network %s on %s ready (gateway %s)", self._pool, self._bridge, gateway.ip)

    async def _sync(self, wait: bool = True) -> None:
        """Bring dnsmasq's leases and the nftables table in line with the registry; `wait`:
        until dnsmasq serves the new leases (see `serving`)."""
        if self._pod_ready and self._hosts is not None:
            # A problem dnsmasq logged and lives through stands until it starts anew: then
            # new leases restart it, as they do without a directory of leases.
            if await self._sync_hosts() and self._dhcp_problem is not None:
                await self._restart_dhcp(wait)
        elif self._pod_ready:
            leases = dnsmasq.leases(self._bridge, self._registry)
            if await trio.to_thread.run_sync(dnsmasq.write_conf, self._conf_file, leases):
                self._leases_written += 1
                await self._restart_dhcp(wait)
        await self._sync_rules()

    async def _sync_hosts(self) -> bool:
        """Add and remove dnsmasq's lease files as the registry says; any changed? dnsmasq
        reads a new file by inotify before any DHCP packet that comes after it (its event loop
        looks at inotify first): a guest run after this is served. After a removal, the freed
        addresses are released and dnsmasq re-reads its leases (it forgets none by itself)."""
        assert self._hosts is not None
        wanted = dnsmasq.host_files(self._bridge, self._registry)
        new = {name: text for name, text in wanted.items() if name not in self._host_files}
        gone = {name: text for name, text in self._host_files.items() if name not in wanted}
        if not (new or gone):
            return False
        await trio.to_thread.run_sync(self._write_hosts, self._hosts[0], new, gone)
        self._host_files = wanted
        if gone:
            self._forget(gone.values())
        return True

    @staticmethod
    def _write_hosts(directory: Path, new: dict[str, str], gone: dict[str, str]) -> None:
        for name in gone:
            dnsmasq.remove_host_file(directory, name)
        for name, text in new.items():
            dnsmasq.add_host_file(directory, name, text)

    def _forget(self, leases: Iterable[str]) -> None:
        """Release the `MAC,IP` leases no longer served, and have dnsmasq re-read its files:
        it would refuse an address to its next owner while it remembers the old one's lease."""
        process = self._dhcp
        if process is None:  # the next dnsmasq starts with no leases and reads every file
            return
        for lease in leases:
            mac, address = lease.strip().split(",")
            try:
                dnsmasq.release(self._bridge, ipam.gateway(self._pool), mac, address)
            except OSError as exc:  # it keeps the lease (an hour at most): said, not fatal
                log.warning("cannot release %s of %s to dnsmasq: %s", address, mac, exc)
        if self._dhcp_up:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGHUP)
        else:  # SIGHUP would end a dnsmasq not yet handling it: sent once it is up
            self._dhcp_reread = True

    async def _sync_rules(self) -> None:
        """Bring vmid's nftables tables in line with the registry: only what changed, in one
        small transaction (a full replace took 6 ms of CPU with one VM, 56 ms with 200), while
        the tables keep their shape; as a whole otherwise, and after a refused change (the
        tables may not be what vmid thinks they are)."""
        running = nftables.active(self._registry)
        if running == self._applied:
            return
        # Unknown until a change is in: one cancelled (a cleanup's deadline) may be committed.
        applied, self._applied = self._applied, None
        if applied is not None:
            script = nftables.changes(self._bridge, applied, running)
            if script is not None:
                try:
                    await nftables.apply(script)
                except NetworkError as exc:
                    log.warning("%s; replacing vmid's nftables tables as a whole", exc)
                else:
                    self._applied = running
                    return
        await nftables.apply(nftables.ruleset(self._bridge, self._pool, running))
        self._applied = running

    async def _restart_dhcp(self, wait: bool) -> None:
        """Restart dnsmasq (or end its pause) to read its new leases; `wait` until it serves.

        A restart rather than a SIGHUP: dnsmasq reads its configuration only as root, at start.
        A fresh dnsmasq (no lease file) also has no memory of an address leased to a MAC that
        no longer has it, which would keep it from giving that address to its new owner.
        """
        replaced, self._dhcp_ready = self._dhcp_ready, trio.Event()
        replaced.set()  # who waits for it (`serving`) waits for this restart instead
        if self._dhcp is not None:
            self._dhcp_restart = True
            with contextlib.suppress(ProcessLookupError):
                self._dhcp.terminate()
        else:
            self._dhcp_wake.set()
        if wait:
            with trio.move_on_after(DHCP_READY_TIMEOUT):
                await self._dhcp_ready.wait()

    async def _serve_dhcp(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run dnsmasq until cancelled; restart it at once for new leases, and after a pause
        (doubling up to DHCP_BACKOFF_MAX, back to the minimum after a healthy run) when it
        dies, saying so."""
        backoff = DHCP_BACKOFF_MIN
        with scope:
            ended = await self._run_dhcp(task_status)  # a first start that fails fails the attach
            while True:
                if self._dhcp_restart:
                    self._dhcp_restart = False
                else:
                    self._dhcp_failed(ended, f"; restarting in {backoff:g} s")
                    self._dhcp_wake = trio.Event()
                    with trio.move_on_after(backoff):
                        await self._dhcp_wake.wait()
                    backoff = min(backoff * 2, DHCP_BACKOFF_MAX)
                began = trio.current_time()
                try:
                    ended = await self._run_dhcp(trio.TASK_STATUS_IGNORED)
                except (NetworkError, OSError) as exc:
                    ended = str(exc)
                if trio.current_time() - began > DHCP_HEALTHY_SECONDS:
                    backoff = DHCP_BACKOFF_MIN

    def _dhcp_failed(self, problem: str, then: str = "") -> None:
        """Log a new problem of dnsmasq once (a failed restart like the last one is no news),
        with what vmid does `then`, and report it to the VMIs on the pod network."""
        if problem == self._dhcp_problem:
            return
        self._dhcp_problem = problem
        log.error("dnsmasq on %s: %s%s", self._bridge, problem, then)
        self._on_dhcp(self._pod_vmis(), problem + then)

    def _dhcp_serves(self) -> None:
        self._dhcp_ready.set()
        if self._dhcp_problem is not None:
            self._dhcp_problem = None
            log.info("dnsmasq on %s serves again", self._bridge)
            self._on_dhcp(self._pod_vmis(), None)

    def _dhcp_said(self, line: str) -> None:
        problem = dnsmasq.problem(line)
        if problem is not None:
            self._dhcp_failed(problem)

    def _pod_vmis(self) -> set[str]:
        """The VMIs whose QEMU has a NIC on the pod network."""
        return {a.vmi for a in self._registry if a.active and a.bridge == self._bridge}

    async def _run_dhcp(self, task_status: trio.TaskStatus[None]) -> str:
        """Start dnsmasq, wait until it serves, then until it ends: how it ended.

        Raises:
            NetworkError: it cannot be started, or exits before it serves.
        """
        await trio.to_thread.run_sync(dnsmasq.kill_stale, self._pid_file)
        self._pid_file.unlink(missing_ok=True)
        generation = self._leases_written
        servers = self._config.podNetwork.dnsServers
        argv = dnsmasq.argv(
            self._bridge,
            self._pool,
            ipam.gateway(self._pool),
            self._conf_file,
            self._pid_file,
            dnsmasq.host_resolvers() if servers is None else servers,
            self._config.podNetwork.dhcpUser,
            self._hosts,
        )
        self._logs.mkdir(parents=True, exist_ok=True)
        # --log-dhcp writes lines for every DHCP packet: bounded, as a VM's logs are.
        output, write_end = logs.open_pipe(self._log_file, self._config.logs, self._dhcp_said)
        assert self._nursery is not None
        self._nursery.start_soon(output.drain)
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                start_new_session=True,
            )
        except OSError as exc:
            raise NetworkError(f"cannot start dnsmasq: {exc.strerror}") from exc
        finally:
            os.close(write_end)
        self._dhcp = process
        try:
            await self._wait_dhcp_ready(process, output)
            self._dhcp_up = True
            if self._dhcp_reread:  # lease files removed while it started: it may have read them
                self._dhcp_reread = False
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGHUP)
            if generation != self._leases_written:  # new leases while it started: read them
                self._dhcp_restart = True
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            else:
                self._dhcp_serves()
            task_status.started()
            log.info("dnsmasq on %s running, pid %d", self._bridge, process.pid)
            returncode = await process.wait()
            if self._dhcp_restart:  # stopped for new leases: how is no news
                return "restarted"
            if returncode < 0:  # its last line is no last word
                return f"killed by {signal.Signals(-returncode).name}"
            return f"exited with status {returncode}: {_words(await output.said())}"
        finally:
            self._dhcp = None
            self._dhcp_up = False
            with trio.CancelScope(shield=True):
                await _terminate(process)
            output.stop(logs.DRAIN_TIMEOUT)

    @property
    def _log_file(self) -> Path:
        return self._logs / f"dnsmasq-{self._bridge}.log"

    async def _wait_dhcp_ready(self, process: trio.Process, output: logs.LogPipe) -> None:
        """dnsmasq writes its pid file once it has read its configuration and bound its
        sockets (it exits if it cannot)."""
        with trio.move_on_after(DHCP_READY_TIMEOUT):
            while process.returncode is None:
                with contextlib.suppress(OSError, ValueError):
                    if int(self._pid_file.read_text()) == process.pid:
                        return
                await trio.sleep(0.002)  # ready in ~4 ms; each pod-network launch waits
        if process.poll() is not None:
            last = _words(await output.said())
            raise NetworkError(f"dnsmasq failed to start: {last} (see {self._log_file})")


def _words(line: str) -> str:
    """A line of dnsmasq's without its `dnsmasq[pid]: ` prefix."""
    return re.sub(r"^dnsmasq(?:-dhcp)?(?:\[\d+\])?: ", "", line)


async def _terminate(process: trio.Process) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    with trio.move_on_after(DHCP_STOP_TIMEOUT):
        await process.wait()
        return
    process.kill()
    await process.wait()


def _foreign(interface: str, device: str) -> NetworkError:
    return NetworkError(
        f"interface {interface}: a link named {device} (this interface's tap name) exists "
        "already and vmid did not make it for this VMI; vmid leaves it alone: delete it if "
        "nothing uses it, or rename this VMI or the interface"
    )


def _interface_status(item: ipam.Attachment, link_up: bool, multus: bool) -> NetworkInterface:
    """KubeVirt's entry: a multus network's NIC is in the pod's network-status too."""
    return NetworkInterface(
        name=item.interface,
        mac=item.mac,
        ipAddress=item.ip or "",
        ipAddresses=(item.ip,) if item.ip else (),
        infoSource="domain, multus-status" if multus else "domain",
        linkState="up" if link_up else "down",
        podInterfaceName=item.device,
    )


def _fixed(pod: PodNetwork) -> PodNetwork:
    """What of the pod network cannot change under running VMIs: all but the ports range,
    which only the planner uses (for VMIs it plans from now on)."""
    return attrs.evolve(pod, publishPorts=PortRange())


def _with_pod(config: Config, old: Config) -> Config:
    pod = attrs.evolve(old.podNetwork, publishPorts=config.podNetwork.publishPorts)
    return attrs.evolve(config, podNetwork=pod)
