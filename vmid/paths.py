"""Where vmid keeps everything under `--root`: apart from vmid.yaml's loader (vmid/config.py) so
that the reading verbs (`vmid get`, `describe`, `logs`) find their files without importing it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmid.config import Config

#: vmid's image store: `<state>/images/<imageref.store_name(ref)>/disk.img`, a raw file.
STORE_DIR = "images"


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


#: The directory a VMI's runtime, state and log directories are in, by namespace.
NAMESPACES = "namespaces"


class Paths:
    """Where vmid keeps everything, all under one root (`/` in production).

    The root is made absolute: QEMU runs in the VM's runtime directory, so every path in its
    argv must be absolute. A plain class, not attrs or a dataclass: every CLI call imports it.
    """

    __slots__ = ("root",)

    def __init__(self, root: str | Path) -> None:
        self.root = _absolute(root)

    def __repr__(self) -> str:
        return f"Paths(root={self.root!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Paths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @property
    def spool(self) -> Path:
        return self.root / "etc/vmid/instances"

    @property
    def config_file(self) -> Path:
        return self.root / "etc/vmid/vmid.yaml"

    @property
    def state(self) -> Path:
        return self.root / "var/lib/vmid"

    @property
    def runtime(self) -> Path:
        return self.root / "run/vmid"

    @property
    def logs(self) -> Path:
        return self.root / "var/log/vmid"

    @property
    def images(self) -> Path:
        """The image store (containerDisks), content in raw files."""
        return self.state / STORE_DIR

    @property
    def events(self) -> Path:
        """The event store (vmid/runtime/events.py): events outlive their VMI."""
        return self.state / "events"

    @property
    def network_runtime(self) -> Path:
        """The pod network's dnsmasq files (its configuration, its lease files, its pid file)."""
        return self.runtime / "network"

    @property
    def attachments(self) -> Path:
        """The address registry (vmid/host/ipam.py)."""
        return self.state / "network" / "attachments.json"

    # A VMI's directories are NAMESPACE/NAME under one of these (keys: vmid/api/names.py).

    @property
    def runtime_instances(self) -> Path:
        return self.runtime / NAMESPACES

    @property
    def state_instances(self) -> Path:
        return self.state / NAMESPACES

    @property
    def log_instances(self) -> Path:
        return self.logs / NAMESPACES

    def instance_state(self, key: str) -> Path:
        return self.state_instances / key

    def instance_runtime(self, key: str) -> Path:
        return self.runtime_instances / key

    def instance_logs(self, key: str) -> Path:
        return self.log_instances / key

    @property
    def spool_runtime(self) -> Path:
        """A directory per spool file whose problems no VMI shows, named as the file."""
        return self.runtime / "spool"

    def vm_state(self, key: str) -> Path:
        """A VirtualMachine's requested state (`vmid start/stop`), kept across daemon restarts."""
        return self.state / "vms" / key

    def vm_runtime(self, key: str) -> Path:
        """A VirtualMachine's status file."""
        return self.runtime / "vms" / key

    @property
    def vm_requests(self) -> Path:
        """`vmid start/stop/restart` requests, one file each, taken by the daemon in order."""
        return self.state / "vm-requests"

    @property
    def requests(self) -> Path:
        """What the CLI asks of the daemon (vmid/host/requests.py): root's only, 0700."""
        return self.runtime / "requests"

    @property
    def daemon_pid(self) -> Path:
        """The running daemon's pid, locked (flock) while it runs."""
        return self.runtime / "daemon.pid"

    def under_root(self, path: str) -> Path:
        """An absolute host path in vmid's root (itself with the root `/`)."""
        return self.root / path.lstrip("/")

    def volumes(self, config: Config) -> Path:
        return self.state / config.volumesDir
