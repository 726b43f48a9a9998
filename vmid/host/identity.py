"""Who each VMI's QEMU runs as (a uid of its own), and handing it its VM's files, only those.

Each VMI gets a uid from `qemuUids`, with the same number as its gid and no /etc/passwd entry
(like systemd's DynamicUser=), recorded in the VMI's state directory before anything is given
to it and forgotten only once every file of the VMI is gone: a compromised QEMU owns nothing of
another VM (its sockets, disks, ISO, EFI variables, console log). The lowest number no record
holds, no process runs as and no user or group is named by is taken, so after a crash at any
instant either the record exists (the VMI keeps its uid) or nothing was given that uid yet.

vmid drops QEMU's privileges before QEMU's exec, as libvirt does: QEMU's own `-runas` calls
setuid after its seccomp filter is in place, and `elevateprivileges=deny` then kills it
(SIGSYS). util-linux's `setpriv` drops them and execs QEMU (`launch_argv`): Python drops them
only in a full fork of the daemon (its vfork refuses setuid), which cost 3.5 ms per launch with
the GIL held, where vfork and setpriv's exec cost 1 ms. Each VMI's QEMU runs as a uid of its
own and owns only its working directory (its sockets); the directories holding the VM's files
stay root's, so root never writes where QEMU could plant a symlink. Disks, images, ISOs and EFI
files it gets by fd (host/beneath.py), its logs through pipes (runtime/logs.py).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import threading
from collections.abc import Mapping, Sequence, Set
from pathlib import Path

import attrs

from vmid.errors import IdentityError
from vmid.host import safefile
from vmid.host.firmwareid import FIRMWARE_UUID_FILE

#: The file in a VMI's state directory holding its uid.
UID_RECORD = "uid"


@attrs.frozen
class QemuUser:
    """The unprivileged identity (uid, gid, groups) one VMI's QEMU runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


class Records:
    """The uids the VMIs' records under `instances` (`.../namespaces`) hold: read from disk at
    the first allocation, then kept by `allocate` and `forget`. The daemon writes and removes
    every record, so an allocation need not read every VMI's record again (O(VMIs) each, under
    the allocation lock: issue 16). A record removed behind its back keeps its uid taken until
    the daemon restarts, never the other way round."""

    def __init__(self, instances: Path) -> None:
        self.instances = instances
        self._uids: set[int] | None = None
        self._lock = threading.Lock()  # allocations and removals run in worker threads

    def __repr__(self) -> str:
        return f"<Records {str(self.instances)!r} uids={self._uids}>"

    def taken(self) -> set[int]:
        with self._lock:
            if self._uids is None:
                self._uids = _recorded_uids(self.instances)
            return set(self._uids)

    def add(self, uid: int) -> None:
        with self._lock:
            if self._uids is not None:  # else it is on disk, read with the others
                self._uids.add(uid)

    def forget(self, uid: int) -> None:
        """The record of `uid` was removed (`release`): it may be given again."""
        with self._lock:
            if self._uids is not None:
                self._uids.discard(uid)


#: util-linux's (Essential in Debian): changes uid, gid and groups, then execs its argv.
SETPRIV = "/usr/bin/setpriv"


def check_launcher() -> None:
    """At the daemon's start (QEMU not as root): setpriv is there to drop QEMU's privileges.

    Raises:
        IdentityError: it is missing, saying what to install.
    """
    if not os.access(SETPRIV, os.X_OK):
        raise IdentityError(
            f"{SETPRIV} is missing: vmid runs each QEMU as a uid of its own through it; "
            "install util-linux (Debian: apt-get install util-linux)"
        )


def launch_argv(user: QemuUser, argv: Sequence[str]) -> list[str]:
    """`argv` run as `user`: its real, effective and saved uid and gid, its groups alone (no
    capability survives the change from root, as with setuid in a fork)."""
    groups = f"--groups={','.join(map(str, user.groups))}" if user.groups else "--clear-groups"
    return [SETPRIV, f"--reuid={user.uid}", f"--regid={user.gid}", groups, "--", *argv]


def vmi_user(uid: int, vmi: str) -> QemuUser:
    """VMI `vmi`'s QEMU identity: uid and gid `uid`, and `kvm` (for /dev/kvm) if there is one."""
    groups: tuple[int, ...] = ()
    with contextlib.suppress(KeyError):
        groups = (grp.getgrnam("kvm").gr_gid,)
    return QemuUser(f"VMI {vmi}'s QEMU (uid {uid})", uid, uid, groups)


def allocate(
    state: Path,
    first: int,
    count: int,
    running: Mapping[int, Set[int]] | None = None,
    records: Records | None = None,
    durable: bool = True,
) -> int:
    """The uid recorded in the VMI's state directory `state` (`.../NAMESPACE/NAME`), else a new
    one (no other VMI's, of any namespace), recorded first.

    Callers serialise calls (two VMIs must not pick the same free number at once). `running`:
    the processes' ids (`running_ids`), as a current snapshot shows them
    (runtime/proctable.py); None: read them now.
    `records`: the records of `state`'s namespaces directory, kept; None: read them now.
    `durable`: the new record is synced before this returns; False: the caller syncs it
    (`sync_records`) before the VMI's guest runs.

    Raises:
        IdentityError: every uid of the range is taken.
    """
    uid = recorded(state)
    if uid is not None:
        return uid
    if running is None:
        running = running_ids()
    recorded_uids = _recorded_uids(state.parents[1]) if records is None else records.taken()
    taken = recorded_uids.union(*running.values())
    for uid in range(first, first + count):
        if uid not in taken and not _named(uid):
            if records is not None:  # first: a record a failure leaves behind still counts
                records.add(uid)
            _record(state, uid, durable)
            return uid
    raise IdentityError(
        f"no uid left for its QEMU: all {count} of qemuUids ({first}-{first + count - 1}) are "
        "held by VMIs, processes or users; remove VMIs, or widen qemuUids in vmid.yaml"
    )


def recorded(state: Path) -> int | None:
    """The uid recorded for the VMI whose state directory is `state`, if any.

    A record that is not a number was cut short by a crash before it was synced, so before its
    VMI's guest ran (nothing that outlives a crash was given to that uid before: its working
    directory is made anew at each launch): it counts as none, and is replaced (as is root's 0,
    which vmid never records).
    """
    record = state / UID_RECORD
    try:
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as stream:
        text = stream.read(32)
    if not text.strip().isdigit() or not 0 < int(text) < 2**31:
        record.unlink(missing_ok=True)
        return None
    return int(text)


def release(state: Path) -> None:
    """Forget the VMI's uid: the very last step of removing it, once all its files are gone."""
    (state / UID_RECORD).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # gone already, or files left that could not be removed
        state.rmdir()


def give_back(directory: Path, uid: int) -> None:
    """Make root own the files in `directory` (a removed VMI's kept logs) that `uid` owns."""
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.stat(follow_symlinks=False).st_uid == uid:
                os.chown(entry.path, 0, 0, follow_symlinks=False)


def _recorded_uids(instances: Path) -> set[int]:
    """The uids recorded for every VMI of every namespace under `instances`."""
    uids: set[int] = set()
    for record in instances.glob(f"*/*/{UID_RECORD}"):
        with contextlib.suppress(OSError, ValueError):  # gone, or cut short by a crash
            uids.add(int(record.read_bytes()[:32]))
    return uids


def processes_of(uid: int, running: Mapping[int, Set[int]] | None = None) -> list[int]:
    """The live processes running with `uid` as one of their uids or gids (in `running`, read
    by `running_ids` after the caller asked; None: read now)."""
    running = running_ids() if running is None else running
    return [pid for pid, ids in running.items() if uid in ids]


def running_ids() -> dict[int, Set[int]]:
    """Every live process's uids and gids (`ids_of`), by pid."""
    return {pid: ids_of(pid) for pid in _pids()}


def ids_of(pid: int) -> set[int]:
    """The uids and gids (real, effective, saved, filesystem) of a live process; none for a
    zombie (it holds nothing any more: a re-adopted QEMU, no longer vmid's child, may wait long
    for a reaper that is not vmid) or a process that is gone."""
    # Read as bytes, its three lines found in place: every launch reads every process's file,
    # and decoding and splitting all of it cost twice the kernel's own time to make it.
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 8192)
        finally:
            os.close(fd)
        if _field(data, b"State").startswith(b"Z"):
            return set()
        return {int(n) for key in (b"Uid", b"Gid") for n in _field(data, key).split()}
    except (OSError, ValueError):  # gone meanwhile
        return set()


def _field(status: bytes, key: bytes) -> bytes:
    """A field of a /proc/PID/status text, without its name; ValueError if it has none."""
    start = status.index(b"\n" + key + b":") + len(key) + 2
    end = status.find(b"\n", start)
    return status[start : end if end >= 0 else len(status)].strip()


def _pids() -> list[int]:
    with os.scandir("/proc") as entries:
        return [int(entry.name) for entry in entries if entry.name.isdigit()]


def _named(uid: int) -> bool:
    """A user or group of that number exists (the user database is the host's allocator), or
    is named by it (`_ambiguous`)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return _ambiguous(uid)


def _ambiguous(number: int) -> bool:
    """A user or group is *named* by `number`: setpriv looks a name up before it reads a number
    (util-linux's get_user/get_group), so it would run QEMU as that user or group."""
    for lookup in (pwd.getpwnam, grp.getgrnam):
        try:
            lookup(str(number))
        except KeyError:
            continue
        return True
    return False


def check_unambiguous(user: QemuUser) -> None:
    """Before a launch: no user or group of the host is named by one of `user`'s numbers (one
    added since its uid was given out would be the one setpriv runs QEMU as).

    Raises:
        IdentityError: naming it, and what to do.
    """
    for number in (user.uid, user.gid, *user.groups):
        if _ambiguous(number):
            raise IdentityError(
                f'a user or group of this host is named "{number}", a number {user.name} '
                f"runs with: setpriv would take it for that one; rename it, or move qemuUids "
                "in vmid.yaml away from it"
            )


def _record(state: Path, uid: int, durable: bool) -> None:
    """Write the record (durably: file, then its directory) before the uid is used."""
    state.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(state / UID_RECORD, flags, 0o600)
    try:
        os.write(fd, f"{uid}\n".encode())
    finally:
        os.close(fd)
    if durable:
        sync_records(state)


def sync_records(state: Path) -> None:
    """Make a VMI's records (its uid, its firmware UUID) reach the disk: written not durable
    by `allocate` and `firmwareid.kept`, they are synced together, beside the launch, before
    its guest runs (and sees the UUID)."""
    safefile.sync_files(state, (UID_RECORD, FIRMWARE_UUID_FILE))


def give(user: QemuUser, path: Path) -> None:
    """Make one file vmid created for this VM `user`'s (never following a symlink)."""
    os.chown(path, user.uid, user.gid, follow_symlinks=False)


def make_traversable(directory: Path) -> None:
    """Let the QEMU user pass through (not list) one of vmid's directories: mode 0711."""
    if directory.exists() and directory.stat().st_mode & 0o011 != 0o011:
        directory.chmod(directory.stat().st_mode | 0o011)
