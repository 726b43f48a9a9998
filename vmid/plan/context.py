"""What planning one VMI needs to know: the VMI, the configuration and where its files go."""

from __future__ import annotations

import posixpath

import attrs

from vmid.api import imageref, names
from vmid.api import types as t
from vmid.config import Accelerator, Config, Paths
from vmid.plan.model import FileSets


@attrs.frozen
class Context:
    """One VMI with the host facts the plan depends on; `accelerator` is never `auto` here."""

    vmi: t.VirtualMachineInstance
    config: Config
    paths: Paths
    accelerator: Accelerator
    #: The files QEMU will get by fd, collected while planning.
    files: FileSets = attrs.field(factory=FileSets, eq=False)

    @property
    def key(self) -> str:
        """namespace/name: what identifies the VMI on this host (vmid/api/names.py)."""
        assert self.vmi.metadata.name is not None
        return names.key(self.vmi.metadata.namespace, self.vmi.metadata.name)

    @property
    def state_dir(self) -> str:
        return str(self.paths.instance_state(self.key))

    @property
    def runtime_dir(self) -> str:
        return str(self.paths.instance_runtime(self.key))

    @property
    def log_dir(self) -> str:
        return str(self.paths.instance_logs(self.key))

    @property
    def vcpus(self) -> int:
        cpu = self.vmi.spec.domain.cpu or t.CPU()
        return (cpu.sockets or 1) * (cpu.cores or 1) * (cpu.threads or 1)

    @property
    def volumes_dir(self) -> str:
        return str(self.paths.volumes(self.config))

    @property
    def images_dir(self) -> str:
        return str(self.paths.images)

    def claim_path(self, claim: str) -> str:
        """The host file a persistentVolumeClaim or dataVolume name stands for."""
        return posixpath.join(self.volumes_dir, f"{claim}.img")

    def image_path(self, ref: str) -> str:
        """The raw disk of a (normalised) image reference in vmid's image store."""
        return posixpath.join(self.images_dir, imageref.store_name(ref), imageref.STORE_FILE)

    def virtio_model(self, base: str) -> str:
        """virtio-*-pci as KubeVirt picks it: non-transitional unless useVirtioTransitional."""
        transitional = self.vmi.spec.domain.devices.useVirtioTransitional
        return f"{base}-transitional" if transitional else f"{base}-non-transitional"
