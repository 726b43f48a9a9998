"""What the verbs share: exit codes, the root's paths and config, the namespace asked for, and
the VMI object a verb names (or why there is none)."""

from __future__ import annotations

import argparse
import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from vmid import cli
from vmid.api import names
from vmid.api.vmistatus import Phase, QemuStatus, VMIObject, VMIStatus
from vmid.cli import show, spoolfiles
from vmid.errors import ControlError
from vmid.paths import Paths
from vmid.runtime import status

if TYPE_CHECKING:
    from vmid.config import Config

#: The subcommands' parser: each verb's module registers its own (`register`).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: The exit codes (vmid/cli/__init__.py says which is which), for the verbs.
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = cli.EXIT_OK, cli.EXIT_ERROR, cli.EXIT_INTERRUPTED


@functools.cache  # one parser for every verb meaning the same flags
def flags_for(flags: argparse.ArgumentParser, *meaningful: str) -> argparse.ArgumentParser:
    """The global flags (`--root`, `--config`, `-n`) for a verb that means something by those
    `meaningful` (by dest: root, config, namespace): its help shows only them; it accepts the
    others all the same (ignored), as kubectl accepts its global flags after any verb."""
    parent = argparse.ArgumentParser(add_help=False)
    for action in flags._actions:
        if action.dest not in meaningful:
            action = copy.copy(action)
            action.help = argparse.SUPPRESS
        parent._add_action(action)
    return parent


def setup(args: argparse.Namespace) -> tuple[Config, Paths]:
    """vmid.yaml and the root's paths, for the verbs that plan or pull (imported here: the
    config's loader brings the whole API, which the reading verbs do without)."""
    from vmid.config import load_config

    paths = Paths(args.root or Path("/"))
    config_file = args.config or paths.config_file
    return load_config(config_file, required=args.config is not None), paths


def namespace_of(args: argparse.Namespace) -> str:
    return getattr(args, "namespace", None) or names.DEFAULT_NAMESPACE


def _in_scope(args: argparse.Namespace, obj: VMIObject) -> bool:
    """Whether `obj` is in the namespace asked for (-n), or any (-A). A spool file's row (no
    name, so no namespace vmid can trust) is in every one."""
    asked = None if getattr(args, "all_namespaces", False) else namespace_of(args)
    nameless = not obj.metadata.name
    return asked is None or nameless or names.split(obj.key)[0] == asked


def not_found(args: argparse.Namespace) -> str:
    return f"virtualmachineinstance {args.name!r} not found in namespace {namespace_of(args)!r}"


def find(args: argparse.Namespace, paths: Paths) -> VMIObject | None:
    """The object of VMI `args.name` in namespace `args.namespace`, if it exists."""
    key = names.key(namespace_of(args), args.name)
    return next((o for o in status.read_objects(paths) if o.key == key), None)


def wanted(args: argparse.Namespace, obj: VMIObject) -> bool:
    return _in_scope(args, obj) and args.name in (None, show.name(obj))


def running(args: argparse.Namespace) -> tuple[Path, QemuStatus, VMIStatus]:
    """The qmp.sock, QEMU and status of a Running VMI, or ControlError saying why not."""
    paths = Paths(args.root or Path("/"))
    obj = find(args, paths)
    if obj is None:
        raise ControlError(not_found(args))
    st, qemu = obj.status, obj.status.qemu
    if st.phase is not Phase.RUNNING or qemu is None or not qemu.qmpSocket:
        raise ControlError(f"VMI {args.name} is not running (phase {st.phase})")
    return Path(qemu.qmpSocket), qemu, st


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def names_a_vm(args: argparse.Namespace, paths: Paths) -> bool:
    """Whether NAME (in the namespace asked for) is a VirtualMachine in the spool: a verb both
    kinds have (`vmid restart`) then means the VM, which owns the VMI of its name."""
    key = names.key(namespace_of(args), args.name)
    return ("VirtualMachine", key) in spoolfiles.index(paths.spool)


def grace_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--grace-period N and --force, as kubectl's."""
    parser.add_argument(
        "--grace-period",
        type=_seconds,
        metavar="N",
        help=f"seconds the guest has to power off before QEMU is killed, for this {what} "
        "only (default: the VMI's terminationGracePeriodSeconds); 0 kills at once",
    )
    parser.add_argument(
        "--force", action="store_true", help="kill QEMU at once (the same as --grace-period 0)"
    )


def grace_of(args: argparse.Namespace) -> int | None:
    return 0 if args.force else args.grace_period


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def explain(parser: argparse.ArgumentParser, description: str, examples: str) -> None:
    """A verb's `--help`: what it does, and an Examples section as kubectl's (one per line,
    `COMMAND  # what it does`); a NAME argument without help says it is the VMI's name."""
    parser.description = description
    parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.splitlines())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if action.dest == "name" and not action.option_strings and action.help is None:
            action.help = "the VMI's name (in the namespace -n names)"
