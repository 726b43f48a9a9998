"""The verbs that act on a running VMI through QMP and return: qmp, pause, unpause, reset and
soft-reboot, with KubeVirt's refusals."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vmid import control
from vmid.api import names
from vmid.api.vmistatus import QemuStatus, VMIStatus
from vmid.cli import agent, common, vm
from vmid.cli.common import EXIT_OK, Commands
from vmid.errors import AgentRequestError, ControlError
from vmid.paths import Paths


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    qmp = commands.add_parser(
        "qmp",
        parents=[flags],
        help="run a QMP command on a VMI's qmp.sock",
        description="Run one QMP command on VMI NAME's qmp.sock and print its answer as JSON; "
        "or, with --hmp, one human monitor command, printed as text.",
        epilog="examples:\n  vmid qmp web query-status\n"
        '  vmid qmp web query-block\n  vmid qmp web human-monitor-command \'{"command-line": '
        "\"info mtree\"}'\n  vmid qmp web --hmp 'info block'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qmp.add_argument("name", metavar="NAME", help="the VMI's name (in the namespace -n names)")
    qmp.add_argument("command", nargs="?", metavar="COMMAND", help="a QMP command")
    qmp.add_argument(
        "arguments", nargs="?", metavar="JSON-ARGS", type=_json_object, help="its arguments"
    )
    qmp.add_argument("--hmp", metavar="COMMAND-LINE", help="a human monitor command instead")
    qmp.set_defaults(run=_qmp)
    for action, text in (
        ("pause", "pause a running VMI"),
        ("unpause", "resume a paused VMI"),
        ("reset", "hard-reset a VMI, as the reset button does"),
        ("soft-reboot", "reboot the guest cleanly (its guest agent, else the ACPI power button)"),
    ):
        parser_ = commands.add_parser(action, parents=[flags], help=text)
        kinds = action in ("pause", "unpause")  # virtctl's pause|unpause vm|vmi NAME
        parser_.add_argument("name", metavar="[vm|vmi] NAME" if kinds else "NAME")
        if kinds:
            parser_.add_argument("kind_name", nargs="?", help=argparse.SUPPRESS)
        parser_.set_defaults(run=_lifecycle, action=action)
        common.explain(
            parser_,
            f"{text[0].upper()}{text[1:]}, as virtctl {action}"
            + (": `vm NAME` is the VirtualMachine's VMI." if kinds else "."),
            f"vmid {action} web" + (f"\nvmid {action} vm web" if kinds else ""),
        )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("the arguments must be a JSON object")
    return value


def _qmp(args: argparse.Namespace) -> int:
    if (args.command is None) == (args.hmp is None):
        raise ControlError("give either a QMP COMMAND or --hmp COMMAND-LINE")
    qmp_socket, _, _ = common.running(args)
    if args.hmp is not None:
        text = control.execute(qmp_socket, "human-monitor-command", {"command-line": args.hmp})
        # QEMU's monitor ends its lines with CRLF, as for a terminal; a pipe wants LF.
        print(text.replace("\r\n", "\n") if isinstance(text, str) else json.dumps(text), end="")
        return EXIT_OK
    result = control.execute(qmp_socket, args.command, args.arguments)
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _lifecycle(args: argparse.Namespace) -> int:
    if hasattr(args, "kind_name") and vm.kind_of(args, listing=False) == "vm":
        _vm_has_vmi(args)
    qmp_socket, qemu, st = common.running(args)
    paused = st.is_true("Paused")
    # KubeVirt's refusals (pkg/virt-api/rest/lifecycle.go).
    if args.action == "pause" and paused:
        raise ControlError(f"VMI {args.name} is already paused")
    if args.action == "unpause" and not paused:
        raise ControlError(f"VMI {args.name} is not paused")
    if args.action == "soft-reboot":
        _soft_reboot(args.name, qmp_socket, qemu, st, paused)
    else:
        command = {"pause": "stop", "unpause": "cont", "reset": "system_reset"}[args.action]
        control.execute(qmp_socket, command)
    print(f"VMI {args.name} was scheduled to {args.action}")
    return EXIT_OK


def _vm_has_vmi(args: argparse.Namespace) -> None:
    """`pause|unpause vm NAME`: the VM must exist and have its VMI, else virtctl's refusals
    (pkg/virtctl/pause/pause.go handleNotFoundError)."""
    paths = Paths(args.root or Path("/"))
    found = vm.find(paths, names.key(common.namespace_of(args), args.name))
    if found is None:
        raise ControlError(vm.not_found(args))
    if common.find(args, paths) is not None:
        return
    what = f"Error {args.action[:-1]}ing VirtualMachineInstance {args.name}"
    if found["status"]["runStrategy"] == "Halted":
        raise ControlError(f"{what}. VirtualMachine {args.name} is not set to run")
    raise ControlError(f"{what}, it was not found")


SOFT_REBOOT_TIMEOUT = 120.0


def _soft_reboot(
    name: str, qmp_socket: Path, qemu: QemuStatus, st: VMIStatus, paused: bool
) -> None:
    # KubeVirt's refusals and choice (pkg/virt-launcher/virtwrap/manager.go SoftRebootVMI):
    # the guest agent when it is connected, else the ACPI power button.
    if paused:
        raise ControlError(f"VMI {name} is paused")
    if agent.agent_connected(st):
        try:
            agent.request(qemu, "soft-reboot")
            return
        except AgentRequestError as exc:
            # Its agent went (the status was older) or hangs: libvirt's agent-unresponsive
            # error, which KubeVirt ignores (nothing reboots); the power button still works.
            if not qemu.acpi:
                raise
            print(f"vmid: the guest agent failed ({exc}): the ACPI power button", file=sys.stderr)
    if not qemu.acpi:
        raise ControlError(
            f"VMI {name} neither have the agent connected nor the ACPI feature enabled"
        )
    control.soft_reboot(qmp_socket, SOFT_REBOOT_TIMEOUT)
