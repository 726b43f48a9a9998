"""The plan's entry point: a defaulted VMI and the host configuration -> a LaunchPlan value."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from vmid.api import types as t
from vmid.api.findings import Finding
from vmid.config import Accelerator, Config, Paths
from vmid.plan import devices, pci, resources
from vmid.plan.context import Context
from vmid.plan.disks import plan_disks
from vmid.plan.model import (
    CONTROL_CHARDEV,
    CONTROL_FD,
    TAP_FD_BASE,
    Access,
    EfiVars,
    LaunchPlan,
    PassedFile,
    Prepared,
    Sockets,
    add_fd,
    control_chardev,
)
from vmid.plan.nics import plan_nics, port_findings
from vmid.plan.qemu import Value, blockdev, options

DEFAULT_GRACE_SECONDS = 30  # KubeVirt's DefaultGracePeriodSeconds
MIB = 2**20
QMP_SOCKET = "qmp.sock"
CONTROL_SOCKET = "control.sock"
SMBIOS_ANNOTATION = "smbios.vm.kubevirt.io/"
_HYPERV = {
    "relaxed": "hv-relaxed",
    "vapic": "hv-vapic",
    "vpindex": "hv-vpindex",
    "runtime": "hv-runtime",
    "synic": "hv-synic",
    "reset": "hv-reset",
    "frequencies": "hv-frequencies",
    "reenlightenment": "hv-reenlightenment",
    "tlbflush": "hv-tlbflush",
    "ipi": "hv-ipi",
    "evmcs": "hv-evmcs",
}
_POLICY_ON = (t.FeaturePolicy.FORCE, t.FeaturePolicy.REQUIRE, t.FeaturePolicy.OPTIONAL)
_BASEBOARD = {
    "baseBoardManufacturer": "manufacturer",
    "baseBoardProduct": "product",
    "baseBoardVersion": "version",
    "baseBoardSerial": "serial",
    "baseBoardAsset": "asset",
}


def build(
    vmi: t.VirtualMachineInstance, config: Config, paths: Paths, accelerator: Accelerator
) -> tuple[LaunchPlan | None, list[Finding]]:
    """Plan one VMI; findings are the problems validation cannot see (hostDisk roots, slots).

    `vmi` must be defaulted and valid (`vmid.api.load`); `accelerator` must be kvm or tcg.
    """
    assert accelerator is not Accelerator.AUTO, "resolve the accelerator before planning"
    ctx = Context(vmi, config, paths, accelerator)
    disk_args, prepare, findings = plan_disks(ctx)
    findings += port_findings(ctx)
    if findings:
        return None, findings
    nic_args, taps = plan_nics(ctx)
    efi_args, efi_prepare = _efi(ctx)
    console_log = posixpath.join(ctx.log_dir, "console.log")
    device_args = [
        *devices.usb_controller(ctx),
        *disk_args,
        *nic_args,
        *devices.console(ctx, console_log),
        *devices.graphics(ctx),
        *devices.guest_agent(),
        *devices.misc(ctx),
    ]
    files = ctx.files.numbered(TAP_FD_BASE + len(taps))
    argv = [
        config.qemu,
        *_machine(ctx),
        *_process(ctx),
        *_monitors(),
        *_add_fds(files),
        *efi_args,
        *device_args,
    ]
    findings = pci.check_fit(argv)
    if findings:
        return None, findings
    plan = LaunchPlan(
        name=ctx.key,
        uuid=vmi.spec.domain.firmware_uuid(),
        argv=tuple(argv),
        cwd=posixpath.join(ctx.runtime_dir, QEMU_DIR),
        env=_environment(vmi),
        consoleLog=console_log,
        qemuLog=posixpath.join(ctx.log_dir, "qemu.log"),
        sockets=_sockets(ctx),
        prepare=(*efi_prepare, *prepare),
        taps=tuple(taps),
        files=files,
        gracePeriodSeconds=_grace(vmi),
        acpi=_acpi(vmi),
        startPaused=vmi.spec.startStrategy is t.StartStrategy.PAUSED,
        readinessProbe=vmi.spec.readinessProbe,
        livenessProbe=vmi.spec.livenessProbe,
        cgroup=resources.cgroup(vmi, ctx.vcpus),
    )
    return plan, []


def _grace(vmi: t.VirtualMachineInstance) -> int:
    grace = vmi.spec.terminationGracePeriodSeconds
    return DEFAULT_GRACE_SECONDS if grace is None else grace


def _acpi(vmi: t.VirtualMachineInstance) -> bool:
    features = vmi.spec.domain.features
    return not (features and features.acpi and features.acpi.enabled is False)


#: QEMU's working directory inside the VM's runtime directory, where its sockets live: it is
#: the VM's own uid's, while the directory above (status files, the control socket, passed to
#: QEMU by fd) stays root's.
QEMU_DIR = "qemu"


def _sockets(ctx: Context) -> Sockets:
    def path(name: str) -> str:
        return posixpath.join(ctx.runtime_dir, QEMU_DIR, name)

    devs = ctx.vmi.spec.domain.devices
    return Sockets(
        control=posixpath.join(ctx.runtime_dir, CONTROL_SOCKET),
        qmp=path(QMP_SOCKET),
        console=None if devs.autoattachSerialConsole is False else path(devices.CONSOLE_SOCKET),
        vnc=None if devs.autoattachGraphicsDevice is False else path(devices.VNC_SOCKET),
        guestAgent=path(devices.AGENT_SOCKET),
    )


def _machine(ctx: Context) -> Iterator[str]:
    domain = ctx.vmi.spec.domain
    features = domain.features or t.Features()
    bootloader = domain.firmware.bootloader if domain.firmware else None
    timer = domain.clock.timer if domain.clock else None
    machine: dict[str, Value] = {
        "smm": bool(features.smm and features.smm.enabled),
        "acpi": None if _acpi(ctx.vmi) else False,
        "hpet": False if timer and timer.hpet and timer.hpet.present is False else None,
        "graphics": False if bootloader and bootloader.bios and bootloader.bios.useSerial else None,
    }
    if bootloader and bootloader.efi:
        machine.update({"pflash0": "pflash0", "pflash1": "pflash1"})
    assert domain.machine is not None
    assert domain.machine.type is not None
    yield from ("-machine", options(domain.machine.type, machine))
    yield from ("-accel", ctx.accelerator.value)
    yield from ("-cpu", _cpu_model(ctx))
    cpu = domain.cpu or t.CPU()
    topology = {"sockets": cpu.sockets or 1, "cores": cpu.cores or 1, "threads": cpu.threads or 1}
    yield from ("-smp", options(str(ctx.vcpus), topology))
    assert domain.memory is not None
    assert domain.memory.guest is not None
    yield from ("-m", str(-(-domain.memory.guest.value() // MIB)))  # bytes rounded up to MiB


def _cpu_model(ctx: Context) -> str:
    domain = ctx.vmi.spec.domain
    cpu = domain.cpu or t.CPU()
    model = cpu.model or "host-model"
    if model in ("host-model", "host-passthrough"):
        model = "host" if ctx.accelerator is Accelerator.KVM else "max"
    flags: dict[str, Value] = {f.name: f.policy in _POLICY_ON for f in cpu.features}
    features = domain.features or t.Features()
    if features.kvm and features.kvm.hidden:
        flags["kvm"] = False
    if features.pvspinlock and features.pvspinlock.enabled is False:
        flags["kvm-pv-unhalt"] = False
    flags.update(_hyperv_flags(ctx, features))
    if any(p.model is t.PanicModel.HYPERV for p in domain.devices.panicDevices):
        flags["hv-crash"] = True
    return _cpu_option(model, flags)


def _cpu_option(model: str, flags: dict[str, Value]) -> str:
    """-cpu's text. QEMU splits it on every comma (`,,` is no escape there) and ends a name at
    its first '=': validation keeps both out of names, and commas out of values; this checks."""
    assert not any(c in model for c in ",="), model
    assert not any(c in name for name in flags for c in ",="), flags
    assert not any("," in v for v in flags.values() if isinstance(v, str)), flags
    return options(model, flags)


def _hyperv_flags(ctx: Context, features: t.Features) -> dict[str, Value]:
    flags: dict[str, Value] = {}
    if features.hypervPassthrough and features.hypervPassthrough.enabled:
        flags["hv-passthrough"] = True
    hyperv = features.hyperv
    if hyperv is None:
        return flags
    for field, flag in _HYPERV.items():
        state = getattr(hyperv, field)
        if state is not None and state.enabled is not None:
            flags[flag] = state.enabled
    if hyperv.synictimer is not None and hyperv.synictimer.enabled is not None:
        flags["hv-stimer"] = hyperv.synictimer.enabled
        direct = hyperv.synictimer.direct
        if direct is not None and direct.enabled is not None:
            flags["hv-stimer-direct"] = direct.enabled
    if hyperv.spinlocks is not None and hyperv.spinlocks.enabled:
        flags["hv-spinlocks"] = hex(hyperv.spinlocks.spinlocks or 4096)
    if hyperv.vendorid is not None and hyperv.vendorid.enabled and hyperv.vendorid.vendorid:
        flags["hv-vendor-id"] = hyperv.vendorid.vendorid
    if ctx.accelerator is Accelerator.TCG:
        # TCG cannot provide the VP index ("kernel doesn't allow setting HyperV VP_INDEX");
        # the other enlightenments are accepted and harmless under emulation.
        flags.pop("hv-vpindex", None)
    return flags


def _process(ctx: Context) -> Iterator[str]:
    vmi, config = ctx.vmi, ctx.config
    yield from ("-name", options(None, {"guest": ctx.key, "debug-threads": True}))
    yield from ("-uuid", vmi.spec.domain.firmware_uuid())
    yield from _smbios(vmi)
    yield from ("-nodefaults", "-no-user-config", "-display", "none")
    # Always start paused: vmid sets link states and such over QMP, then sends `cont`.
    yield "-S"
    yield from ("-msg", "timestamp=on")
    if config.sandbox:
        yield "-sandbox"
        yield options(
            "on",
            {
                "obsolete": "deny",
                "elevateprivileges": "deny",
                "spawn": "deny",
                "resourcecontrol": "deny",
            },
        )
    if vmi.spec.domain.rebootPolicy is t.RebootPolicy.TERMINATE:
        yield "-no-reboot"
    yield from _rtc(vmi.spec.domain.clock)
    if vmi.spec.startStrategy is t.StartStrategy.PAUSED:
        yield from ("-boot", options(None, {"menu": True, "splash-time": 10000}))


def _smbios(vmi: t.VirtualMachineInstance) -> Iterator[str]:
    firmware = vmi.spec.domain.firmware or t.Firmware()
    system = {
        "manufacturer": "KubeVirt",
        "product": "None",
        "family": "KubeVirt",
        "uuid": firmware.uuid,
        "serial": firmware.serial,
    }
    yield from ("-smbios", options(None, {"type": 1, **system}))
    board: dict[str, Value] = {}
    for key, value in vmi.metadata.annotations.items():
        field = _BASEBOARD.get(key.removeprefix(SMBIOS_ANNOTATION))
        if key.startswith(SMBIOS_ANNOTATION) and field:
            board[field] = value
    if board:
        yield from ("-smbios", options(None, {"type": 2, **board}))


def _rtc(clock: t.Clock | None) -> Iterator[str]:
    if clock is None:
        return
    rtc = clock.timer.rtc if clock.timer else None
    slew = rtc is not None and rtc.tickPolicy is t.TickPolicy.CATCHUP
    base = "localtime" if clock.timezone else "utc"
    yield from ("-rtc", options(None, {"base": base, "driftfix": "slew" if slew else None}))


def _environment(vmi: t.VirtualMachineInstance) -> dict[str, str]:
    clock = vmi.spec.domain.clock
    # QEMU's base=localtime follows its own TZ, so a zone name needs no offset arithmetic.
    return {"TZ": clock.timezone} if clock and clock.timezone else {}


def _monitors() -> Iterator[str]:
    yield from ("-chardev", control_chardev(CONTROL_FD))
    yield from ("-mon", options(None, {"chardev": CONTROL_CHARDEV, "mode": "control"}))
    yield "-chardev"
    yield options("socket", {"id": "qmp", "path": QMP_SOCKET, "server": True, "wait": False})
    yield from ("-mon", options(None, {"chardev": "qmp", "mode": "control"}))


def _add_fds(files: tuple[PassedFile, ...]) -> Iterator[str]:
    for file in files:
        yield from ("-add-fd", add_fd(file.fd, file.fdset, file.path))


def _efi(ctx: Context) -> tuple[list[str], list[Prepared]]:
    firmware = ctx.vmi.spec.domain.firmware
    efi = firmware.bootloader.efi if firmware and firmware.bootloader else None
    if efi is None:
        return [], []
    fw = ctx.config.firmware
    code, template = (
        (fw.efiSecureCode, fw.efiSecureVars) if efi.secureBoot else (fw.efiCode, fw.efiVars)
    )
    variables = posixpath.join(ctx.state_dir, "efivars.fd")
    code_file = ctx.files.add(code, Access.READ)  # vmid.yaml's firmware: the admin's path
    variables_file = ctx.files.add(variables, Access.WRITE, ctx.state_dir)
    args = [
        "-blockdev",
        blockdev(
            {"driver": "file", "node-name": "pflash0", "filename": code_file, "read-only": True}
        ),
        "-blockdev",
        blockdev({"driver": "file", "node-name": "pflash1", "filename": variables_file}),
    ]
    if efi.secureBoot:
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return args, [EfiVars(path=variables, template=template)]
