"""The spool: manifest files in a directory, read into the desired set of VMIs.

Files are re-read only when they change (inode, size, mtime). inotify says when to look again;
the look itself is always a full, level-triggered scan, so a missed event costs nothing.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from vmid.api.load import MAX_BYTES
from vmid.api.vm import VM_KIND
from vmid.config import Accelerator, Config, Paths
from vmid.errors import FileRefused, Problem
from vmid.host import inotify, safefile
from vmid.manifests import Entry, plan_data

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
RESCAN_SECONDS = 60.0
#: How long a file removed or renamed away may take to come back as an edit (10 ms: a stop's
#: latency stays well under 50 ms).
REMOVAL_SETTLE_SECONDS = 0.01

#: A file written, renamed in or out, removed; its mode or owner changed (chmod, chown); a
#: symlink, FIFO or hard link made. The directory itself removed.
_WATCH_MASK = (
    inotify.CLOSE_WRITE
    | inotify.MOVED_FROM
    | inotify.MOVED_TO
    | inotify.DELETE
    | inotify.ATTRIB
    | inotify.CREATE
    | inotify.DELETE_SELF
)
_LOST = inotify.Q_OVERFLOW | inotify.DELETE_SELF | inotify.IGNORED


@attrs.frozen
class Desired:
    """What the spool asks for: valid VMIs by namespace/name key, and the problems of everything
    else."""

    vmis: dict[str, Entry]
    #: Problems of documents that name a VMI (shown on that VMI), by key.
    refused: dict[str, tuple[Problem, ...]]
    #: Problems that belong to no VMI (unreadable files, nameless documents, duplicates).
    problems: tuple[Problem, ...]
    #: Files that are there but say no name (unparseable, refused, unreadable), with their
    #: problems: a VMI running from one of them is left alone, as for an invalid edit.
    unreadable: dict[str, tuple[Problem, ...]] = attrs.field(factory=dict)
    #: Valid VirtualMachines by key (entry.planned: the VMI each makes), and the problems of
    #: the refused ones: the VM controller (vmid/runtime/vms.py) turns them into VMIs.
    vms: dict[str, Entry] = attrs.field(factory=dict)
    refused_vms: dict[str, tuple[Problem, ...]] = attrs.field(factory=dict)


def spool_file(name: str) -> bool:
    """Whether a directory entry is a manifest: dot files and editor leftovers are not."""
    return not name.startswith(".") and name.endswith(SUFFIXES) and not name.endswith("~")


class Spool:
    """Reads the spool directory, caching each file's entries until the file changes."""

    def __init__(self, directory: Path, config: Config, paths: Paths, accelerator: Accelerator):
        self.directory = directory
        self._config = config
        self._paths = paths
        self._accelerator = accelerator
        self._cache: dict[str, tuple[tuple[int, ...], list[Entry]]] = {}
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        return f"<Spool dir={str(self.directory)!r} files={len(self._cache)}>"

    async def reconfigure(self, config: Config) -> None:
        """Use a new configuration; every file is planned again at the next scan."""
        async with self._lock:
            self._config = config
            self._cache.clear()

    async def rescan(self, on_change: Callable[[Desired], None]) -> None:
        """Scan (in a worker thread, one scan at a time) and hand the result to `on_change`."""
        async with self._lock:
            desired = await trio.to_thread.run_sync(self.scan)
            log.debug("spool scanned: %d VMIs, %d refused", len(desired.vmis), len(desired.refused))
            try:
                on_change(desired)
            except Exception:  # a bug reconciling must not stop the daemon and its VMs
                log.exception("applying the spool failed")

    def scan(self) -> Desired:
        """Read every manifest file (changed ones only) and decide which VMI each name means."""
        try:
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._cache = {}
            return _decide([])
        try:
            names = sorted(n for n in os.listdir(directory) if spool_file(n))
            entries: list[Entry] = []
            for name in names:
                entries += self._entries(name, directory)
        finally:
            os.close(directory)
        self._cache = {k: v for k, v in self._cache.items() if k in names}
        return _decide(entries)

    def _entries(self, name: str, directory: int) -> list[Entry]:
        path = self.directory / name
        try:
            fd, st = _open_manifest(name, directory, self.directory)
        except FileNotFoundError:
            return []
        except FileRefused as exc:
            return [_refused(path, f"refused: {exc}")]
        except OSError as exc:
            return [_refused(path, f"cannot read the file: {exc.strerror}")]
        try:
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
            cached = self._cache.get(name)
            if cached and cached[0] == key:
                return cached[1]
            entries = self._read(path, fd, st)
        finally:
            os.close(fd)
        self._cache[name] = (key, entries)
        return entries

    def _read(self, path: Path, fd: int, st: os.stat_result) -> list[Entry]:
        refusal = _unsafe(st)
        if refusal:
            return [_refused(path, refusal)]
        try:
            data = safefile.read_fd(fd, MAX_BYTES + 1)
            return plan_data(str(path), data, self._config, self._paths, self._accelerator)
        except Exception as exc:  # a bug reading one file must not stop the daemon
            log.exception("%s: internal error", path)
            return [_refused(path, f"internal error in vmid reading this file: {exc!r}")]


def _refused(path: Path, message: str) -> Entry:
    return Entry(str(path), None, None, (Problem(str(path), 1, 1, "", message),))


def _open_manifest(name: str, directory: int, spool: Path) -> tuple[int, os.stat_result]:
    """Open a spool entry without blocking (a FIFO) and without a check/open race.

    A symlink is followed only to a file directly in the spool: one to /etc/shadow must not
    be read (its parse errors would quote it into the log). The link's directory is compared
    by inode with the spool's, and the file is then opened by name in the spool's fd, not
    following a second link, so swapping anything meanwhile cannot lead outside.
    """
    try:
        return safefile.open_regular(name, dir_fd=directory)
    except FileRefused as refused:
        try:
            target = os.readlink(name, dir_fd=directory)
        except OSError:
            raise refused from None  # not a symlink: a FIFO, a directory...
    shown = os.path.normpath(os.path.join(spool, target))
    parent, base = os.path.split(target)
    if not _same_directory(parent or ".", directory) or base in ("", ".", ".."):
        raise FileRefused(f"a symlink to {shown}, outside the spool; copy the file in instead")
    try:
        return safefile.open_regular(base, dir_fd=directory)
    except FileRefused as exc:
        raise FileRefused(f"a symlink to {shown}, which is {exc}") from exc


def _same_directory(parent: str, directory: int) -> bool:
    try:
        fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return False
    try:
        there, spool = os.fstat(fd), os.fstat(directory)
    finally:
        os.close(fd)
    return (there.st_dev, there.st_ino) == (spool.st_dev, spool.st_ino)


def _unsafe(st: os.stat_result) -> str | None:
    """Like sshd's StrictModes: a manifest anyone but root may write could run anything.

    Checked on the open file's fstat, so the file read is the file checked.
    """
    if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
        return (
            f"refused: owned by uid {st.st_uid} with mode {stat.filemode(st.st_mode)}; "
            "a manifest must be owned by root and writable by no one else"
        )
    return None


def _decide(entries: list[Entry]) -> Desired:
    vmis: dict[str, Entry] = {}
    refused: dict[str, tuple[Problem, ...]] = {}
    vms: dict[str, Entry] = {}
    refused_vms: dict[str, tuple[Problem, ...]] = {}
    claimed: dict[str, str] = {}
    problems: list[Problem] = []
    unreadable: dict[str, tuple[Problem, ...]] = {}
    for entry in entries:
        key = entry.key
        if key is None:
            problems += entry.problems
            unreadable[entry.file] = unreadable.get(entry.file, ()) + entry.problems
        elif key in claimed:  # the first file by namespace/name claims it, valid or not
            problems.append(
                Problem(
                    entry.file,
                    1,
                    1,
                    "metadata.name",
                    f"{_word(entry)} {key!r} (namespace/name) is "
                    f"already defined in {claimed[key]}, which comes first; "
                    "ignored",
                )
            )
        else:
            # One name for both kinds: a VM's VMI is named as the VM.
            claimed[key] = entry.file
            vm = entry.kind == VM_KIND
            if entry.planned is not None:
                (vms if vm else vmis)[key] = entry
            else:
                (refused_vms if vm else refused)[key] = entry.problems
    named = {e.file for e in entries if e.key is not None}
    unreadable = {f: p for f, p in unreadable.items() if f not in named}
    return Desired(vmis, refused, tuple(problems), unreadable, vms, refused_vms)


def _word(entry: Entry) -> str:
    return "VM" if entry.kind == VM_KIND else "VMI"


class Inotify:
    """A directory watch: `wait()` returns when something in it may have changed."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        #: The last `wait` saw a file removed or renamed away.
        self.removed = False
        self._fd = inotify.open_fd()
        try:
            inotify.add_watch(self._fd, directory, _WATCH_MASK)
        except OSError:
            os.close(self._fd)
            raise

    def __repr__(self) -> str:
        return f"<Inotify fd={self._fd}>"

    async def wait(self) -> bool:
        """Wait for events; True if the kernel's queue overflowed (a full rescan is due)."""
        self.removed = False
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            events = inotify.read_events(self._fd)
            if any(e.mask & _LOST for e in events):
                return True
            self.removed |= any(self._removal(e) for e in events)
            if any(self._relevant(e) for e in events):
                return False

    @staticmethod
    def _removal(event: inotify.Event) -> bool:
        """A manifest removed or renamed away (not a dot file renamed in: `vmid apply`'s)."""
        return bool(event.mask & (inotify.DELETE | inotify.MOVED_FROM)) and spool_file(event.name)

    def _relevant(self, event: inotify.Event) -> bool:
        """All but the creation of a new regular file: that one is still being written (`cp`),
        and read now it could start a VMI from half a manifest; its IN_CLOSE_WRITE follows."""
        if not event.mask & inotify.CREATE:
            return True
        try:
            st = os.lstat(self._directory / event.name)
        except OSError:
            return True
        return not stat.S_ISREG(st.st_mode) or st.st_nlink > 1  # a symlink, FIFO, hard link

    def close(self) -> None:
        os.close(self._fd)


async def watch(
    spool: Spool,
    on_change: Callable[[Desired], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_change` with the desired state now, after every change, and every minute.

    **Cancellation:** the only way this returns.
    """
    notify = _watch_directory(spool.directory)
    try:
        await spool.rescan(on_change)
        task_status.started()
        while True:
            with trio.move_on_after(RESCAN_SECONDS):
                if await notify.wait():
                    # Overflowed, or the directory was removed: watch it afresh.
                    log.warning("spool watch lost events: rescanning")
                    notify.close()
                    notify = _watch_directory(spool.directory)
            if notify.removed:
                # Maybe an edit: `git checkout` unlinks a file and writes it anew, an editor
                # renames it to a backup and writes a new one. Scanned in between, its VM would
                # be powered off, then started again.
                await trio.sleep(REMOVAL_SETTLE_SECONDS)
            # A new or changed file is scanned at once: a debounce of 2 ms was 5 % of a launch.
            await spool.rescan(on_change)
    finally:
        notify.close()


def _watch_directory(directory: Path) -> Inotify:
    directory.mkdir(parents=True, exist_ok=True)
    return Inotify(directory)
