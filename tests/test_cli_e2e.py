"""`vmid apply`, `logs -f`, `restart` and `delete` with the real QEMU and the test guest."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.daemon import Daemon
from tests.test_e2e import SEED, daemon, guest_image, pytestmark  # noqa: F401 (fixtures)

NAME = "testvmi-nocloud"


def test_apply_follow_restart_and_delete_a_real_guest(daemon: Daemon) -> None:  # noqa: F811
    applied = daemon.vmid("apply", "-f", str(SEED))
    assert applied.stdout == f"virtualmachineinstance/{NAME} created\n", applied.stderr
    daemon.wait_phase(NAME, "Running")
    out = daemon.root / "follow.out"
    with out.open("w") as stream:
        follow = subprocess.Popen(
            [sys.executable, "-m", "vmid.cli", "logs", NAME, "-f", "--root", str(daemon.root)],
            stdout=stream,
            stderr=subprocess.PIPE,
            text=True,
        )
    ready = "VMID-GUEST: ready"
    daemon.wait_for("the guest", lambda: ready in out.read_text(), timeout=120)
    pid = daemon.pid(NAME)
    restarted = daemon.vmid("restart", NAME)
    assert restarted.returncode == 0, restarted.stderr
    daemon.wait_for("the second boot", lambda: out.read_text().count(ready) == 2, timeout=180)
    assert daemon.pid(NAME) != pid
    started = time.monotonic()
    deleted = daemon.vmid("delete", "vmi", NAME)
    assert deleted.returncode == 0, deleted.stderr
    assert daemon.status(NAME) is None
    _, err = follow.communicate(timeout=30)  # ends by itself: the VMI is gone
    assert follow.returncode == 0, err
    text = out.read_text()
    assert text.count("VMID-GUEST: powering off") == 2  # the restart's, then the deletion's
    assert time.monotonic() - started < 60


pytestmark = [*pytestmark, pytest.mark.timeout(600)]
