"""vmid's IPAM: which VMI interface has which tap, MAC and pod-network address, on disk.

The registry is written (fsync, rename) before any tap exists or any QEMU starts, so after a
crash the next daemon knows every address and tap that may be in use: never two VMs on one
address, and no tap it cannot account for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import attrs

from vmid.api import names
from vmid.errors import NetworkError
from vmid.host import safefile
from vmid.plan.model import Port, Tap


@attrs.frozen(kw_only=True)
class Attachment:
    """One VMI interface's tap, as recorded; `active` while its tap exists for a running VM."""

    #: The VMI's namespace/name (vmid/api/names.py).
    vmi: str
    interface: str
    device: str
    bridge: str
    mac: str
    #: The pod-network address; None on multus (host) bridges, whose LAN does its own DHCP.
    ip: str | None
    ports: tuple[Port, ...] = ()
    active: bool = False


class Registry:
    """Every Attachment, keyed by (VMI, interface); `save()` persists it atomically."""

    def __init__(
        self, path: Path, attachments: Iterable[Attachment] = (), last: str | None = None
    ) -> None:
        self.path = path
        self._items = {(a.vmi, a.interface): a for a in attachments}
        #: The address handed out last: the next new one is the first free one after it.
        self.last = last

    def __repr__(self) -> str:
        active = sum(a.active for a in self._items.values())
        return f"<Registry {self.path} attachments={len(self._items)} active={active}>"

    def __iter__(self) -> Iterator[Attachment]:
        return iter(sorted(self._items.values(), key=lambda a: (a.vmi, a.interface)))

    def of(self, vmi: str) -> list[Attachment]:
        return [a for a in self if a.vmi == vmi]

    def vmis(self) -> set[str]:
        return {a.vmi for a in self._items.values()}

    def assign(self, vmi: str, taps: Iterable[Tap], pod_bridge: str, pool: IPv4Network) -> None:
        """Record `vmi`'s taps as active, with an address for each tap on the pod bridge.

        An interface keeps the address it had; a new one gets the first free address after
        the one handed out last (wrapping around), as DHCP servers do: a freed address is
        reused last, so neighbours' ARP caches and DHCP servers' memories of it have aged.

        Raises:
            NetworkError: a tap name recorded for another VMI, a port forwarded or a MAC used
                by another running VMI, or no free address left; nothing is recorded then.
        """
        taps = list(taps)
        others = [a for a in self._items.values() if a.vmi != vmi]
        self.check_devices(vmi, taps)
        _check_conflicts(vmi, taps, [a for a in others if a.active])
        taken = {a.ip for a in others if a.ip} | {
            a.ip for a in self.of(vmi) if a.ip and a.interface in {t.interface for t in taps}
        }
        new: dict[tuple[str, str], Attachment] = {}
        for tap in taps:
            ip = None
            if tap.bridge == pod_bridge:
                old = self._items.get((vmi, tap.interface))
                if old is not None and old.ip and IPv4Address(old.ip) in pool:
                    ip = old.ip  # kept (one from before a cidr change is not)
                else:
                    ip = self.last = _free(pool, taken, self.last)
                taken.add(ip)
            new[(vmi, tap.interface)] = Attachment(
                vmi=vmi,
                interface=tap.interface,
                device=tap.device,
                bridge=tap.bridge,
                mac=tap.mac,
                ip=ip,
                ports=tap.ports,
                active=True,
            )
        for key in [k for k in self._items if k[0] == vmi]:
            del self._items[key]
        self._items.update(new)

    def check_devices(self, vmi: str, taps: Iterable[Tap]) -> None:
        """Refuse tap names recorded for another VMI, running or not (each VMI deletes the taps
        it records), or twice in `taps`.

        Raises:
            NetworkError: naming the other VMI and interface.
        """
        others = [a for a in self._items.values() if a.vmi != vmi]
        owners = {a.device: f"VMI {a.vmi} (interface {a.interface})" for a in others}
        for tap in taps:
            holder = owners.get(tap.device)
            if holder is not None:
                raise NetworkError(
                    f"interface {tap.interface}: tap name {tap.device} collides with the tap of "
                    f"{holder}; rename this VMI or the interface"
                )
            owners[tap.device] = f"its interface {tap.interface}"

    def forget(self, vmi: str, devices: set[str]) -> None:
        """`vmi` never got these taps (they were not vmid's to take): no record claims them."""
        for key, item in list(self._items.items()):
            if key[0] == vmi and item.device in devices:
                del self._items[key]

    def deactivate(self, vmi: str) -> None:
        """`vmi`'s taps are gone; it keeps its addresses (it may start again)."""
        for key, item in list(self._items.items()):
            if key[0] == vmi:
                self._items[key] = attrs.evolve(item, active=False)

    def release(self, vmi: str) -> None:
        """Forget `vmi`: its addresses are free again."""
        for key in [k for k in self._items if k[0] == vmi]:
            del self._items[key]

    def save(self) -> None:
        """Write the registry durably: after a crash it is the old file or the new one.

        Raises:
            NetworkError: it cannot be written (a full disk).
        """
        data = {"last": self.last, "attachments": [_to_json(a) for a in self]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(data).encode()  # the C encoder: it grows with every VMI
            safefile.write_atomically(self.path, text, durable=True)
        except OSError as exc:
            raise NetworkError(f"cannot write {self.path}: {exc.strerror}") from exc


def load(path: Path) -> Registry:
    """The registry at `path`; none yet is an empty one.

    Raises:
        NetworkError: the file exists but is not a registry vmid wrote.
    """
    try:
        data = json.loads(path.read_text())
        attachments = [_from_json(item) for item in data["attachments"]]
        return Registry(path, attachments, data.get("last"))
    except FileNotFoundError:
        return Registry(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NetworkError(
            f"{path}: unreadable address registry ({exc}); move it away to start afresh "
            "(running VMs keep their addresses until they restart)"
        ) from exc


def gateway(pool: IPv4Network) -> IPv4Address:
    return next(iter(pool.hosts()))


def _free(pool: IPv4Network, taken: set[str], last: str | None) -> str:
    """The first address not taken after `last`, wrapping; counted, not listed (a /8 is big)."""
    first = int(pool.network_address) + 2  # past the network address and the gateway
    size = int(pool.broadcast_address) - first
    start = 0
    if last is not None and IPv4Address(last) in pool:
        start = (int(IPv4Address(last)) + 1 - first) % size
    for offset in range(size):
        address = str(IPv4Address(first + (start + offset) % size))
        if address not in taken:
            return address
    raise NetworkError(
        f"the pod network {pool} has no free address ({size} in use); "
        "remove a VMI or widen podNetwork.cidr in vmid.yaml"
    )


def _check_conflicts(vmi: str, taps: list[Tap], active: list[Attachment]) -> None:
    for tap in taps:
        for other in active:
            if other.bridge == tap.bridge and other.mac == tap.mac:
                raise NetworkError(
                    f"interface {tap.interface}: MAC {tap.mac} is already used by VMI "
                    f"{other.vmi} (interface {other.interface}) on bridge {tap.bridge}"
                )
            for port in set(tap.ports) & set(other.ports):
                raise NetworkError(
                    f"interface {tap.interface}: port {port.protocol}/{port.port} is already "
                    f"forwarded to VMI {other.vmi} (interface {other.interface}); "
                    "a host port can be forwarded to one VMI only"
                )


def _to_json(item: Attachment) -> dict[str, Any]:
    data = attrs.asdict(item, recurse=False)
    data["ports"] = [[p.protocol, p.port] for p in item.ports]
    return data


def _from_json(data: dict[str, Any]) -> Attachment:
    ports = tuple(Port(protocol=str(p), port=int(n)) for p, n in data.pop("ports", []))
    vmi = str(data.pop("vmi"))
    if "/" not in vmi:  # recorded by a vmid before namespaces: all its VMIs were in `default`
        vmi = names.key(None, vmi)
    return Attachment(**data, vmi=vmi, ports=ports)
