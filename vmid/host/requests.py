"""What the CLI asks of the daemon that no spool file can say: restart a VMI, or stop one
being deleted with another grace period (`vmid delete --grace-period`).

A request is a small JSON file, `NAMESPACE_NAME.ACTION`, in ROOT/run/vmid/requests/: a
directory of root's, mode 0700, so only root can ask; the daemon also takes only files owned
by its own user and writable by no one else, and removes each one it takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

from vmid.api import names
from vmid.errors import VmidError
from vmid.host import safefile

RESTART, DELETE = "restart", "delete"
_LIMIT = 4096


def _path(directory: Path, action: str, key: str) -> Path:
    namespace, name = names.split(key)
    return directory / f"{namespace}_{name}.{action}"


def submit(directory: Path, action: str, key: str, grace: int | None) -> Path:
    """Ask for `action` on VMI `key` (`grace`: its grace period, None: the manifest's)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _path(directory, action, key)
    body = json.dumps({"gracePeriodSeconds": grace}).encode()
    safefile.write_atomically(path, body, mode=0o600)
    return path


def withdraw(directory: Path, action: str, key: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(directory, action, key).unlink()


def pending(directory: Path, action: str) -> list[str]:
    """The keys with a request for `action` waiting (to `take`)."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    keys = []
    for entry in sorted(entries):
        base, _, suffix = entry.rpartition(".")
        namespace, _, name = base.partition("_")
        if suffix == action and namespace and name and not entry.startswith("."):
            keys.append(names.key(namespace, name))
    return keys


class RequestRefused(VmidError):
    """A request file that is not carried out: not root's, or not a request."""


def take(directory: Path, action: str, key: str) -> tuple[bool, int | None]:
    """Remove a request: (whether there was one, the grace period it asks for).

    Raises:
        RequestRefused: there was one, but not made by root (a hand-made owner or mode, a
            symlink, a FIFO) or not a request; it is removed all the same.
    """
    path = _path(directory, action, key)
    try:
        fd, st = safefile.open_regular(path)
    except FileNotFoundError:
        return False, None
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise RequestRefused(f"{path}: not taken: {exc}") from exc
    try:
        data = safefile.read_fd(fd, _LIMIT)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RequestRefused(f"{path}: not taken: owned by uid {st.st_uid}, not root's")
    return True, _grace(path, data)


def _grace(path: Path, data: bytes) -> int | None:
    try:
        grace = json.loads(data).get("gracePeriodSeconds")
    except (ValueError, AttributeError):
        raise RequestRefused(f"{path}: not taken: not JSON") from None
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        raise RequestRefused(f"{path}: not taken: gracePeriodSeconds {grace!r} is no grace")
    return grace
