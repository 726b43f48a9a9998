"""The files of a cloud-init NoCloud or ConfigDrive ISO, laid out as KubeVirt writes them."""

from __future__ import annotations

import json

from vmid.api import types as t
from vmid.api.validate import decode_base64
from vmid.plan.model import IsoFile

NOCLOUD_LABEL = "cidata"
CONFIGDRIVE_LABEL = "config-2"


def hostname(vmi: t.VirtualMachineInstance) -> str:
    """spec.hostname, else the name up to its first dot, at most 63 characters (KubeVirt's rule)."""
    name = vmi.metadata.name or ""
    return vmi.spec.hostname or name.split(".", 1)[0][:63]


def nocloud_files(vmi: t.VirtualMachineInstance, source: t.CloudInitSource) -> tuple[IsoFile, ...]:
    """`meta-data` (compact JSON), `user-data`, and `network-config` when there is network data."""
    meta = {"instance-id": vmi.spec.domain.firmware_uuid(), "local-hostname": hostname(vmi)}
    files = [_json("meta-data", meta), IsoFile(name="user-data", content=_user_data(source))]
    network = _network_data(source)
    if network:
        files.append(IsoFile(name="network-config", content=network))
    return tuple(files)


def configdrive_files(
    vmi: t.VirtualMachineInstance, source: t.CloudInitSource
) -> tuple[IsoFile, ...]:
    """`openstack/latest/{meta_data.json,user_data,network_data.json}`."""
    namespace = vmi.metadata.namespace or "default"
    meta = {
        "instance_id": f"{vmi.metadata.name}.{namespace}",
        "hostname": hostname(vmi),
        "uuid": vmi.spec.domain.firmware_uuid(),
    }
    files = [
        _json("openstack/latest/meta_data.json", meta),
        IsoFile(name="openstack/latest/user_data", content=_user_data(source)),
    ]
    network = _network_data(source)
    if network:
        files.append(IsoFile(name="openstack/latest/network_data.json", content=network))
    return tuple(files)


def _json(name: str, value: dict[str, str]) -> IsoFile:
    return IsoFile(name=name, content=json.dumps(value, separators=(",", ":")).encode())


def _user_data(source: t.CloudInitSource) -> bytes:
    return _data(source.userData, source.userDataBase64)


def _network_data(source: t.CloudInitSource) -> bytes:
    return _data(source.networkData, source.networkDataBase64)


def _data(text: str | None, encoded: str | None) -> bytes:
    if text is not None:
        return text.encode()
    if encoded is not None:
        return decode_base64(encoded)
    return b""
