"""The typed VMI object (vmid/api/vmistatus.py): what the daemon writes reads back exactly, and
files older vmids wrote still read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import fake_config, running_daemon
from tests.test_network import vmi
from vmid.api.vmistatus import Phase, QemuStatus, VMIObject
from vmid.runtime.status import Status


@pytest.mark.timeout(120)
def test_a_status_file_the_daemon_wrote_is_written_back_byte_for_byte(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("web.yaml", vmi("web"))
        daemon.wait_phase("web", "Running")
        text = (tmp_path / "run/vmid/namespaces/default/web/status.json").read_text()
    path = tmp_path / "copy.json"  # as it was then: the daemon rewrites it as it stops
    path.write_text(text)
    data = json.loads(text)
    obj = VMIObject.from_data(data)
    assert obj.status.phase is Phase.RUNNING
    assert obj.status.is_true("Ready")
    assert obj.status.interfaces[0].ipAddress == "10.0.2.2"
    assert obj.status.qemu is not None
    assert obj.status.qemu.argv[0] == data["status"]["qemu"]["argv"][0]
    rebuilt = {**data, "status": obj.status.to_data()}
    assert json.dumps(rebuilt) + "\n" == text
    assert json.dumps(Status.load(path).to_data()) + "\n" == text


def old_object() -> dict[str, Any]:
    """An object as a vmid before namespaces, uids and the guest agent wrote it, with a field
    a newer vmid (or KubeVirt) writes that this one does not know."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "old", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"domain": {"memory": {"guest": "64Mi"}}},
        "status": {
            "phase": "Running",
            "phaseTransitionTimestamps": [
                {"phase": "Pending", "phaseTransitionTimestamp": "2025-01-01T00:00:00Z"}
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
            "qemu": {"pid": 42, "qmpSocket": "/run/vmid/instances/old/qmp.sock"},
            "nodeName": "somewhere",
        },
    }


def test_an_older_vmids_object_reads_with_defaults_and_keeps_what_it_does_not_know() -> None:
    obj = VMIObject.from_data(old_object())
    assert obj.key == "default/old"
    assert obj.status.condition("Ready") is not None
    assert obj.status.qemu == QemuStatus(pid=42, qmpSocket="/run/vmid/instances/old/qmp.sock")
    assert obj.status.qemu.acpi  # soft-reboot tries ACPI, as before vmid recorded it
    assert obj.status.interfaces == ()
    assert obj.data["status"]["nodeName"] == "somewhere"  # `vmid get -o yaml` still shows it


def test_an_older_vmids_status_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(json.dumps(old_object()))
    status = Status.load(path)
    assert (status.phase, status.qemu) == (
        Phase.RUNNING,
        VMIObject.from_data(old_object()).status.qemu,
    )
    assert status.conditions["Ready"].true


@pytest.mark.parametrize(
    "data",
    [[], {"status": {"phase": "Exploded"}}, {"status": {"conditions": [{"type": "Ready"}]}}],
    ids=["not an object", "unknown phase", "condition without status"],
)
def test_what_vmid_did_not_write_is_a_value_error(data: object) -> None:
    with pytest.raises(ValueError, match="VMI object"):
        VMIObject.from_data(data)


def test_a_status_with_no_phase_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text('{"metadata": {"name": "vm-a"}}')
    assert VMIObject.from_data(json.loads(path.read_text())).status.phase is None
    with pytest.raises(ValueError, match="no phase"):
        Status.load(path)
