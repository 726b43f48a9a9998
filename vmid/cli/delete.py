"""`vmid delete vmi NAME... | -f FILE|DIR`: objects taken out of the spool, as kubectl delete,
then (unless --wait=false) waiting until the daemon has stopped and removed them."""

from __future__ import annotations

import argparse
import sys
import time

from vmid.api import names
from vmid.cli import apply, common, spoolfiles
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.errors import DeleteError, Problem
from vmid.host import pidlock, requests
from vmid.paths import Paths
from vmid.runtime.status import STATUS_FILE

#: kubectl's names of the kinds (singular, plural, short).
KINDS = {
    **dict.fromkeys(
        ("vmi", "vmis", "virtualmachineinstance", "virtualmachineinstances"),
        "VirtualMachineInstance",
    ),
    **dict.fromkeys(("vm", "vms", "virtualmachine", "virtualmachines"), "VirtualMachine"),
}
POLL_SECONDS = 0.1

EXAMPLES = """examples:
  vmid delete vmi web                     # power web off (its grace period), wait until gone
  vmid delete vmi web db -n staging       # two VMIs of namespace staging
  vmid delete -f web.yaml                 # the objects a file describes
  vmid delete vmi web --grace-period 5    # 5 s for the guest to power off, then killed
  vmid delete vmi web --force             # killed at once
  vmid delete vmi web --wait=false        # return once its manifest is out of the spool
"""


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    delete = commands.add_parser(
        "delete",
        parents=[flags],
        help="remove VMIs from the spool, wait until gone (kubectl delete)",
        description="Take each object out of the spool: its file is removed or, when the file "
        "holds other objects too, rewritten without it (the others untouched). The daemon "
        "stops the VMI as for any removal (ACPI power-off, killed after the grace period); "
        "vmid delete waits until it is gone.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    delete.add_argument("kind", nargs="?", metavar="TYPE", help="vmi (or vm)")
    delete.add_argument(
        "names", nargs="*", metavar="NAME", help="the names (in the namespace -n names)"
    )
    delete.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE|DIR|-",
        help="delete the objects these manifests describe",
    )
    common.grace_flags(delete, "deletion")
    delete.add_argument(
        "--wait",
        nargs="?",
        const=True,
        default=True,
        type=_boolean,
        metavar="true|false",
        help="wait until each VMI is gone (default true; --wait=false returns at once)",
    )
    delete.set_defaults(run=_delete)


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is neither true nor false")
    return text.lower() == "true"


def _targets(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(kind, key) of every object named."""
    if args.filename:
        if args.kind or args.names:
            raise DeleteError("give either -f FILE or TYPE NAME..., not both")
        return _from_files(args)
    kind = KINDS.get((args.kind or "").lower())
    if kind is None or not args.names:
        raise DeleteError("say what to delete: vmid delete vmi NAME..., or vmid delete -f FILE")
    namespace = common.namespace_of(args)
    return [(kind, names.key(namespace, name)) for name in args.names]


def _from_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    found = []
    for shown, data in apply.inputs(args.filename):
        if isinstance(data, Problem):
            raise DeleteError(str(data))
        pieces = spoolfiles.split(data.decode(errors="replace"), args.namespace)
        if not pieces:
            raise DeleteError(f"{shown}: no object with a name in this file")
        found += [(p.kind, p.key) for p in pieces]
    return found


def _delete(args: argparse.Namespace) -> int:
    _, paths = common.setup(args)
    status, deleted = EXIT_OK, []
    for kind, key in _targets(args):
        located = spoolfiles.index(paths.spool).get((kind, key))
        namespace, name = names.split(key)
        if located is None:
            what = f"{kind.lower()} {name!r} not found in namespace {namespace!r}"
            print(f"vmid: {what}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        _remove(paths, located, common.grace_of(args))
        print(f'{kind.lower()} "{name}" deleted', flush=True)
        deleted.append(key)
    if args.wait and deleted:
        _wait_gone(paths, deleted)
    return status


def _remove(paths: Paths, located: spoolfiles.Located, grace: int | None) -> None:
    """Out of the spool; the grace period asked for first, where the daemon looks for it."""
    key = located.piece.key
    if grace is not None:
        requests.submit(paths.requests, requests.DELETE, key, grace)
    try:
        spoolfiles.remove(located)
    except BaseException:
        requests.withdraw(paths.requests, requests.DELETE, key)
        raise
    if located.pieces != (located.piece,):
        print(f"vmid: {located.file} rewritten without {located.piece.resource}", file=sys.stderr)


def _wait_gone(paths: Paths, keys: list[str]) -> None:
    """Until the daemon has removed every VMI of `keys` (at once when no daemon runs)."""
    if not pidlock.running(paths.daemon_pid):
        print("vmid: the daemon is not running: nothing stops yet", file=sys.stderr)
        return
    left = [paths.instance_runtime(k) / STATUS_FILE for k in keys]
    while left := [p for p in left if p.exists()]:
        if not pidlock.running(paths.daemon_pid):
            print("vmid: the daemon stopped before every VMI was gone", file=sys.stderr)
            return
        time.sleep(POLL_SECONDS)
