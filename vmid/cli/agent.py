"""virtctl's guest agent verbs: `vmid guestosinfo|userlist|fslist NAME`, and the agent's part
of `vmid soft-reboot` (vmid/cli/lifecycle.py).

The daemon holds the VM's agent channel (QEMU serves it to one client), so these ask the
daemon, on the VMI's `agent.sock` (root's alone), one request per connection; the answers are
KubeVirt's shapes, from what its poller last heard, as KubeVirt's subresources answer.
"""

from __future__ import annotations

import argparse
import json
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


def _agent_verb(args: argparse.Namespace) -> int:
    _, qemu, _ = common.running(args)
    print(json.dumps(request(qemu, args.verb), indent=2))
    return EXIT_OK


def agent_socket(qemu: QemuStatus) -> Path:
    """The VMI's agent.sock: in its runtime directory, above QEMU's (which holds qmp.sock)."""
    return Path(qemu.qmpSocket or "").parent.parent / "agent.sock"


def agent_connected(status: VMIStatus) -> bool:
    return status.is_true("AgentConnected")


def request(qemu: QemuStatus, verb: str) -> Any:
    """Ask the daemon `verb` about the VMI whose QEMU is `qemu`; its answer."""
    path = agent_socket(qemu)
    try:
        with unixsock.connect(path) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendall(json.dumps({"execute": verb}).encode() + b"\n")
            reply = json.loads(_read_line(sock))
    except TimeoutError:
        raise AgentRequestError(f"the daemon did not answer within {TIMEOUT:g} s") from None
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
