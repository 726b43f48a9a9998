"""The daemon's lock (vmid/host/pidlock.py): one daemon per root, and held by its forks until
they exec, which is what keeps a next daemon from surveying while a QEMU is half-started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmid.host import pidlock

pytestmark = pytest.mark.timeout(30)


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "daemon.pid"
    fd = pidlock.hold(path)
    try:
        assert pidlock.running(path)
        child = subprocess.run(
            [sys.executable, "-c", f"from vmid.host import pidlock; pidlock.hold({str(path)!r})"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        assert f"another vmid daemon (pid {os.getpid()}) runs" in child.stderr
    finally:
        os.close(fd)
    assert not pidlock.running(path)


_DAEMON = """
import subprocess, sys, time
from vmid.host import pidlock
pidlock.hold(sys.argv[1])
# A fork that lingers before its exec (preexec_fn runs between fork and the closing of fds).
subprocess.Popen(["true"], preexec_fn=lambda: time.sleep(1.5))
"""


def test_a_fork_of_a_dead_daemon_holds_its_lock_until_its_exec(tmp_path: Path) -> None:
    """A daemon killed between fork and exec: the next one waits for the exec."""
    path = tmp_path / "daemon.pid"
    daemon = subprocess.Popen(
        [sys.executable, "-c", _DAEMON, str(path)], cwd=Path(__file__).parents[1]
    )
    while not _forked(daemon.pid):
        time.sleep(0.01)
    daemon.kill()  # between its fork and the fork's exec
    daemon.wait()
    assert pidlock.running(path)  # held by the fork alone
    started = time.monotonic()
    os.close(pidlock.hold(path))  # the next daemon: waits for the exec, then gets it
    assert time.monotonic() - started > 0.2


def _forked(pid: int) -> bool:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return bool(children)


def test_a_missing_lock_file_means_no_daemon(tmp_path: Path) -> None:
    assert not pidlock.running(tmp_path / "none.pid")
