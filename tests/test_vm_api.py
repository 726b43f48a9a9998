"""kind: VirtualMachine as KubeVirt's VM admitter takes it, and the VMI its template makes."""

from __future__ import annotations

import uuid

import pytest

from vmid.api.load import load_text
from vmid.api.vm import RunStrategy, blank_volumes
from vmid.errors import Problem

FILE = "vm.yaml"

TEMPLATE = """  template:
    metadata:
      labels: {app: web}
      annotations: {note: x}
    spec:
      domain:
        devices:
          disks:
          - name: root
        memory: {guest: 64Mi}
      volumes:
      - name: root
        containerDisk: {image: quay.io/x/y:1}
"""


def vm(spec: str, name: str = "web", namespace: str | None = None) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    head = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\n"
    return f"{head}metadata:\n  name: {name}{ns}\nspec:\n{spec}"


def problems(text: str) -> list[Problem]:
    manifests, found = load_text(FILE, text.encode())
    assert manifests == []
    return found


def test_the_template_makes_a_vmi_named_as_the_vm_with_its_labels() -> None:
    [manifest], found = load_text(FILE, vm("  runStrategy: Always\n" + TEMPLATE).encode())
    assert found == []
    assert manifest.vm is not None
    assert manifest.vm.strategy is RunStrategy.ALWAYS
    assert manifest.key == "default/web"
    assert manifest.vmi.metadata.labels == {"app": "web"}
    assert manifest.vmi.metadata.annotations == {"note": "x"}
    assert manifest.vmi.kind == "VirtualMachineInstance"


def test_the_firmware_uuid_is_derived_from_the_vm_as_kubevirt_does() -> None:
    [manifest], _ = load_text(FILE, vm("  running: true\n" + TEMPLATE).encode())
    # KubeVirt's firmware.go: uuid.NewSHA1(6a1a24a1-..., name).
    derived = uuid.uuid5(uuid.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895"), "web")
    assert manifest.vmi.spec.domain.firmware_uuid() == str(derived)
    [other], _ = load_text(FILE, vm("  running: true\n" + TEMPLATE, namespace="prod").encode())
    assert other.vmi.spec.domain.firmware_uuid() != str(derived)  # another VM: another UUID


@pytest.mark.parametrize(
    ("running", "strategy"), [("true", RunStrategy.ALWAYS), ("false", RunStrategy.HALTED)]
)
def test_running_is_always_or_halted(running: str, strategy: RunStrategy) -> None:
    [manifest], _ = load_text(FILE, vm(f"  running: {running}\n" + TEMPLATE).encode())
    assert manifest.vm is not None
    assert manifest.vm.strategy is strategy


def test_running_and_run_strategy_are_mutually_exclusive() -> None:
    [problem] = problems(vm("  running: true\n  runStrategy: Always\n" + TEMPLATE))
    assert (problem.line, problem.column, problem.field) == (6, 12, "spec.running")
    assert problem.message.startswith("Running and RunStrategy are mutually exclusive")


def test_a_run_strategy_is_required() -> None:
    [problem] = problems(vm(TEMPLATE))
    assert problem.message == "RunStrategy must be specified"


def test_a_bad_run_strategy() -> None:
    [problem] = problems(vm("  runStrategy: Sometimes\n" + TEMPLATE))
    assert (problem.line, problem.field) == (6, "spec.runStrategy")
    assert problem.message == "Invalid RunStrategy (Sometimes)"


def test_a_template_is_required() -> None:
    [problem] = problems(vm("  runStrategy: Always\n"))
    assert problem.message == "missing virtual machine template."


def test_the_template_passes_every_vmi_rule_located_in_the_vm() -> None:
    text = vm(
        "  runStrategy: Always\n"
        + TEMPLATE.replace("- name: root\n        c", "- name: other\n        c")
    )
    found = problems(text)
    assert [p.field for p in found] == ["spec.template.spec.domain.devices.disks[0].name"]
    assert found[0].line == 15  # the disk's name, in the template
    # The paths the message names are the VM's too, as KubeVirt's VM admitter words them.
    assert "no volume in spec.template.spec.volumes has this name" in found[0].message


def test_a_vm_beside_a_vmi_in_one_file() -> None:
    vmi = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: bare}\n"
    vmi += "spec:\n  domain:\n    devices: {}\n    memory: {guest: 64Mi}\n"
    manifests, found = load_text(
        FILE, (vm("  runStrategy: Manual\n" + TEMPLATE) + "---\n" + vmi).encode()
    )
    assert found == []
    assert [(m.name, m.vm is not None) for m in manifests] == [("web", True), ("bare", False)]


def test_instance_types_are_refused_with_a_reason() -> None:
    [problem] = problems(vm("  runStrategy: Always\n  instancetype: {name: u1.small}\n" + TEMPLATE))
    assert problem.field == "spec.instancetype"
    assert "not supported by vmid" in problem.message


DATA = """  dataVolumeTemplates:
  - metadata: {name: data}
    spec:
      source: SOURCE
      pvc: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2Gi}}}
"""


def with_data(source: str) -> str:
    volume = "      - name: data\n        dataVolume: {name: data}\n"
    disk = "          - name: data\n"
    template = TEMPLATE.replace("          - name: root\n", "          - name: root\n" + disk)
    return vm("  runStrategy: Always\n" + DATA.replace("SOURCE", source) + template + volume)


def test_a_blank_data_volume_gives_its_size() -> None:
    [manifest], found = load_text(FILE, with_data("{blank: {}}").encode())
    assert found == []
    assert manifest.vm is not None
    assert blank_volumes(manifest.vm) == {"data": 2 << 30}


def test_other_data_volume_sources_are_refused_with_a_reason() -> None:
    [problem] = problems(with_data("{s3: {url: 'https://bucket/x'}}"))
    assert problem.field == "spec.dataVolumeTemplates[0].spec.source.s3"
    assert problem.message.startswith("s3 is not supported by vmid: ")


def test_a_data_volume_template_must_be_used() -> None:
    text = with_data("{blank: {}}").replace("dataVolume: {name: data}", "dataVolume: {name: x}")
    found = problems(text)
    assert "DataVolumeTemplate entry spec.dataVolumeTemplates[0] must be referenced" in str(found)


def test_a_registry_data_volume_needs_a_docker_url() -> None:
    [problem] = problems(with_data("{registry: {url: 'oci-archive:///x.tar'}}"))
    assert problem.field == "spec.dataVolumeTemplates[0].spec.source.registry.url"
    [_manifest], found = load_text(
        FILE, with_data("{registry: {url: 'docker://q.io/a/b:1'}}").encode()
    )
    assert found == []
