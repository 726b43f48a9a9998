"""Who QEMU runs as (`qemuUser`), and handing it the files it needs, and only those.

vmid drops QEMU's privileges itself, between fork and exec, as libvirt does: QEMU's own
`-runas` calls setuid after its seccomp filter is in place, and `elevateprivileges=deny` then
kills it (SIGSYS). The user gets its VM's console log and its working directory (for its
sockets); the directories holding them stay root's, so root never writes where the user could
plant a symlink. Disks, images, ISOs and EFI files it gets by fd (host/beneath.py).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from pathlib import Path

import attrs

from vmid.errors import VmidError


class IdentityError(VmidError):
    """qemuUser does not exist, or cannot reach a file its VM needs."""


@attrs.frozen
class QemuUser:
    """The unprivileged user (and groups) QEMU runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve(name: str | None) -> QemuUser | None:
    """The configured user, with its supplementary groups and `kvm` (for /dev/kvm).

    Raises:
        IdentityError: no such user.
    """
    if name is None:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise IdentityError(
            f"qemuUser {name} does not exist on this host: create it "
            f"(useradd --system --no-create-home --shell /usr/sbin/nologin {name}) "
            "or set qemuUser in vmid.yaml"
        ) from None
    groups = set(os.getgrouplist(name, entry.pw_gid))
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrnam("kvm").gr_gid)
    return QemuUser(name, entry.pw_uid, entry.pw_gid, tuple(sorted(groups)))


def give(user: QemuUser, path: Path) -> None:
    """Make one file vmid created for this VM `user`'s (never following a symlink)."""
    os.chown(path, user.uid, user.gid, follow_symlinks=False)


def make_traversable(directory: Path) -> None:
    """Let the QEMU user pass through (not list) one of vmid's directories: mode 0711."""
    if directory.exists() and directory.stat().st_mode & 0o011 != 0o011:
        directory.chmod(directory.stat().st_mode | 0o011)
