"""virtctl's guest agent verbs: `vmid guestosinfo|userlist|fslist NAME`, KubeVirt's freeze and
unfreeze subresources (`vmid freeze|unfreeze NAME`), and the agent's part of `vmid soft-reboot`
(vmid/cli/lifecycle.py).

The daemon holds the VM's agent channel (QEMU serves it to one client), so these ask the
daemon, on the VMI's `agent.sock` (root's alone), one request per connection; the answers are
KubeVirt's shapes, from what its poller last heard, as KubeVirt's subresources answer.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
from pathlib import Path
from typing import Any

from vmid.api.vmistatus import QemuStatus, VMIStatus
from vmid.cli import common
from vmid.cli.common import EXIT_OK, Commands
from vmid.errors import AgentRequestError
from vmid.host import unixsock

#: guest-shutdown is sent within 10 s by the daemon; reading the info is instant.
TIMEOUT = 15.0
#: A freeze: the daemon's guest-fsfreeze-status (5 s), -freeze (60 s: the guest flushes its
#: file systems first), and the thaw of a freeze that failed (10 s).
FREEZE_TIMEOUT = 90.0
#: One term of a Go duration (KubeVirt's unfreezeTimeout is a metav1.Duration): 1h30m, 90s, 0.5h.
_DURATION_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
#: An answer is a few KiB (the poller's view); far more is not the daemon's.
MAX_ANSWER_BYTES = 16 << 20
#: The verbs, with their help, as the parser lists them.
VERBS = (
    ("guestosinfo", "the guest agent's view of the guest: OS, host name, time zone, users, disks"),
    ("userlist", "the users logged in to the guest, from its guest agent"),
    ("fslist", "the guest's file systems, from its guest agent"),
)


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    for verb, text in VERBS:
        parser_ = commands.add_parser(verb, parents=[flags], help=text)
        parser_.add_argument("name", metavar="NAME")
        parser_.set_defaults(run=_agent_verb, verb=verb)
        common.explain(
            parser_,
            f"{text[0].upper()}{text[1:]}, as virtctl {verb} prints it (JSON): what the guest "
            "agent last reported, through the daemon.",
            f"vmid {verb} web\nvmid {verb} web -n tenant-a",
        )
    _register_freeze(commands, flags)


def _register_freeze(commands: Commands, flags: argparse.ArgumentParser) -> None:
    freeze = commands.add_parser(
        "freeze", parents=[flags], help="freeze the guest's file systems (backups, snapshots)"
    )
    freeze.add_argument("name", metavar="NAME")
    freeze.add_argument(
        "--unfreeze-timeout",
        type=_duration,
        metavar="DURATION",
        help="thaw automatically after this long unless `vmid unfreeze` comes first, as a Go "
        "duration (30s, 5m, 1h); 0 never does (default: 5m, KubeVirt's)",
    )
    freeze.set_defaults(run=_freeze)
    common.explain(
        freeze,
        "Freeze the guest's file systems through its guest agent (guest-fsfreeze-freeze), as "
        "KubeVirt's freeze subresource: writes in the guest wait until `vmid unfreeze`, or the "
        "unfreeze timeout, thaws them (the daemon does, even if this command is gone). "
        'status.fsFreezeStatus is "frozen" meanwhile. A VMI already frozen is left as it is.',
        "vmid freeze web\nvmid freeze web --unfreeze-timeout 1m\nvmid unfreeze web",
    )
    unfreeze = commands.add_parser(
        "unfreeze", parents=[flags], help="thaw the guest's file systems after vmid freeze"
    )
    unfreeze.add_argument("name", metavar="NAME")
    unfreeze.set_defaults(run=_unfreeze)
    common.explain(
        unfreeze,
        "Thaw the guest's file systems (guest-fsfreeze-thaw), as KubeVirt's unfreeze "
        "subresource; nothing if they are not frozen.",
        "vmid unfreeze web",
    )


def _duration(text: str) -> int:
    """A Go duration, in whole seconds (KubeVirt's int32 of them); "0" alone needs no unit."""
    terms = _DURATION_TERM.findall(text)
    if text != "0" and "".join(number + unit for number, unit in terms) != text:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 90s, 5m, 1h30m): {text!r}")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in terms)
    if 0 < seconds < 1 or seconds >= 2**31:
        raise argparse.ArgumentTypeError(f"between 1s and 68y, or 0, not {text!r}")
    return int(seconds)


def _freeze(args: argparse.Namespace) -> int:
    _, qemu, _ = common.running(args)
    arguments = {} if args.unfreeze_timeout is None else {"unfreezeTimeout": args.unfreeze_timeout}
    answer = request(qemu, "freeze", arguments, FREEZE_TIMEOUT)
    frozen, timeout = answer.get("frozen"), answer.get("unfreezeTimeout")
    if frozen is None:
        print(f"VMI {args.name} is frozen already (its unfreeze timeout is unchanged)")
        return EXIT_OK
    until = (
        f"thawed automatically in {timeout} s unless unfrozen first"
        if timeout
        else f"until `vmid unfreeze {args.name}`"
    )
    plural = "" if frozen == 1 else "s"
    print(f"VMI {args.name} was frozen ({frozen} file system{plural}), {until}")
    return EXIT_OK


def _unfreeze(args: argparse.Namespace) -> int:
    _, qemu, _ = common.running(args)
    request(qemu, "unfreeze", None, FREEZE_TIMEOUT)
    print(f"VMI {args.name} was unfrozen")
    return EXIT_OK


def _agent_verb(args: argparse.Namespace) -> int:
    _, qemu, _ = common.running(args)
    print(json.dumps(request(qemu, args.verb), indent=2))
    return EXIT_OK


def agent_socket(qemu: QemuStatus) -> Path:
    """The VMI's agent.sock: in its runtime directory, above QEMU's (which holds qmp.sock)."""
    return Path(qemu.qmpSocket or "").parent.parent / "agent.sock"


def agent_connected(status: VMIStatus) -> bool:
    return status.is_true("AgentConnected")


def request(
    qemu: QemuStatus,
    verb: str,
    arguments: dict[str, Any] | None = None,
    timeout: float = TIMEOUT,
) -> Any:
    """Ask the daemon `verb` about the VMI whose QEMU is `qemu`; its answer."""
    path = agent_socket(qemu)
    message: dict[str, Any] = {"execute": verb}
    if arguments:
        message["arguments"] = arguments
    try:
        with unixsock.connect(path) as sock:
            sock.settimeout(timeout)
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = json.loads(_read_line(sock))
    except TimeoutError:
        raise AgentRequestError(f"the daemon did not answer within {timeout:g} s") from None
    except FileNotFoundError:
        raise AgentRequestError(f"{path} is missing: is the VMI's daemon running?") from None
    except (OSError, ValueError) as exc:
        raise AgentRequestError(f"asking the daemon on {path} failed: {exc}") from exc
    if not isinstance(reply, dict) or "error" in reply:
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise AgentRequestError(str(error))
    return reply.get("return")


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while b"\n" not in data:
        if len(data) > MAX_ANSWER_BYTES:
            raise ValueError("the answer is too long")
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data.split(b"\n", 1)[0])
