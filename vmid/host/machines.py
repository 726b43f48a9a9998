"""systemd-machined: each VMI's QEMU in a scope of its own under machine.slice, as libvirt does.

CreateMachineWithNetwork (libvirt's virSystemdCreateMachine) makes the scope
`machine-NAME.scope` with the VMI's limits and moves QEMU into it; `machinectl list` shows it.
Without systemd (a container, a `--root` daemon) there is none of this, said once at start.
"""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
from jeepney import DBusAddress, DBusErrorResponse, new_method_call
from jeepney.auth import BEGIN, Authenticator
from jeepney.bus import get_bus
from jeepney.bus_messages import message_bus
from jeepney.io.common import RouterClosed
from jeepney.io.trio import DBusConnection
from jeepney.wrappers import unwrap_msg

from vmid.api import names
from vmid.errors import MachineError
from vmid.plan.model import Cgroup

#: sd_booted(3): systemd is the init system.
SYSTEMD_RUNTIME = Path("/run/systemd/system")
MACHINED = DBusAddress(
    "/org/freedesktop/machine1",
    bus_name="org.freedesktop.machine1",
    interface="org.freedesktop.machine1.Manager",
)
SLICE = "machine.slice"
#: The `service` machinectl shows for vmid's machines.
SERVICE = "vmid"
#: D-Bus's own default reply timeout: machined answers once systemd has started the scope.
CALL_TIMEOUT = 25.0
#: machined forgets a machine once systemd saw its scope empty: a VMI started again at once
#: may find its old name taken for a moment.
NAME_TAKEN_RETRY = 0.2
NAME_TAKEN_SECONDS = 5.0
MACHINE_EXISTS = "org.freedesktop.machine1.MachineExists"
NO_CGROUPS = "VMs run without cgroups of their own"
#: The devices QEMU may open in its scope: vmid.service's DeviceAllow= (the scope is outside the
#: unit's cgroup, so the unit's DevicePolicy=closed no longer holds for QEMU by itself).
DEVICES = (
    ("/dev/kvm", "rw"),
    ("/dev/net/tun", "rw"),
    ("/dev/vhost-net", "rw"),
    ("/dev/urandom", "r"),
)
#: hostname_is_valid(): what machined accepts as a machine name.
MAX_NAME = 64
_UNIT_SAFE = re.compile(r"[A-Za-z0-9:_.]")


def machine_name(key: str) -> str:
    """The machine of VMI `namespace/name`: `vmid-NAMESPACE.NAME` (a namespace holds no dot, so
    the name is unique); one too long for machined ends with a hash of the key instead."""
    namespace, name = names.split(key)
    full = f"{SERVICE}-{namespace}.{name}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{full[: MAX_NAME - len(digest) - 1].rstrip('.-')}-{digest}"


def scope_name(machine: str) -> str:
    """The scope machined makes for `machine` (unit_name_escape: `-` is `\\x2d`; a machine
    name of vmid's never starts with the dot it would escape too)."""
    escaped = "".join(c if _UNIT_SAFE.fullmatch(c) else f"\\x{ord(c):02x}" for c in machine)
    return f"machine-{escaped}.scope"


def scope_of(pid: int) -> str | None:
    """The machine scope process `pid` is in (`machine-NAME.scope` in machine.slice), or None."""
    try:
        return machine_scope(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None


def machine_scope(proc_cgroup: str) -> str | None:
    """The machine scope a /proc/PID/cgroup text names: on the unified hierarchy's line, or on
    systemd's own (`name=systemd`) on cgroup v1."""
    paths = dict(
        line.split(":", 2)[1:] for line in proc_cgroup.splitlines() if line.count(":") >= 2
    )
    path = paths.get("name=systemd") or paths.get("") or ""
    parent, _, unit = path.rpartition("/")
    if parent.endswith("/" + SLICE) and unit.startswith("machine-") and unit.endswith(".scope"):
        return unit
    return None


def properties(key: str, cgroup: Cgroup) -> list[tuple[str, tuple[str, Any]]]:
    """The scope's unit properties: its slice, its description, its ordering, its devices, its
    limits.

    Before=vmid.service: at shutdown systemd stops vmid (which powers the VMs off gracefully)
    before it stops any VM's scope (which kills what is left).
    """
    props: list[tuple[str, tuple[str, Any]]] = [
        ("Slice", ("s", SLICE)),
        ("Description", ("s", f"vmid VirtualMachineInstance {key}")),
        ("Before", ("as", ["vmid.service"])),
        ("DevicePolicy", ("s", "closed")),
        ("DeviceAllow", ("a(ss)", list(DEVICES))),
        # A scope that failed (its QEMU died as it was made) is unloaded at once: left loaded,
        # it would refuse the next QEMU of that VMI (UnitExists).
        ("CollectMode", ("s", "inactive-or-failed")),
    ]
    limits = {
        "CPUQuotaPerSecUSec": cgroup.cpuQuotaPerSecUSec,
        "MemoryMax": cgroup.memoryMax,
        "CPUWeight": cgroup.cpuWeight,
    }
    props += [(name, ("t", value)) for name, value in limits.items() if value is not None]
    return props


def describe(cgroup: Cgroup) -> str:
    """The limits as systemd's unit settings say them: `CPUQuota=50% MemoryMax=520355840`."""
    limits = []
    if cgroup.cpuQuotaPerSecUSec is not None:
        limits.append(f"CPUQuota={cgroup.cpuQuotaPerSecUSec / 10_000:g}%")
    if cgroup.memoryMax is not None:
        limits.append(f"MemoryMax={cgroup.memoryMax}")
    if cgroup.cpuWeight is not None:
        limits.append(f"CPUWeight={cgroup.cpuWeight}")
    return " ".join(limits) or "no limits"


def interface_indexes(devices: Iterable[str]) -> list[int]:
    """The host's indexes of the VMI's taps (machined records them as the machine's NICs)."""
    indexes = []
    for device in devices:
        try:
            indexes.append(socket.if_nametoindex(device))
        except OSError:
            continue  # a tap gone meanwhile names nothing: the scope matters, not this
    return indexes


class Machines:
    """The host's systemd-machined, reached on the system bus."""

    def __init__(self, bus: str = "SYSTEM") -> None:
        self._bus = bus

    def __repr__(self) -> str:
        return f"<Machines bus={self._bus!r}>"

    async def register(
        self, key: str, machine_id: str, pid: int, cgroup: Cgroup, taps: Iterable[str] = ()
    ) -> str:
        """Put process `pid` (VMI `key`'s QEMU) in a new scope with `cgroup`'s limits, registered
        as machine `machine_name(key)`; its scope's name. Raises MachineError."""
        name = machine_name(key)
        body = (
            name,
            uuid.UUID(machine_id).bytes,  # validated as KubeVirt does
            SERVICE,
            "vm",
            pid,
            "",
            interface_indexes(taps),
            properties(key, cgroup),
        )
        message = new_method_call(MACHINED, "CreateMachineWithNetwork", "sayssusaia(sv)", body)
        deadline = trio.current_time() + NAME_TAKEN_SECONDS
        while True:
            try:
                await self._call(message)
                return scope_name(name)
            except MachineError as exc:
                if MACHINE_EXISTS not in str(exc):
                    raise
                if trio.current_time() >= deadline:
                    raise MachineError(
                        f"systemd-machined still has a machine {name!r} after "
                        f"{NAME_TAKEN_SECONDS:g} s (another VM of that name?): "
                        f"`machinectl terminate {name}` ends it"
                    ) from exc
            await trio.sleep(NAME_TAKEN_RETRY)

    async def ping(self) -> None:
        """Raise MachineError unless machined answers (the bus starts it if need be)."""
        peer = DBusAddress(MACHINED.object_path, MACHINED.bus_name, "org.freedesktop.DBus.Peer")
        await self._call(new_method_call(peer, "Ping"))

    async def _call(self, message: Any) -> tuple[Any, ...]:
        try:
            with trio.fail_after(CALL_TIMEOUT):
                reply = await self._exchange(message)
        except trio.TooSlowError as exc:
            raise MachineError(f"systemd-machined did not answer in {CALL_TIMEOUT:g} s") from exc
        except _BUS_GONE as exc:  # no bus socket, the bus hung up, or refused us
            raise MachineError(f"the system bus cannot be reached: {exc!r}") from exc
        try:
            body: tuple[Any, ...] = unwrap_msg(reply)
        except DBusErrorResponse as exc:
            detail = exc.data[0] if exc.data else exc.name
            raise MachineError(f"systemd-machined: {detail} ({exc.name})") from exc
        return body

    async def _exchange(self, message: Any) -> Any:
        """One call on a connection of its own: the reply, an error reply included."""
        try:
            connection = await _connect(self._bus)
            try:
                async with connection.router() as router:
                    return await router.send_and_get_reply(message)
            finally:
                connection.socket.close()
        except BaseExceptionGroup as group:
            # The router's nursery wraps what its connection raised (an OSError): raise that.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise


async def _connect(bus: str) -> DBusConnection:
    """jeepney's `open_dbus_connection`, but its socket is closed when the bus hangs up before
    it answers Hello (jeepney leaves that socket to the garbage collector)."""
    stream = await trio.open_unix_socket(get_bus(bus))
    try:
        authenticator = Authenticator(enable_fds=False, inc_null_byte=False)
        await stream.send_all(b"\0")  # Linux: the bus reads our credentials (SO_PEERCRED)
        for request in authenticator:
            await stream.send_all(request)
            authenticator.feed(await stream.receive_some())
        await stream.send_all(BEGIN)
        connection = DBusConnection(stream.socket, enable_fds=False)
        async with connection.router() as router:  # Hello must come first
            reply = await router.send_and_get_reply(message_bus.Hello())
        connection.unique_name = reply.body[0]
    except BaseException:
        stream.socket.close()
        raise
    return connection


#: How a bus connection ends under jeepney's trio router: an OSError (no socket), trio's
#: closed-stream errors (the bus hung up), RouterClosed, a ValueError (authentication refused),
#: or a group of them from the router's nursery. All mean the same to vmid: no machined now.
_BUS_GONE = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    RouterClosed,
    ValueError,
    ExceptionGroup,
)


def booted() -> bool:
    """sd_booted(3): whether systemd is this host's init system."""
    return SYSTEMD_RUNTIME.is_dir()


async def detect(root: Path, bus: str = "SYSTEM") -> tuple[Machines | None, str]:
    """machined, if VMs get scopes of their own here, and the one line saying how VMs run."""
    if root != Path("/"):
        why = f"--root {root} is not the host's vmid, its VMIs' names are not the host's"
    elif not booted():
        why = "systemd is not running here (no /run/systemd/system)"
    else:
        machines = Machines(bus)
        try:
            await machines.ping()
        except MachineError as exc:
            why = f"{exc}; is systemd-machined installed (Debian: systemd-container)?"
        else:
            return machines, f"each VMI's QEMU runs in a scope of its own under {SLICE}"
    return None, f"{NO_CGROUPS}: {why}"
