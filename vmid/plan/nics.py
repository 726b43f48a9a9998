"""Network interfaces: one tap per interface, stable names and MACs, and the QEMU NIC device."""

from __future__ import annotations

import hashlib
import string

from vmid.api import names
from vmid.api import types as t
from vmid.api.findings import Finding
from vmid.plan.context import Context
from vmid.plan.model import TAP_FD_BASE, Port, Tap, device_id, tap_netdev
from vmid.plan.qemu import Value, options

NIC_DEVICES = {
    "e1000": "e1000",
    "e1000e": "e1000e",
    "igb": "igb",
    "ne2k_pci": "ne2k_pci",
    "pcnet": "pcnet",
    "rtl8139": "rtl8139",
}


#: Letters and digits (link names are case-sensitive): 11 of them carry 65 bits, IFNAMSIZ allows
#: no more. Names can still collide; the network layer refuses a name another VMI holds.
_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase
_LENGTH = 11


def tap_name(vmi_name: str, interface: str) -> str:
    """`vmid` + 11 letters and digits: stable for a VMI's interface, 15 characters (IFNAMSIZ)."""
    number = int.from_bytes(hashlib.sha256(f"{vmi_name}/{interface}".encode()).digest(), "big")
    digits = []
    for _ in range(_LENGTH):
        number, digit = divmod(number, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    return "vmid" + "".join(digits)


def stable_mac(vmi_name: str, interface: str) -> str:
    """A locally administered unicast MAC derived from the VMI and interface names."""
    digest = hashlib.sha256(f"mac/{vmi_name}/{interface}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def plan_nics(ctx: Context) -> tuple[list[str], list[Tap]]:
    """The -netdev/-device arguments and the taps for every interface not `absent`."""
    networks = {n.name: n for n in ctx.vmi.spec.networks}
    args: list[str] = []
    taps: list[Tap] = []
    for index, iface in enumerate(ctx.vmi.spec.domain.devices.interfaces):
        if iface.state is t.InterfaceState.ABSENT:
            continue
        netdev = f"net{index}"
        tap = _tap(ctx, iface, networks[iface.name], netdev)
        args += ["-netdev", tap_netdev(netdev, TAP_FD_BASE + len(taps))]
        taps.append(tap)
        device: dict[str, Value] = {
            "netdev": netdev,
            "id": device_id("interface", iface.name),
            "mac": tap.mac,
        }
        device["bootindex"] = iface.bootOrder
        # As KubeVirt: no option ROM (no PXE) on NICs that are not in the boot order.
        device["romfile"] = "" if iface.bootOrder is None else None
        device["acpi-index"] = iface.acpiIndex
        args += ["-device", options(_model(ctx, iface), device)]
    return args, taps


def _forwarded(iface: t.Interface) -> tuple[Port, ...]:
    """The ports of an interface on the pod network: forwarded from the host, whatever the
    binding (bridge and masquerade are the same NAT network on one host)."""
    return tuple(
        Port(protocol=(p.protocol or t.Protocol.TCP).value, port=p.port or 0) for p in iface.ports
    )


def port_findings(ctx: Context) -> list[Finding]:
    """Forwarded ports outside the range vmid.yaml lets manifests publish (a host fact)."""
    allowed = ctx.config.podNetwork.publishPorts
    pod = {n.name for n in ctx.vmi.spec.networks if n.pod is not None}
    findings = []
    for index, iface in enumerate(ctx.vmi.spec.domain.devices.interfaces):
        for number, port in enumerate(iface.ports if iface.name in pod else ()):
            if port.port is not None and not allowed.min <= port.port <= allowed.max:
                findings.append(
                    Finding(
                        ("spec", "domain", "devices", "interfaces", index, "ports", number, "port"),
                        f"port {port.port} is outside the range of host ports vmid.yaml allows "
                        f"to forward (podNetwork.publishPorts: {allowed.min}-{allowed.max})",
                    )
                )
    return findings


def _tap(ctx: Context, iface: t.Interface, network: t.Network, netdev: str) -> Tap:
    if network.multus is not None:
        name = network.multus.networkName
        bridge = ctx.config.multusBridges.get(name, name.rsplit("/", 1)[-1])
    else:
        bridge = ctx.config.podNetwork.bridge
    derived = names.hashed(ctx.key)
    mac = iface.macAddress or stable_mac(derived, iface.name)
    return Tap(
        interface=iface.name,
        device=tap_name(derived, iface.name),
        netdev=netdev,
        mac=mac.lower().replace("-", ":"),
        bridge=bridge,
        network=network.name,
        masquerade=iface.masquerade is not None,
        ports=_forwarded(iface) if network.pod is not None else (),
        linkUp=iface.state is not t.InterfaceState.DOWN,
    )


def _model(ctx: Context, iface: t.Interface) -> str:
    model = iface.model or "virtio"
    if model == "virtio":
        return ctx.virtio_model("virtio-net-pci")
    return NIC_DEVICES[model]
