"""KubeVirt's VirtualMachine: its wire model, its admission (vms-admitter.go), and the VMI its
template makes (named as the VM, with the template's labels and a firmware UUID derived from it).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from vmid.api import defaults, imageref, names, validate
from vmid.api import types as t
from vmid.api.findings import FieldPath, Finding, quote
from vmid.api.structure import structure

VM_KIND = "VirtualMachine"

_CLUSTER = "cluster objects, and vmid has no Kubernetes API server"


class RunStrategy(t.Enum):
    ALWAYS = "Always"
    RERUN_ON_FAILURE = "RerunOnFailure"
    MANUAL = "Manual"
    HALTED = "Halted"
    ONCE = "Once"


#: KubeVirt's values (types.go); WaitAsReceiver is known but needs decentralized migration.
_KNOWN = {s.value for s in RunStrategy} | {"WaitAsReceiver"}


@attrs.frozen(kw_only=True)
class Template:
    metadata: t.ObjectMeta = attrs.field(factory=t.ObjectMeta)
    spec: t.VirtualMachineInstanceSpec


_NOT_YET = "not implemented in vmid yet"


@attrs.frozen(kw_only=True)
class BlankSource:
    pass


@attrs.frozen(kw_only=True)
class HttpSource:
    """CDI's DataVolumeSourceHTTP: an image (raw or qcow2, maybe gzipped) at a URL."""

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "certConfigMap": "a CA bundle from a ConfigMap needs Kubernetes; vmid trusts the host's "
        "CAs (/etc/ssl/certs): add the CA there",
        "secretRef": "credentials from a Secret need Kubernetes; put them in the URL's host "
        "configuration instead, or serve the image without them",
        "extraHeaders": f"extra headers are {_NOT_YET}",
        "secretExtraHeaders": "headers from Secrets need Kubernetes",
    }
    url: str


@attrs.frozen(kw_only=True)
class RegistrySource:
    """CDI's DataVolumeSourceRegistry: a containerDisk image's disk, as a claim."""

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "certConfigMap": HttpSource.UNSUPPORTED["certConfigMap"],
        "secretRef": "credentials from a Secret need Kubernetes; put them in vmid's auth.json "
        "(images.authFile)",
        "imageStream": "image streams are OpenShift objects",
    }
    IGNORED: ClassVar[frozenset[str]] = frozenset({"pullMethod", "platform"})
    url: str


@attrs.frozen(kw_only=True)
class ClaimSource:
    """CDI's DataVolumeSourcePVC: a clone of another claim (a file in volumesDir; claims
    have no namespace on one host)."""

    name: str
    namespace: str | None = None


@attrs.frozen(kw_only=True)
class DataVolumeSource:
    """CDI's DataVolumeSource: vmid makes blank ones (a sparse raw claim file) and imports
    http ones."""

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "s3": "S3 imports need CDI's importer pods",
        "gcs": "GCS imports need CDI's importer pods",
        "upload": "uploads go through CDI's upload proxy",
        "imageio": "oVirt imports need CDI's importer pods",
        "vddk": "VMware imports need CDI's importer pods",
        "snapshot": "volume snapshots need a CSI driver",
    }
    blank: BlankSource | None = None
    http: HttpSource | None = None
    registry: RegistrySource | None = None
    pvc: ClaimSource | None = None


@attrs.frozen(kw_only=True)
class StorageSpec:
    """A claim's spec as a DataVolume gives it (`pvc` or `storage`): only its size matters on
    one host, where a claim is a file in volumesDir."""

    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {
            "accessModes",
            "volumeMode",
            "storageClassName",
            "selector",
            "dataSource",
            "dataSourceRef",
            "volumeName",
            "volumeAttributesClassName",
        }
    )
    resources: t.ResourceRequirements = attrs.field(factory=t.ResourceRequirements)


@attrs.frozen(kw_only=True)
class DataVolumeSpec:
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {"contentType", "preallocation", "priorityClassName", "checkpoints", "finalCheckpoint"}
    )
    source: DataVolumeSource | None = None
    pvc: StorageSpec | None = None
    storage: StorageSpec | None = None

    def size(self) -> int | None:
        """The size asked for, in bytes (`storage` first, as CDI reads it)."""
        for claim in (self.storage, self.pvc):
            if claim is not None and "storage" in claim.resources.requests:
                return claim.resources.requests["storage"].value()
        return None


@attrs.frozen(kw_only=True)
class DataVolumeTemplate:
    metadata: t.ObjectMeta = attrs.field(factory=t.ObjectMeta)
    spec: DataVolumeSpec


@attrs.frozen(kw_only=True)
class VirtualMachineSpec:
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "instancetype": f"instance types are {_CLUSTER}; write the CPU and memory in the template",
        "preference": f"preferences are {_CLUSTER}; write the devices in the template",
    }
    IGNORED: ClassVar[frozenset[str]] = frozenset({"updateVolumesStrategy"})
    running: bool | None = None
    #: A string, not the enum: KubeVirt's own message names a bad one.
    runStrategy: str | None = None
    template: Template | None = None
    dataVolumeTemplates: tuple[DataVolumeTemplate, ...] = ()


@attrs.frozen(kw_only=True)
class VirtualMachine:
    IGNORED: ClassVar[frozenset[str]] = frozenset({"status"})
    apiVersion: str
    kind: str
    metadata: t.ObjectMeta
    spec: VirtualMachineSpec

    @property
    def key(self) -> str:
        return names.key(self.metadata.namespace, self.metadata.name or "")

    @property
    def strategy(self) -> RunStrategy:
        """The run strategy the manifest asks for (`running: true|false` as Always/Halted)."""
        if self.spec.runStrategy is not None:
            return RunStrategy(self.spec.runStrategy)
        return RunStrategy.ALWAYS if self.spec.running else RunStrategy.HALTED


def firmware_uuid(vm_key: str) -> str:
    """The firmware UUID of every VMI a VM makes: KubeVirt's name-derived one
    (pkg/virt-controller/watch/vm/firmware.go), the namespace in it outside `default`."""
    return str(uuid.uuid5(defaults.FIRMWARE_UUID_NAMESPACE, names.hashed(vm_key)))


def load(
    data: dict[Any, Any],
) -> tuple[VirtualMachine | None, t.VirtualMachineInstance | None, list[Finding]]:
    """Check a plain VM document: the VM, the defaulted VMI it makes, or every finding (paths
    in the VM's document)."""
    vm, findings = structure(data, VirtualMachine)
    if vm is None:
        return None, None, findings
    findings = _admit(vm)
    if findings or vm.spec.template is None:
        return None, None, findings
    vmi = defaults.apply(instance(vm))
    findings = [located(f) for f in validate.validate(vmi)]
    findings += _live_update_memory(vm.spec.template.spec, vmi.spec.architecture)
    return (None, None, findings) if findings else (vm, vmi, [])


#: pkg/liveupdate/memory/memory.go: hotplugged memory comes in blocks of 2 MiB, to a VM of 1 GiB
#: or more.
HOTPLUG_ALIGNMENT = 2 << 20
HOTPLUG_MIN_GUEST = 1 << 30


def _live_update_memory(
    spec: t.VirtualMachineInstanceSpec, architecture: str | None
) -> list[Finding]:
    """KubeVirt's memory hotplug rules (ValidateLiveUpdateMemory), which a default cluster (VM
    rollout strategy LiveUpdate) applies to a VM whose template sets `maxGuest`: vmid does not
    hotplug memory, but a VM KubeVirt refuses is refused. Its first rule broken, as KubeVirt's.
    Realtime, guest NUMA passthrough and launchSecurity are refused as such already."""
    memory = spec.domain.memory
    if memory is None or memory.maxGuest is None:
        return []
    guest, most = memory.guest, memory.maxGuest.value()
    if guest is None:
        message = "Guest memory must be configured when memory hotplug is enabled"
    elif guest.value() > most:
        message = "Guest memory is greater than the configured maxGuest memory"
    elif guest.value() % HOTPLUG_ALIGNMENT:
        message = "Guest memory must be 2Mi aligned"
    elif most % HOTPLUG_ALIGNMENT:
        message = "MaxGuest must be 2Mi aligned"
    elif architecture != "amd64":
        message = "Memory hotplug is only available for x86_64 VMs"
    elif guest.value() < HOTPLUG_MIN_GUEST:
        message = "Memory hotplug is only available for VMs with at least 1Gi of guest memory"
    else:
        return []
    return [Finding(("spec", "template", "spec", "domain", "memory", "guest"), message)]


def _admit(vm: VirtualMachine) -> list[Finding]:
    """vms-admitter.go's checks of the VM itself (its template is checked as any VMI)."""
    spec, out = vm.spec, []
    if spec.running is not None and spec.runStrategy is not None:
        out.append(
            Finding(
                ("spec", "running"),
                "Running and RunStrategy are mutually exclusive. Note that Running is "
                "deprecated, please use RunStrategy instead",
            )
        )
    elif spec.running is None and spec.runStrategy is None:
        out.append(Finding(("spec", "runStrategy"), "RunStrategy must be specified"))
    elif spec.runStrategy is not None and spec.runStrategy not in _KNOWN:
        out.append(Finding(("spec", "runStrategy"), f"Invalid RunStrategy ({spec.runStrategy})"))
    elif spec.runStrategy == "WaitAsReceiver":
        out.append(
            Finding(
                ("spec", "runStrategy"),
                f"run strategy {quote(spec.runStrategy)} is not supported by vmid: it waits "
                "for a decentralized live migration, which needs a cluster",
            )
        )
    if spec.template is None:
        out.append(Finding(("spec", "template"), "missing virtual machine template."))
    else:
        out += _data_volumes(spec.dataVolumeTemplates, spec.template)
    return out


def _data_volumes(templates: tuple[DataVolumeTemplate, ...], template: Template) -> list[Finding]:
    """Each DataVolume template named, referenced, with a source and a size."""
    used = {v.dataVolume.name for v in template.spec.volumes if v.dataVolume is not None}
    out, seen = [], set()
    for index, dv in enumerate(templates):
        path: FieldPath = ("spec", "dataVolumeTemplates", index)
        name = dv.metadata.name
        if not name or not validate.DNS1123_SUBDOMAIN.fullmatch(name) or len(name) > 253:
            message = "Required value" if not name else f"Invalid value: {quote(name)}: "
            message += "" if not name else "must be a lowercase RFC 1123 subdomain"
            out.append(Finding((*path, "metadata", "name"), message))
            continue
        if name in seen:
            out.append(Finding((*path, "metadata", "name"), f"Duplicate value: {quote(name)}"))
        seen.add(name)
        if name not in used:
            out.append(
                Finding(
                    path,
                    f"DataVolumeTemplate entry spec.dataVolumeTemplates[{index}] must be "
                    "referenced in the VMI template's 'volumes' list",
                )
            )
        out += _source(path, dv.spec.source)
        if dv.spec.size() is None:
            out.append(
                Finding(
                    (*path, "spec", "storage", "resources", "requests", "storage"),
                    "Required value: the DataVolume's size",
                )
            )
    return out


def _source(path: FieldPath, source: DataVolumeSource | None) -> list[Finding]:
    where = (*path, "spec", "source")
    kinds = () if source is None else (source.blank, source.http, source.registry, source.pvc)
    if sum(s is not None for s in kinds) != 1:
        return [Finding(where, "Required value: exactly one source (blank, http, registry, pvc)")]
    pvc = source.pvc if source is not None else None
    if pvc is not None and not validate.DNS1123_SUBDOMAIN.fullmatch(pvc.name):
        message = f"Invalid value: {quote(pvc.name)}: a claim name"
        return [Finding((*where, "pvc", "name"), message)]
    if source is not None and source.registry is not None:
        url = source.registry.url
        if not url.startswith("docker://") or not _image_ref(url.removeprefix("docker://")):
            message = f"Invalid value: {quote(url)}: a docker://REGISTRY/IMAGE:TAG URL"
            return [Finding((*where, "registry", "url"), message)]
    if source is not None and source.http is not None:
        scheme = source.http.url.partition("://")[0]
        if scheme not in ("http", "https") or not source.http.url.partition("://")[2]:
            message = f"Invalid value: {quote(source.http.url)}: an http:// or https:// URL"
            return [Finding((*where, "http", "url"), message)]
    return []


def _image_ref(text: str) -> bool:
    try:
        imageref.normalize(text)
    except imageref.ImageRefError:
        return False
    return True


def imported_volumes(vm: VirtualMachine) -> dict[str, tuple[str, int]]:
    """The DataVolumes the VM's templates import: (URL: http(s)://, docker://, or pvc://NAME
    for a clone of claim NAME; size in bytes) by claim name."""
    found = {}
    for dv in vm.spec.dataVolumeTemplates:
        source, size = dv.spec.source, dv.spec.size()
        if not dv.metadata.name or source is None or size is None:
            continue
        if source.http is not None:
            found[dv.metadata.name] = (source.http.url, size)
        elif source.registry is not None:
            found[dv.metadata.name] = (source.registry.url, size)
        elif source.pvc is not None:
            found[dv.metadata.name] = (f"pvc://{source.pvc.name}", size)
    return found


def blank_volumes(vm: VirtualMachine) -> dict[str, int]:
    """The blank DataVolumes the VM's templates make: size in bytes by claim name."""
    return {
        dv.metadata.name: size
        for dv in vm.spec.dataVolumeTemplates
        if dv.metadata.name
        and dv.spec.source is not None
        and dv.spec.source.blank is not None
        and (size := dv.spec.size()) is not None
    }


def instance(vm: VirtualMachine) -> t.VirtualMachineInstance:
    """The VMI the VM's template makes (not yet defaulted)."""
    assert vm.spec.template is not None
    template = vm.spec.template
    metadata = t.ObjectMeta(
        name=vm.metadata.name,
        namespace=vm.metadata.namespace,
        labels=template.metadata.labels,
        annotations=template.metadata.annotations,
    )
    spec = template.spec
    firmware = spec.domain.firmware or t.Firmware()
    if firmware.uuid is None:
        firmware = attrs.evolve(firmware, uuid=firmware_uuid(vm.key))
        spec = attrs.evolve(spec, domain=attrs.evolve(spec.domain, firmware=firmware))
    return t.VirtualMachineInstance(
        apiVersion=vm.apiVersion, kind="VirtualMachineInstance", metadata=metadata, spec=spec
    )


def located(finding: Finding) -> Finding:
    """A finding about the template's VMI, at its place in the VM's document, and the paths
    its message names too (as KubeVirt's VM admitter words them: `spec.template.spec.volumes`)."""
    return Finding(vmi_path(finding.path), _SPEC_PATH.sub("spec.template.spec", finding.message))


#: A field path of the VMI's spec in a message (`spec.volumes[1]`), not `spec.template...`.
_SPEC_PATH = re.compile(r"(?<![\w.])spec(?=\.(?!template\b)\w)")


def vmi_path(path: FieldPath) -> FieldPath:
    """Where a field of the template's VMI is written in the VM's document."""
    if path[:1] == ("spec",):
        return ("spec", "template", *path)
    if path[:2] in (("metadata", "labels"), ("metadata", "annotations")):
        return ("spec", "template", *path)
    return path


def owner_reference(vm: VirtualMachine) -> dict[str, Any]:
    """The ownerReference a VM's VMI carries, as KubeVirt's controller sets it."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": VM_KIND,
        "name": vm.metadata.name,
        "controller": True,
        "blockOwnerDeletion": True,
    }
