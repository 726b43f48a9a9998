"""vmid's IPAM registry: addresses stable per VMI interface, never shared, persisted."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from vmid.errors import NetworkError
from vmid.host import ipam
from vmid.plan.model import Port, Tap

POOL = IPv4Network("10.0.2.0/24")
POD = "vmid0"


def tap(vmi: str, interface: str = "default", bridge: str = POD, **kw: object) -> Tap:
    values: dict[str, object] = {
        "interface": interface,
        "device": f"vmid{abs(hash((vmi, interface))) % 10**11:011d}",
        "mac": kw.pop("mac", f"02:00:00:00:{len(vmi):02x}:{len(interface):02x}"),
        "netdev": "net0",
        "bridge": bridge,
        "network": interface,
        "masquerade": True,
    }
    values.update(kw)
    return Tap(**values)  # type: ignore[arg-type]


def ips(registry: ipam.Registry, vmi: str) -> list[str | None]:
    return [a.ip for a in registry.of(vmi)]


def test_addresses_start_after_the_gateway_and_are_never_shared(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    registry.assign("a", [tap("a")], POD, POOL)
    registry.assign("bb", [tap("bb")], POD, POOL)
    assert ips(registry, "a") == ["10.0.2.2"]
    assert ips(registry, "bb") == ["10.0.2.3"]
    assert str(ipam.gateway(POOL)) == "10.0.2.1"


def test_a_vmi_keeps_its_address_across_restarts_and_loses_it_when_removed(
    tmp_path: Path,
) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    registry.assign("a", [tap("a")], POD, POOL)
    registry.assign("bb", [tap("bb")], POD, POOL)
    registry.deactivate("a")
    registry.assign("ccc", [tap("ccc")], POD, POOL)
    assert ips(registry, "ccc") == ["10.0.2.4"]  # a's address stays reserved while it stops
    registry.assign("a", [tap("a")], POD, POOL)
    assert ips(registry, "a") == ["10.0.2.2"]
    registry.release("a")
    registry.assign("dddd", [tap("dddd")], POD, POOL)
    assert ips(registry, "dddd") == ["10.0.2.5"]  # a freed address is reused last


def test_a_freed_address_is_reused_once_the_pool_wraps_around(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    small = IPv4Network("192.168.7.0/29")  # .2-.6 for guests
    for n in range(5):
        registry.assign(f"vm{n}", [tap(f"vm{n}", mac=f"02:00:00:00:00:{n:02x}")], POD, small)
    registry.release("vm1")
    registry.release("vm3")
    registry.assign("new", [tap("new", mac="02:00:00:00:01:00")], POD, small)
    assert ips(registry, "new") == ["192.168.7.3"]  # after .6 comes .2 (taken), then .3
    registry.save()
    again = ipam.load(registry.path)
    again.assign("newer", [tap("newer", mac="02:00:00:00:02:00")], POD, small)
    assert ips(again, "newer") == ["192.168.7.5"]  # the cursor survives a restart


def test_the_registry_survives_a_restart_of_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "network" / "attachments.json"
    registry = ipam.Registry(path)
    registry.assign("ns/a", [tap("ns/a", ports=(Port(protocol="TCP", port=80),))], POD, POOL)
    registry.assign("ns/bb", [tap("ns/bb", bridge="br-lan")], POD, POOL)
    registry.save()
    again = ipam.load(path)
    assert list(again) == list(registry)
    assert again.of("ns/a")[0].ports == (Port(protocol="TCP", port=80),)
    assert ips(again, "ns/bb") == [None]  # a host bridge's LAN gives the address, not vmid


def test_a_registry_from_before_namespaces_keys_its_vmis_in_default(tmp_path: Path) -> None:
    path = tmp_path / "attachments.json"
    registry = ipam.Registry(path)
    registry.assign("web", [tap("web")], POD, POOL)  # as a vmid before namespaces keyed it
    registry.save()
    again = ipam.load(path)
    assert again.vmis() == {"default/web"}
    assert again.of("default/web")[0].ip == registry.of("web")[0].ip


def test_an_exhausted_pool_refuses_with_what_to_do(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    small = IPv4Network("192.168.7.0/29")  # hosts .1-.6: the gateway and five guests
    for n in range(5):
        registry.assign(f"vm{n}", [tap(f"vm{n}", mac=f"02:00:00:00:00:{n:02x}")], POD, small)
    with pytest.raises(NetworkError, match=r"192.168.7.0/29 has no free address .*podNetwork.cidr"):
        registry.assign("late", [tap("late", mac="02:00:00:00:01:00")], POD, small)
    assert registry.of("late") == []


def test_a_port_forwarded_to_a_running_vmi_is_refused_to_another(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    http = (Port(protocol="TCP", port=80),)
    registry.assign("a", [tap("a", ports=http)], POD, POOL)
    with pytest.raises(NetworkError, match="port TCP/80 is already forwarded to VMI a"):
        registry.assign("bb", [tap("bb", ports=http)], POD, POOL)
    registry.assign("bb", [tap("bb", ports=(Port(protocol="UDP", port=80),))], POD, POOL)
    registry.deactivate("a")
    registry.assign("ccc", [tap("ccc", ports=http)], POD, POOL)  # a is stopped: free again


def test_one_mac_on_one_bridge_twice_is_refused(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    registry.assign("a", [tap("a", mac="02:aa:00:00:00:01")], POD, POOL)
    with pytest.raises(NetworkError, match="MAC 02:aa:00:00:00:01 is already used by VMI a"):
        registry.assign("bb", [tap("bb", mac="02:aa:00:00:00:01")], POD, POOL)
    registry.assign("ccc", [tap("ccc", mac="02:aa:00:00:00:01", bridge="brlan")], POD, POOL)


def test_an_interface_dropped_by_a_new_spec_gives_its_address_back(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    registry.assign("a", [tap("a", "one")], POD, POOL)
    registry.deactivate("a")
    registry.assign("a", [tap("a", "two")], POD, POOL)
    assert [(x.interface, x.ip) for x in registry.of("a")] == [("two", "10.0.2.3")]
    registry.assign("bb", [tap("bb")], POD, POOL)
    registry.assign("ccc", [tap("ccc", mac="02:00:00:00:09:09")], POD, POOL)
    assert ips(registry, "ccc") == ["10.0.2.5"]
    assert "10.0.2.2" not in {a.ip for a in registry}  # "one"'s address was given back


def test_a_damaged_registry_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "attachments.json"
    path.write_text('{"attachments": [{"vmi": 1}]}')
    with pytest.raises(NetworkError, match=r"unreadable address registry .* move it away"):
        ipam.load(path)
    assert list(ipam.load(tmp_path / "none.json")) == []


def test_after_a_cidr_change_an_interface_gets_an_address_of_the_new_pool(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    registry.assign("a", [tap("a")], POD, POOL)
    registry.deactivate("a")
    wide = IPv4Network("10.128.0.0/9")  # counted, not listed: 8 million addresses
    registry.assign("a", [tap("a")], POD, wide)
    assert ips(registry, "a") == ["10.128.0.2"]


def test_a_tap_name_is_one_interfaces_even_while_its_vmi_is_stopped(tmp_path: Path) -> None:
    registry = ipam.Registry(tmp_path / "r.json")
    registry.assign("a", [tap("a", device="vmidSAME")], POD, POOL)
    registry.deactivate("a")
    with pytest.raises(NetworkError, match=r"tap name vmidSAME collides with the tap of VMI a "):
        registry.assign("bb", [tap("bb", device="vmidSAME")], POD, POOL)
    with pytest.raises(NetworkError, match="collides with the tap of its interface one"):
        registry.check_devices("bb", [tap("bb", "one", device="x"), tap("bb", "two", device="x")])
    assert registry.of("bb") == []
    registry.assign("a", [tap("a", device="vmidSAME")], POD, POOL)  # a's own, again
