"""vmid: KubeVirt VirtualMachineInstance manifests run by QEMU on one Linux host."""
