"""The error tree: every failure vmid expects is a `VmidError` with a message a person can act on.

    VmidError
     ├── ConfigError            vmid.yaml or a command-line flag is wrong
     ├── ManifestError          a manifest does not load, validate or plan (every `Problem`)
     ├── StateError             the daemon cannot make or write its state directories
     ├── DaemonRunning          another daemon runs with this --root
     ├── StateUnreadable        the CLI finds no daemon's state under --root, or may not read it
     ├── FileRefused            a file someone else could swap is not a regular file (also OSError)
     ├── DiskFileError          a disk file a manifest names cannot be opened beneath its root
     ├── StorageError           the image store: an image missing, refused or not stored
     │    └── PullError         a registry pull (skopeo, digests, the disk in the layers)
     ├── DataVolumeImportError  a DataVolume's source cannot become its claim file
     ├── IdentityError          no uid of qemuUids is left for a QEMU, or it is ambiguous
     ├── NetworkError           the pod network, a tap, an address or a port
     │    └── LinkExists        a link of that name exists already
     ├── LaunchError            QEMU did not start (the message carries what QEMU said)
     ├── MachineError           systemd-machined did not give a QEMU its scope
     ├── MonitorError           QMP on the control monitor failed
     ├── AgentError             the guest agent did not answer as its protocol says
     ├── RequestError           a VM's start/stop/restart request is refused or malformed
     ├── RequestRefused         a CLI request file is not root's or not a request
     └── the CLI's: ControlError (a VMI's QMP socket), ApplyError, DeleteError, SpoolError,
         SelectorError (-l), JSONPathError (-o jsonpath), AgentRequestError (the agent verbs)

Anything else that escapes is a bug. `BaseException`s (cancellation, KeyboardInterrupt) are never
wrapped.
"""

from __future__ import annotations

from typing import NamedTuple


class VmidError(Exception):
    """Root of every error vmid reports to a person instead of crashing."""


class ConfigError(VmidError):
    """The daemon configuration or a command-line flag is invalid."""


class Problem(NamedTuple):
    """One thing wrong with a manifest, located in its file.

    `line` and `column` are 1-based; `field` is the dotted path as written in the YAML
    (`spec.domain.devices.disks[1].disk.bus`), empty for problems with the file as a whole.
    """

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ManifestError(VmidError):
    """A manifest is refused; `problems` lists everything wrong with it at once."""

    def __init__(self, problems: tuple[Problem, ...]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class StateUnreadable(VmidError):
    """The runtime directory is missing or closed to the caller: a reader would see nothing."""


class ControlError(VmidError):
    """The VM's QMP socket could not be reached, or QEMU refused the command."""


class LaunchError(VmidError):
    """QEMU did not start; the message carries what QEMU said."""


class MachineError(VmidError):
    """systemd-machined did not put a QEMU in a scope of its own (vmid/host/machines.py)."""


class RequestError(VmidError):
    """A start/stop/restart request cannot be made (refused as virtctl's, or not written)."""


class MonitorError(VmidError):
    """The control monitor could not be reached, or a command failed or timed out."""


class DataVolumeImportError(VmidError):
    """An http DataVolume could not be imported; the message says why (shown on the VM)."""


class StateError(VmidError):
    """A directory vmid keeps its state, runtime files or logs in cannot be made or written."""


class AgentError(VmidError):
    """The guest agent is not connected, did not answer in time, or refused the command."""


class ApplyError(VmidError):
    """An input is invalid: nothing is applied."""


class SelectorError(VmidError):
    """A selector that does not parse."""


class JSONPathError(VmidError):
    """A template that does not parse."""


class SpoolError(VmidError):
    """A spool file cannot be read, written or rewritten as asked."""


class DeleteError(VmidError):
    """What to delete is not said, or not there."""


class AgentRequestError(VmidError):
    """The daemon could not be asked, or the guest agent could not answer."""


class StorageError(VmidError):
    """A disk image or file could not be checked, found or created."""


class RequestRefused(VmidError):
    """A request file that is not carried out: not root's, or not a request."""


class FileRefused(VmidError, OSError):
    """The file is not a regular file (or is a symlink where none is followed): it is not read.

    An OSError too, so every caller that copes with an unreadable file copes with this one.
    """


class DiskFileError(VmidError):
    """A file for QEMU cannot be opened, or not safely: a symlink, not a disk file, missing."""


class DaemonRunning(VmidError):
    """Another vmid daemon runs with this root."""


class IdentityError(VmidError):
    """No uid left for a VMI, one a user or group is named by, or its QEMU cannot reach a file
    its VM needs."""


class NetworkError(VmidError):
    """A bridge, tap, address or rule could not be set up; the message says which and why."""


class PullError(StorageError):
    """An image could not be pulled; the message quotes skopeo or says what was wrong."""


class LinkExists(NetworkError):
    """A tap vmid was to create exists already: another VMI's, or not vmid's at all."""
