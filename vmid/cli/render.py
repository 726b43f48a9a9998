"""`vmid validate` and `vmid render`: manifest files checked and planned as the daemon would,
without a daemon (render prints the QEMU command line)."""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmid.cli import apply, common
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands

# The planner (and the API below it) is imported by the functions that plan: every other verb
# registers its parser beside these two without paying for it.
if TYPE_CHECKING:
    from vmid.config import Accelerator, Config, Paths
    from vmid.manifests import Planned
    from vmid.plan.model import LaunchPlan


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "config")  # a manifest names its own namespace
    validate = commands.add_parser(
        "validate",
        parents=[flags],
        help="check manifests as KubeVirt would admit them",
        description="Check every document of every FILE as the daemon would (KubeVirt's "
        "schema, defaults and admission rules, then vmid's plan on this host's vmid.yaml) and "
        "print every problem as FILE:LINE:COL: FIELD: message. Exit 1 if any is invalid.",
        epilog="examples:\n  vmid validate web.yaml\n  vmid validate manifests/\n"
        "  kubectl get vmi web -o yaml | vmid validate -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument(
        "files",
        nargs="+",
        metavar="FILE|DIR|-",
        help="a manifest, a directory of them (.yaml, .yml, .json) or - for standard input",
    )
    validate.set_defaults(run=_validate)

    render = commands.add_parser(
        "render",
        parents=[flags],
        help="print the QEMU command line vmid would run",
        description="Print the QEMU command line vmid would run for each VMI of FILE. fd=N and "
        "/dev/fdset/N stand for the files and sockets the daemon passes as fds: a running VMI's "
        "real command line is its status.qemu.argv (vmid get NAME -o yaml).",
    )
    render.add_argument("file", metavar="FILE", type=Path, help="a manifest")
    render.add_argument(
        "-o",
        "--output",
        choices=("args", "json"),
        default="args",
        help="args: the command line, one option per line; json: the whole plan",
    )
    render.epilog = "examples:\n  vmid render web.yaml\n  vmid render web.yaml -o json"
    render.formatter_class = argparse.RawDescriptionHelpFormatter
    render.set_defaults(run=_render)


def _plan_files(
    args: argparse.Namespace, files: list[Path]
) -> Iterator[tuple[Path, list[Planned], list[str]]]:
    from vmid.host import accel
    from vmid.manifests import plan_file

    config, paths = common.setup(args)
    accelerator = accel.resolve(config.accelerator)
    for file in files:
        planned, problems = plan_file(file, config, paths, accelerator)
        yield file, planned, [str(p) for p in problems]


def _validate(args: argparse.Namespace) -> int:
    from vmid.host import accel
    from vmid.manifests import plan_data

    config, paths = common.setup(args)
    accelerator = accel.resolve(config.accelerator)
    status = EXIT_OK
    for file, data in apply.inputs(args.files):
        entries = plan_data(file, data, config, paths, accelerator)
        planned = [e.planned for e in entries if e.planned is not None]
        problems = [p for e in entries for p in e.problems]
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            status = EXIT_ERROR
        elif not planned:
            print(f"{file}: no VirtualMachineInstance in this file", file=sys.stderr)
            status = EXIT_ERROR
        else:
            names = ", ".join(p.manifest.name for p in planned)
            print(f"{file}: valid: {names}")
    return status


def _render(args: argparse.Namespace) -> int:
    ((_, planned, problems),) = _plan_files(args, [args.file])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems or not planned:
        return EXIT_ERROR
    from vmid.host import accel

    config, paths = common.setup(args)
    accelerator = accel.resolve(config.accelerator)
    plans = [_as_the_daemon_plans(item, config, paths, accelerator) for item in planned]
    if args.output == "json":
        data = [plan_as_json(p) for p in plans]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return EXIT_OK
    for index, plan in enumerate(plans):
        if len(plans) > 1:
            print(("\n" if index else "") + f"# {plan.name}")
        print(render_argv(plan.argv))
    return EXIT_OK


def _as_the_daemon_plans(
    item: Planned, config: Config, paths: Paths, accelerator: Accelerator
) -> LaunchPlan:
    """The plan with the firmware UUID the daemon uses for this VMI under `paths`, or said to be
    a placeholder when the daemon has not chosen one yet."""
    from vmid.host import firmwareid
    from vmid.plan.build import build

    vmi = item.manifest.vmi
    if item.manifest.vm is not None or not firmwareid.generated(vmi):
        return item.plan  # a VM's VMIs have its name-derived UUID, whatever the daemon does
    value = firmwareid.stored(paths.instance_state(item.manifest.key))
    if value is None:
        print(
            f"vmid: {item.manifest.key}: -uuid {item.plan.uuid} is a placeholder: the daemon "
            "gives the VMI a random firmware UUID when it first starts and keeps it until the "
            "VMI is removed (set spec.domain.firmware.uuid to choose one)",
            file=sys.stderr,
        )
        return item.plan
    plan, _ = build(firmwareid.with_uuid(vmi, value), config, paths, accelerator)
    assert plan is not None  # the same VMI but its UUID planned already
    return plan


def render_argv(argv: Sequence[str]) -> str:
    """One option per line with its value, shell-quoted, joined by backslash-newlines."""
    lines: list[str] = []
    for arg in argv:
        if lines and not arg.startswith("-") and _is_flag_only(lines[-1]):
            lines[-1] += " " + shlex.quote(arg)
        else:
            lines.append(shlex.quote(arg))
    return " \\\n    ".join(lines)


def _is_flag_only(line: str) -> bool:
    return line.startswith("-") and " " not in line


def plan_as_json(plan: LaunchPlan) -> Any:
    """The plan as JSON-ready data; file contents as text, or base64 when they are binary."""
    import cattrs

    converter = cattrs.Converter()
    converter.register_unstructure_hook(bytes, _bytes_text)
    data = converter.unstructure(plan)
    data["prepare"] = [{"kind": type(p).__name__, **converter.unstructure(p)} for p in plan.prepare]
    return data


def _bytes_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()
