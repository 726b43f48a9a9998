"""KubeVirt's defaulting (its mutating webhook and API defaults) for amd64, as pure functions.

The firmware UUID is derived from the VMI's name the way KubeVirt does for legacy VMs, so the same
manifest always plans the same machine; the daemon keeps a stored UUID instead once it has one.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from vmid.api import names
from vmid.api import types as t

ARCHITECTURE = "amd64"
MACHINE_TYPE = "q35"
CPU_MODEL = "host-model"
#: KubeVirt's namespace for name-derived firmware UUIDs (pkg/virt-controller/watch/vm/firmware.go).
FIRMWARE_UUID_NAMESPACE = uuid.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895")
POD_NETWORK = "default"
#: Hyper-V features and the one each requires, leaves first (pkg/defaults/hyperv.go), so that
#: synictimer enables synic before synic's own requirement is looked at.
HYPERV_REQUIRES = (
    ("evmcs", "vapic"),
    ("ipi", "vpindex"),
    ("tlbflush", "vpindex"),
    ("synictimer", "synic"),
    ("synic", "vpindex"),
)


def apply(vmi: t.VirtualMachineInstance) -> t.VirtualMachineInstance:
    """Return the VMI with every default KubeVirt would fill in on create."""
    spec = vmi.spec
    domain = spec.domain
    domain = attrs.evolve(
        domain,
        machine=attrs.evolve(domain.machine or t.Machine(), type=_machine_type(domain)),
        resources=_resources(domain.resources),
        firmware=_firmware(domain.firmware, vmi.metadata.name or ""),
        features=_features(domain.features),
        clock=_clock(domain.clock),
    )
    domain = _hyperv_dependencies(domain)
    domain = attrs.evolve(domain, memory=_memory(domain), cpu=_cpu(domain))
    spec = attrs.evolve(
        spec,
        architecture=spec.architecture or ARCHITECTURE,
        volumes=tuple(_volume(v) for v in spec.volumes),
        domain=domain,
    )
    spec = _default_network(spec)
    spec = attrs.evolve(
        spec,
        readinessProbe=_probe(spec.readinessProbe),
        livenessProbe=_probe(spec.livenessProbe),
    )
    spec = attrs.evolve(spec, domain=attrs.evolve(domain, devices=_devices(spec)))
    # As the API server does: an object created without a namespace is in kubectl's.
    namespace = vmi.metadata.namespace or names.DEFAULT_NAMESPACE
    return attrs.evolve(vmi, metadata=attrs.evolve(vmi.metadata, namespace=namespace), spec=spec)


def firmware_uuid(name: str) -> str:
    """The UUID KubeVirt derives from a name when none is given."""
    return str(uuid.uuid5(FIRMWARE_UUID_NAMESPACE, name))


def _machine_type(domain: t.DomainSpec) -> str:
    return (domain.machine.type if domain.machine else None) or MACHINE_TYPE


def _resources(resources: t.ResourceRequirements | None) -> t.ResourceRequirements:
    resources = resources or t.ResourceRequirements()
    if "cpu" in resources.limits and "cpu" not in resources.requests:
        requests = {**resources.requests, "cpu": resources.limits["cpu"]}
        resources = attrs.evolve(resources, requests=requests)
    return resources


def _memory(domain: t.DomainSpec) -> t.Memory:
    memory = domain.memory or t.Memory()
    if memory.guest is not None:
        return memory
    assert domain.resources is not None
    guest = domain.resources.requests.get("memory") or domain.resources.limits.get("memory")
    return attrs.evolve(memory, guest=guest)


def _cpu(domain: t.DomainSpec) -> t.CPU:
    cpu = domain.cpu or t.CPU()
    features = tuple(
        attrs.evolve(f, policy=f.policy or t.FeaturePolicy.REQUIRE) for f in cpu.features
    )
    cpu = attrs.evolve(cpu, model=cpu.model or CPU_MODEL, features=features)
    if cpu.cores or cpu.sockets or cpu.threads:
        return cpu
    assert domain.resources is not None
    quantity = domain.resources.limits.get("cpu") or domain.resources.requests.get("cpu")
    sockets = max(quantity.value(), 1) if quantity is not None else 1
    return attrs.evolve(cpu, sockets=sockets, cores=1, threads=1)


def _firmware(firmware: t.Firmware | None, name: str) -> t.Firmware:
    firmware = firmware or t.Firmware()
    if firmware.uuid is None:
        firmware = attrs.evolve(firmware, uuid=firmware_uuid(name))
    efi = firmware.bootloader.efi if firmware.bootloader else None
    if firmware.bootloader and efi and efi.secureBoot is None:
        # `efi: {}` means SecureBoot on, as in KubeVirt.
        bootloader = attrs.evolve(firmware.bootloader, efi=attrs.evolve(efi, secureBoot=True))
        firmware = attrs.evolve(firmware, bootloader=bootloader)
    return firmware


def _enabled(state: t.FeatureState | None) -> t.FeatureState | None:
    if state is None or state.enabled is not None:
        return state
    return attrs.evolve(state, enabled=True)


def _features(features: t.Features | None) -> t.Features:
    features = features or t.Features()
    apic = features.apic
    if apic is not None and apic.enabled is None:
        apic = attrs.evolve(apic, enabled=True)
    return attrs.evolve(
        features,
        acpi=_enabled(features.acpi) or t.FeatureState(enabled=True),
        apic=apic,
        smm=_enabled(features.smm),
        hyperv=_hyperv(features.hyperv),
        hypervPassthrough=_enabled(features.hypervPassthrough),
        pvspinlock=_enabled(features.pvspinlock),
    )


def _hyperv(hyperv: t.FeatureHyperv | None) -> t.FeatureHyperv | None:
    if hyperv is None:
        return None
    changes: dict[str, Any] = {}
    for field in attrs.fields(t.FeatureHyperv):
        state = getattr(hyperv, field.name)
        if state is not None and state.enabled is None:
            changes[field.name] = attrs.evolve(state, enabled=True)
    spinlocks = changes.get("spinlocks", hyperv.spinlocks)
    if isinstance(spinlocks, t.FeatureSpinlocks) and spinlocks.spinlocks is None:
        changes["spinlocks"] = attrs.evolve(spinlocks, spinlocks=4096)
    return attrs.evolve(hyperv, **changes)


def _enabled_state(state: t.FeatureState | t.SyNICTimer | None) -> bool:
    return state is not None and bool(state.enabled)


def _hyperv_dependencies(domain: t.DomainSpec) -> t.DomainSpec:
    """Enable what an enabled Hyper-V feature requires, as KubeVirt's mutator does, and stop at
    the first requirement the user disabled (validation reports it); EVMCS also gets `vmx`."""
    features = domain.features
    hyperv = features.hyperv if features else None
    if features is None or hyperv is None:
        return domain
    for feature, required in HYPERV_REQUIRES:
        if not _enabled_state(getattr(hyperv, feature)):
            continue
        state = getattr(hyperv, required)
        if state is None:
            enable: dict[str, Any] = {required: t.FeatureState(enabled=True)}
            hyperv = attrs.evolve(hyperv, **enable)
        elif not state.enabled:
            return attrs.evolve(domain, features=attrs.evolve(features, hyperv=hyperv))
    domain = attrs.evolve(domain, features=attrs.evolve(features, hyperv=hyperv))
    return _vmx_for_evmcs(domain) if _enabled_state(hyperv.evmcs) else domain


def _vmx_for_evmcs(domain: t.DomainSpec) -> t.DomainSpec:
    cpu = domain.cpu or t.CPU()
    vmx = t.CPUFeature(name="vmx", policy=t.FeaturePolicy.REQUIRE)
    features = [vmx if f.name == "vmx" else f for f in cpu.features]
    if vmx not in features:
        features.append(vmx)
    return attrs.evolve(domain, cpu=attrs.evolve(cpu, features=tuple(features)))


def _clock(clock: t.Clock | None) -> t.Clock | None:
    if clock is None or clock.timer is None:
        return clock
    timer = clock.timer
    hpet = timer.hpet and attrs.evolve(timer.hpet, present=_true(timer.hpet.present))
    rtc = timer.rtc and attrs.evolve(timer.rtc, present=_true(timer.rtc.present))
    return attrs.evolve(clock, timer=attrs.evolve(timer, hpet=hpet, rtc=rtc))


def _true(value: bool | None) -> bool:
    return True if value is None else value


def _volume(volume: t.Volume) -> t.Volume:
    disk = volume.containerDisk
    if disk is None or disk.imagePullPolicy is not None:
        return volume
    policy = t.PullPolicy.ALWAYS if _floating_tag(disk.image) else t.PullPolicy.IF_NOT_PRESENT
    return attrs.evolve(volume, containerDisk=attrs.evolve(disk, imagePullPolicy=policy))


def _floating_tag(image: str) -> bool:
    if "@" in image:
        return False
    last = image.rsplit("/", 1)[-1]
    return ":" not in last or last.endswith(":latest")


def _probe(probe: t.Probe | None) -> t.Probe | None:
    """Kubernetes' SetDefaults_Probe and SetDefaults_HTTPGetAction."""
    if probe is None:
        return None
    http = probe.httpGet
    if http is not None:
        http = attrs.evolve(http, path=http.path or "/", scheme=http.scheme or t.URIScheme.HTTP)
    return attrs.evolve(
        probe,
        httpGet=http,
        initialDelaySeconds=probe.initialDelaySeconds or 0,
        timeoutSeconds=probe.timeoutSeconds or 1,
        periodSeconds=probe.periodSeconds or 10,
        successThreshold=probe.successThreshold or 1,
        failureThreshold=probe.failureThreshold or 3,
    )


def _default_network(spec: t.VirtualMachineInstanceSpec) -> t.VirtualMachineInstanceSpec:
    devices = spec.domain.devices
    if spec.networks or devices.interfaces or devices.autoattachPodInterface is False:
        return spec
    interface = t.Interface(name=POD_NETWORK, bridge=t.EmptyBinding())
    devices = attrs.evolve(devices, interfaces=(interface,))
    return attrs.evolve(
        spec,
        networks=(t.Network(name=POD_NETWORK, pod=t.PodNetwork()),),
        domain=attrs.evolve(spec.domain, devices=devices),
    )


def _devices(spec: t.VirtualMachineInstanceSpec) -> t.Devices:
    devices = spec.domain.devices
    named = {d.name for d in devices.disks}
    # One disk per volume name: two volumes of one name are refused as such, not as two disks.
    unnamed = dict.fromkeys(v.name for v in spec.volumes if v.name not in named)
    extra = tuple(t.Disk(name=name) for name in unnamed)
    watchdog = devices.watchdog
    if watchdog is not None and watchdog.i6300esb is None and watchdog.diag288 is None:
        watchdog = attrs.evolve(watchdog, i6300esb=t.I6300ESB())
    if watchdog is not None and watchdog.i6300esb is not None and watchdog.i6300esb.action is None:
        watchdog = attrs.evolve(watchdog, i6300esb=t.I6300ESB(action=t.WatchdogAction.RESET))
    return attrs.evolve(
        devices,
        disks=tuple(_disk(d) for d in devices.disks + extra),
        inputs=tuple(_input(i) for i in devices.inputs),
        watchdog=watchdog,
    )


def _disk(disk: t.Disk) -> t.Disk:
    if disk.cdrom is not None:
        cdrom = disk.cdrom
        return attrs.evolve(
            disk,
            cdrom=attrs.evolve(
                cdrom,
                bus=cdrom.bus or t.Bus.SATA,
                readonly=_true(cdrom.readonly),
                tray=cdrom.tray or t.Tray.CLOSED,
            ),
        )
    if disk.lun is not None:
        return attrs.evolve(disk, lun=attrs.evolve(disk.lun, bus=disk.lun.bus or t.Bus.SATA))
    target = disk.disk or t.DiskTarget()
    return attrs.evolve(disk, disk=attrs.evolve(target, bus=target.bus or t.Bus.SATA))


def _input(device: t.Input) -> t.Input:
    return attrs.evolve(
        device, type=device.type or t.InputType.TABLET, bus=device.bus or t.InputBus.USB
    )
