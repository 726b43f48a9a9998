"""The limits of a VMI's own cgroup, as KubeVirt sizes its virt-launcher pod's compute container.

`resources.limits.cpu` becomes a CPU quota, `resources.limits.memory` plus KubeVirt's estimate of
what runs beside the guest (GetMemoryOverhead, pkg/hypervisor/kvm) a memory ceiling, and the CPU
request (or KubeVirt's own, vCPUs / cpuAllocationRatio) a CPU weight the way the kubelet turns a
request into one. The runtime gives them to systemd (vmid/host/machines.py).
"""

from __future__ import annotations

import math

import attrs

from vmid.api import types as t
from vmid.api.quantity import Quantity
from vmid.plan.model import Cgroup

MI = 1 << 20
#: KubeVirt's fixed overhead: the `ps` RSS of virt-launcher-monitor, virt-launcher, virtlogd,
#: virtqemud and QEMU itself (less its guest's RAM and page tables). vmid runs none of the
#: first four; they are kept so a VM gets the very limit it gets on a cluster.
FIXED_OVERHEAD = (25 + 100 + 25 + 40 + 30) * MI
PER_VCPU_OVERHEAD = 8 * MI
IOTHREAD_OVERHEAD = 8 * MI
VIDEO_OVERHEAD = 32 * MI
EXEC_PROBE_OVERHEAD = 10 * MI
PROBES_OVERHEAD = 100 * MI
GUARANTEED_OVERHEAD = 100 * MI
#: Page tables: one byte per 512 bytes of requested memory (counted in whole kilobytes).
PAGETABLE_DIVISOR = 512
#: KubeVirt's default cpuAllocationRatio: with no CPU request, a pod asks for vCPUs / 10.
CPU_ALLOCATION_RATIO = 10
#: The kubelet's cpu.shares bounds, and cgroup v2's weight range it maps them onto.
MIN_SHARES, MAX_SHARES = 2, 262144


def cgroup(vmi: t.VirtualMachineInstance, vcpus: int) -> Cgroup:
    """The limits of the VMI's scope; `vmi` defaulted, `vcpus` its guest's vCPU count."""
    resources = vmi.spec.domain.resources or t.ResourceRequirements()
    cpu_limit = resources.limits.get("cpu")
    memory_limit = resources.limits.get("memory")
    return Cgroup(
        cpuQuotaPerSecUSec=cpu_limit.milli_value() * 1000 if cpu_limit is not None else None,
        memoryMax=(
            memory_limit.value() + memory_overhead(vmi, vcpus) if memory_limit is not None else None
        ),
        cpuWeight=cpu_weight(_cpu_request(resources, vcpus)),
    )


def memory_overhead(vmi: t.VirtualMachineInstance, vcpus: int) -> int:
    """Bytes QEMU needs beyond the guest's memory, as KubeVirt's GetMemoryOverhead (x86_64; the
    devices vmid refuses, VFIO, SEV, TPM, downwardMetrics, add nothing here)."""
    resources = _requested(vmi)
    overhead = _pagetables(resources.requests.get("memory")) + FIXED_OVERHEAD
    overhead += PER_VCPU_OVERHEAD * max(vcpus, 1) + IOTHREAD_OVERHEAD
    if vmi.spec.domain.devices.autoattachGraphicsDevice is not False:
        overhead += VIDEO_OVERHEAD
    execs = sum(p is not None and p.exec is not None for p in _probes(vmi))
    overhead += execs * EXEC_PROBE_OVERHEAD + (PROBES_OVERHEAD if execs else 0)
    if _guaranteed(resources):
        overhead += GUARANTEED_OVERHEAD
    return overhead


def cpu_weight(millicpu: int) -> int:
    """The kubelet's mapping: cpu.shares (1024 a CPU, within its bounds) to a cgroup v2 weight."""
    shares = min(max(millicpu * 1024 // 1000, MIN_SHARES), MAX_SHARES)
    return 1 + (shares - MIN_SHARES) * 9999 // (MAX_SHARES - MIN_SHARES)


def _requested(vmi: t.VirtualMachineInstance) -> t.ResourceRequirements:
    """The resources with KubeVirt's memory request default (setDefaultResourceRequests): the
    memory limit, else the guest's memory (vmid's own defaults leave requests as written)."""
    resources = vmi.spec.domain.resources or t.ResourceRequirements()
    if "memory" in resources.requests:
        return resources
    memory = vmi.spec.domain.memory.guest if vmi.spec.domain.memory else None
    memory = resources.limits.get("memory") or memory
    if memory is None:
        return resources
    return attrs.evolve(resources, requests={**resources.requests, "memory": memory})


def _cpu_request(resources: t.ResourceRequirements, vcpus: int) -> int:
    request = resources.requests.get("cpu")
    if request is not None:
        return request.milli_value()
    return math.ceil(max(vcpus, 1) * 1000 / CPU_ALLOCATION_RATIO)


def _pagetables(request: Quantity | None) -> int:
    kilobytes = request.exact / 1000 if request is not None else 0
    return math.ceil(kilobytes) * 1000 // PAGETABLE_DIVISOR


def _probes(vmi: t.VirtualMachineInstance) -> tuple[t.Probe | None, ...]:
    return (vmi.spec.livenessProbe, vmi.spec.readinessProbe)


def _guaranteed(resources: t.ResourceRequirements) -> bool:
    """KubeVirt's WantsToHaveQOSGuaranteed: CPU and memory requested, each equal to its limit."""
    return all(
        resources.requests.get(kind) is not None
        and resources.requests[kind].exact != 0
        and resources.limits.get(kind) is not None
        and resources.requests[kind].exact == resources.limits[kind].exact
        for kind in ("cpu", "memory")
    )
