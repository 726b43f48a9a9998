"""`vmid restart NAME`: a VMI (Running, or ended: Failed, Succeeded) stopped gracefully and
started again from its manifest, by the daemon (asked through vmid/host/requests.py)."""

from __future__ import annotations

import argparse
import time

from vmid.cli import common, vm
from vmid.cli.common import EXIT_OK, Commands
from vmid.errors import ControlError
from vmid.host import pidlock, requests
from vmid.paths import Paths

#: How long the daemon has to take the request (it does within milliseconds: inotify).
TAKE_SECONDS = 10.0
POLL_SECONDS = 0.05

EXAMPLES = """examples:
  vmid restart web                   # power off (ACPI, its grace period), then start again
  vmid restart web --grace-period 5  # 5 s for the guest to power off, then killed
  vmid restart web --force           # killed at once, then started again
"""


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    restart = commands.add_parser(
        "restart",
        parents=[flags],
        help="stop a VMI gracefully and start it again (virtctl restart)",
        description="Stop VMI NAME (Running, or Failed/Succeeded) gracefully and start it "
        "again from its manifest: a new incarnation with the same firmware UUID, uid and "
        "addresses. Returns once the daemon has taken the request.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restart.add_argument("name", metavar="NAME", help="the VMI's name (in the namespace -n names)")
    common.grace_flags(restart, "restart")
    restart.set_defaults(run=_restart)


def _restart(args: argparse.Namespace) -> int:
    _, paths = common.setup(args)
    if common.names_a_vm(args, paths):  # the VM, which owns the VMI of its name
        args.action = "restart"
        return vm.request(args)
    obj = common.find(args, paths)
    if obj is None:
        raise ControlError(common.not_found(args))
    if obj.terminating:
        raise ControlError(f"VMI {args.name} is being stopped already")
    synchronized = obj.status.condition("Synchronized")
    if synchronized is not None and synchronized.status == "False":
        raise ControlError(
            f"VMI {args.name} cannot restart: its manifest is refused: {synchronized.message}"
        )
    if not pidlock.running(paths.daemon_pid):
        raise ControlError("the daemon is not running: nothing can restart the VMI")
    _ask(paths, obj.key, common.grace_of(args))
    print(f"VMI {args.name} was scheduled to restart")
    return EXIT_OK


def _ask(paths: Paths, key: str, grace: int | None) -> None:
    """Hand the daemon the request and wait until it has taken it."""
    request = requests.submit(paths.requests, requests.RESTART, key, grace)
    deadline = time.monotonic() + TAKE_SECONDS
    while request.exists():
        if time.monotonic() > deadline:
            requests.withdraw(paths.requests, requests.RESTART, key)
            raise ControlError(f"the daemon did not take the request in {TAKE_SECONDS:g} s")
        time.sleep(POLL_SECONDS)
