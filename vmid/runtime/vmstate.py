"""The files of a VirtualMachine that vmid keeps (never the user's manifest): the state the VM
controller decided (kept across daemon restarts), `vmid start/stop/restart` requests, and the
VM's status file. Shared by the daemon and the CLI."""

from __future__ import annotations

import enum
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from vmid.api import names
from vmid.errors import FileRefused
from vmid.host import safefile
from vmid.paths import Paths

if TYPE_CHECKING:  # the VM model is the API's: `vmid get` imports this module, not it
    from vmid.api.vm import RunStrategy

STATE_FILE = "state.json"
STATUS_FILE = "status.json"
DATA_VOLUMES_FILE = "datavolumes.json"
#: A request is a few dozen bytes; a bigger file is no request of vmid's.
MAX_REQUEST_BYTES = 4096
ACTIONS = ("start", "stop", "restart")


@attrs.define
class Kept:
    """What the controller decided for one VM, kept across daemon restarts."""

    #: The strategy `vmid start/stop` set, over the manifest's `base` (a changed manifest
    #: strategy ends it, as a `kubectl apply` would overwrite virtctl's patch).
    override: RunStrategy | None = None
    base: RunStrategy | None = None
    #: The strategy last acted on (KubeVirt's status.runStrategy).
    seen: RunStrategy | None = None
    #: Whether the VM is to have a VMI (Manual and RerunOnFailure decide it by requests).
    wanted: bool = False
    #: The claim files its DataVolume templates made (moved aside when the VM is removed).
    volumes: list[str] = attrs.field(factory=list)
    #: When vmid first saw the VM (its creationTimestamp).
    created: str = ""
    #: KubeVirt's status.startFailure, kept as KubeVirt keeps it on the VM object, so a daemon
    #: restart does not end a back-off: start failures in a row, when the next start may be
    #: (RFC 3339), and which ended VMI was counted last (its creation and end times: vmid's VMIs
    #: have no UID).
    failCount: int = 0
    retryAfter: str = ""
    lastFailed: str = ""
    #: `vmid start --paused`: the VMI it starts (and only that one) starts paused.
    startPaused: bool = False

    def to_data(self) -> dict[str, Any]:
        return {
            k: (v.value if isinstance(v, enum.Enum) else v) for k, v in attrs.asdict(self).items()
        }


def load_kept(paths: Paths, key: str) -> Kept | None:
    """The state kept for VM `key`, if any (a damaged file counts as none)."""
    try:
        data = json.loads((paths.vm_state(key) / STATE_FILE).read_bytes())
        return Kept(
            override=_strategy(data.get("override")),
            base=_strategy(data.get("base")),
            seen=_strategy(data.get("seen")),
            wanted=bool(data.get("wanted")),
            volumes=[str(v) for v in data.get("volumes", [])],
            created=str(data.get("created", "")),
            failCount=int(data.get("failCount", 0)),
            retryAfter=str(data.get("retryAfter", "")),
            lastFailed=str(data.get("lastFailed", "")),
            startPaused=bool(data.get("startPaused")),
        )
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _strategy(value: object) -> RunStrategy | None:
    from vmid.api.vm import RunStrategy

    return RunStrategy(value) if isinstance(value, str) else None


def save_kept(paths: Paths, key: str, kept: Kept) -> None:
    directory = paths.vm_state(key)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(kept.to_data(), sort_keys=True).encode()
    safefile.write_atomically(directory / STATE_FILE, text, durable=True)


@attrs.frozen
class Request:
    """`vmid start|stop|restart` of one VM."""

    key: str
    action: str
    grace: int | None = None
    #: `start --paused`: the VMI starts with its guest paused.
    paused: bool = False


def send(paths: Paths, request: Request) -> Path:
    """Queue a request for the daemon (it takes them in the order they were made)."""
    directory = paths.vm_requests
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
    data = {
        "key": request.key,
        "action": request.action,
        "grace": request.grace,
        "paused": request.paused,
    }
    path = directory / name
    safefile.write_atomically(path, json.dumps(data).encode(), durable=True)
    return path


def take(paths: Paths) -> list[Request]:
    """Every queued request, oldest first, removed from the queue (a bad file is dropped)."""
    directory = paths.vm_requests
    try:
        names_ = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    requests = []
    for name in names_:
        path = directory / name
        request = _read_request(path)
        path.unlink(missing_ok=True)
        if request is not None:
            requests.append(request)
    return requests


def _read_request(path: Path) -> Request | None:
    try:
        data = json.loads(safefile.read_regular(path, MAX_REQUEST_BYTES))
        key, action, grace = data["key"], data["action"], data.get("grace")
        paused = data.get("paused", False)
    except (OSError, ValueError, KeyError, TypeError, FileRefused):
        return None
    if not isinstance(key, str) or action not in ACTIONS or not isinstance(paused, bool):
        return None
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        return None
    namespace, name = names.split(key)
    return Request(names.key(namespace, name), action, grace, paused) if name else None


def status_path(paths: Paths, key: str) -> Path:
    return paths.vm_runtime(key) / STATUS_FILE


def data_volumes_path(paths: Paths, key: str) -> Path:
    """A VM's DataVolumes, as CDI's objects in a List."""
    return paths.vm_runtime(key) / DATA_VOLUMES_FILE


def read_data_volumes(paths: Paths) -> list[dict[str, Any]]:
    """Every VM's DataVolume objects the daemon wrote, by namespace, VM, then template."""
    found = []
    for path in sorted((paths.runtime / "vms").glob(f"*/*/{DATA_VOLUMES_FILE}")):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # removed while listing
        if isinstance(data, dict) and isinstance(data.get("items"), list):
            found += [item for item in data["items"] if isinstance(item, dict)]
    return found


def read_vms(paths: Paths) -> list[dict[str, Any]]:
    """Every VM's status object the daemon wrote, by namespace then name."""
    root = paths.runtime / "vms"
    found = []
    for path in sorted(root.glob(f"*/*/{STATUS_FILE}")):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # removed while listing, or being replaced
        if isinstance(data, dict):
            found.append(data)
    return found
