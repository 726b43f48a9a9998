"""The `vmid` command: argument parsing and output. The only module that prints.

Global flags (`--root`, `--config`) work before or after the subcommand, as kubectl's do.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cattrs

from vmid.config import Config, Paths, load_config
from vmid.errors import VmidError
from vmid.host import accel
from vmid.manifests import Planned, plan_file
from vmid.plan.model import LaunchPlan

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one vmid command; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except VmidError as exc:
        print(f"vmid: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
    return result


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="vmid", description="Run KubeVirt VirtualMachineInstance manifests on this host."
    )
    _global_flags(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate", parents=[common], help="check manifests as KubeVirt would admit them"
    )
    validate.add_argument("files", nargs="+", metavar="FILE", type=Path)
    validate.set_defaults(run=_validate)

    render = commands.add_parser(
        "render", parents=[common], help="print the QEMU command line vmid would run"
    )
    render.add_argument("file", metavar="FILE", type=Path)
    render.add_argument("-o", "--output", choices=("args", "json"), default="args")
    render.set_defaults(run=_render)
    return parser


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=default,
        metavar="DIR",
        help="keep every vmid path under DIR instead of / (tests, demos)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="daemon configuration (default: ROOT/etc/vmid/vmid.yaml)",
    )


def _setup(args: argparse.Namespace) -> tuple[Config, Paths]:
    paths = Paths(args.root or Path("/"))
    config_file = args.config or paths.config_file
    return load_config(config_file, required=args.config is not None), paths


def _plan_files(
    args: argparse.Namespace, files: list[Path]
) -> Iterator[tuple[Path, list[Planned], list[str]]]:
    config, paths = _setup(args)
    accelerator = accel.resolve(config.accelerator)
    for file in files:
        planned, problems = plan_file(file, config, paths, accelerator)
        yield file, planned, [str(p) for p in problems]


def _validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for file, planned, problems in _plan_files(args, args.files):
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            status = EXIT_INVALID
        elif not planned:
            print(f"{file}: no VirtualMachineInstance in this file", file=sys.stderr)
            status = EXIT_INVALID
        else:
            names = ", ".join(p.manifest.name for p in planned)
            print(f"{file}: valid: {names}")
    return status


def _render(args: argparse.Namespace) -> int:
    ((_, planned, problems),) = _plan_files(args, [args.file])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems or not planned:
        return EXIT_INVALID
    if args.output == "json":
        plans = [plan_as_json(p.plan) for p in planned]
        print(json.dumps(plans[0] if len(plans) == 1 else plans, indent=2))
        return EXIT_OK
    for index, item in enumerate(planned):
        if len(planned) > 1:
            print(("\n" if index else "") + f"# {item.plan.name}")
        print(render_argv(item.plan.argv))
    return EXIT_OK


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
