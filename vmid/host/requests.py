"""What the CLI asks of the daemon that no spool file can say: restart a VMI, or stop one
being deleted with another grace period (`vmid delete --grace-period`).

A request is a small JSON file, `DIGEST.ACTION` (a digest of the VMI's namespace/name, which
may be far longer than a file name; the key itself is in the file), in ROOT/run/vmid/requests/:
a directory of root's, mode 0700, so only root can ask; the daemon also takes only files owned
by its own user and writable by no one else, and removes each one it takes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

from vmid.api import names
from vmid.errors import RequestRefused
from vmid.host import safefile

log = logging.getLogger(__name__)

RESTART, DELETE = "restart", "delete"
_LIMIT = 4096


def _path(directory: Path, action: str, key: str) -> Path:
    return directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.{action}"


def submit(directory: Path, action: str, key: str, grace: int | None) -> Path:
    """Ask for `action` on VMI `key` (`grace`: its grace period, None: the manifest's)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _path(directory, action, key)
    body = json.dumps({"key": key, "gracePeriodSeconds": grace}).encode()
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
        if entry.startswith(".") or not entry.endswith(f".{action}"):
            continue
        path = directory / entry
        key = _key(path)
        if key is None or _path(directory, action, key) != path:
            log.warning("%s: not taken: it names no VMI", path)
            path.unlink(missing_ok=True)
        else:
            keys.append(key)
    return keys


def _key(path: Path) -> str | None:
    """The VMI a request names (read without following a symlink or blocking on a FIFO)."""
    try:
        key = json.loads(safefile.read_regular(path, _LIMIT)).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    namespace, name = names.split(key) if isinstance(key, str) else ("", "")
    return key if namespace and name else None


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
