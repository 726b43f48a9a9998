"""QEMU processes vmid did not start itself: found by pid, checked, and watched through a pidfd.

A QEMU outlives its daemon (`onDaemonStop: keep`, a crash, `KillMode=process`); the next
daemon must find it again, and never mistake an unrelated process with a reused pid for it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from vmid.runtime import status

#: The exit status of a process that is not vmid's child cannot be known.
UNKNOWN_EXIT = 1 << 16


def name_option(argv: tuple[str, ...]) -> str:
    """The `-name` value of a QEMU argv (`guest=NAME,debug-threads=on`): the VM's identity."""
    return next((a for a in argv if a.startswith("guest=")), "")


def find_qemu(status_file: Path, name_option: str, cwd: str) -> int | None:
    """The pid the VMI's last status names, if it is still that VM's QEMU.

    Identity is checked, not assumed (pids are reused): the process must run in the VM's
    runtime directory `cwd`, with the VM's `-name` option value `name_option`.
    """
    try:
        pid = int(status.read_json(status_file)["status"]["qemu"]["pid"])
        running_in = os.readlink(f"/proc/{pid}/cwd")
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            argv = stream.read().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if running_in == cwd and name_option.encode() in argv else None


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
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
