"""QEMU processes vmid did not start itself: found by pid, checked, and watched through a pidfd.

A QEMU outlives its daemon (`onDaemonStop: keep`, a crash, `KillMode=process`); the next
daemon must find it again, and never mistake an unrelated process with a reused pid for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import trio

from vmid.api import names
from vmid.host.identity import SETPRIV

log = logging.getLogger(__name__)

#: The exit status of a process that is not vmid's child cannot be known.
UNKNOWN_EXIT = 1 << 16


def cmdline(pid: int) -> list[str]:
    """The argv process `pid` runs (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return stream.read().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def find_qemus(instances: Path, qemu_dir: str) -> dict[str, list[int]]:
    """Every QEMU of vmid's VMIs that is running now, by VMI key: the system is the truth.

    A QEMU belongs to the VMI whose directory it runs in (`instances/NAMESPACE/NAME/qemu_dir`)
    and whose key its `-name guest=NAMESPACE/NAME,...` option carries; both are checked (pids
    are reused, and a person may have a shell in that directory). Status files can be stale or
    missing (a crash between fork and write); this scan cannot. More than one pid for a key is
    a past fault.
    """
    found: dict[str, list[int]] = {}
    for pid, key in in_vmi_directories(instances, qemu_dir):
        if runs_as(pid, key):
            found.setdefault(key, []).append(pid)
    return found


def wait_for_execs(instances: Path, qemu_dir: str, timeout: float) -> list[tuple[int, str]]:
    """Wait (at most `timeout` s) until no fork of a vmid daemon sits in a VMI's directory
    without having exec'd its QEMU yet; return those still there then (pid, VMI key).

    A daemon killed between forking a QEMU and its exec leaves a process that runs the
    daemon's own executable, then `setpriv` (host/identity.py: it drops QEMU's uid, then execs
    it): it holds the daemon's lock (host/pidlock.py, inherited) until it closes its fds just
    before its first exec, so the next daemon can only meet it in the instants after. Surveyed
    then, it would be missed, and its VMI's directory removed under the QEMU it becomes: an
    orphan no daemon finds again.
    """
    ours = os.stat("/proc/self/exe")
    setpriv = os.stat(SETPRIV) if os.path.exists(SETPRIV) else None
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        forks = [
            (pid, key)
            for pid, key in in_vmi_directories(instances, qemu_dir)
            # setpriv's argv ends with QEMU's; vmid's executable runs a test's fake QEMU too.
            if (setpriv and _same_file(f"/proc/{pid}/exe", setpriv))
            or (_same_file(f"/proc/{pid}/exe", ours) and not runs_as(pid, key))
        ]
        if not forks or time.monotonic() > deadline:
            return forks
        if not waited:
            log.info("forked by an earlier vmid, not yet QEMUs: %s: waiting for their exec", forks)
            waited = True
        time.sleep(0.01)


def in_vmi_directories(instances: Path, qemu_dir: str) -> list[tuple[int, str]]:
    """(pid, VMI key) of every process whose working directory is a VMI's `qemu_dir`."""
    base = str(instances) + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue  # gone, or a kernel thread
        key = cwd.removeprefix(base).removesuffix("/" + qemu_dir)
        if cwd.startswith(base) and key.count("/") == 1:
            found.append((int(entry), key))
    return found


def _same_file(path: str, other: os.stat_result) -> bool:
    try:
        mine = os.stat(path)
    except OSError:
        return False  # gone (or exec'd into something we may not read)
    return (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino)


def runs_as(pid: int, key: str) -> bool:
    """Whether process `pid` is the QEMU of VMI `key` (its `-name guest=` says so)."""
    # A QEMU started before vmid knew namespaces carries the bare name (moved to `default`).
    namespace, name = names.split(key)
    carried = (key, name) if namespace == names.DEFAULT_NAMESPACE else (key,)
    return any(arg.startswith(tuple(f"guest={c}," for c in carried)) for arg in cmdline(pid))


class AdoptedProcess:
    """The parts of `trio.Process` the runtime uses, for a QEMU started by an earlier daemon."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)  # from now on, signals can never reach another process
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"<AdoptedProcess pid={self.pid} returncode={self.returncode}>"

    async def wait(self) -> int:
        """Wait for the process to end; its status is UNKNOWN_EXIT (it is not our child)."""
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self.returncode = UNKNOWN_EXIT
            os.close(self._pidfd)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            # Not our child: init may have reaped it already (the pidfd stays ours, no reuse).
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
