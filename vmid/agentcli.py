"""virtctl's guest agent verbs: `vmid guestosinfo|userlist|fslist NAME`, and the agent's part
of `vmid soft-reboot`.

The daemon holds the VM's agent channel (QEMU serves it to one client), so these ask the
daemon, on the VMI's `agent.sock` (root's alone), one request per connection; the answers are
KubeVirt's shapes, from what its poller last heard, as KubeVirt's subresources answer.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from vmid.errors import VmidError
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


class AgentRequestError(VmidError):
    """The daemon could not be asked, or the guest agent could not answer."""


def agent_socket(status: dict[str, Any]) -> Path:
    """The VMI's agent.sock: in its runtime directory, above QEMU's (which holds qmp.sock)."""
    return Path(status["qemu"]["qmpSocket"]).parent.parent / "agent.sock"


def agent_connected(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "AgentConnected" and c.get("status") == "True"
        for c in status.get("conditions", [])
    )


def request(status: dict[str, Any], verb: str) -> Any:
    """Ask the daemon `verb` about the VMI whose status is `status`; its answer."""
    path = agent_socket(status)
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


def show(status: dict[str, Any], verb: str) -> str:
    """The answer to `vmid VERB NAME`, as JSON to print."""
    return json.dumps(request(status, verb), indent=2)


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
