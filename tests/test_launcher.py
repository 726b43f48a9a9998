"""QEMU's launch through setpriv: the uid it runs as, and the instant setpriv runs between the
daemon's fork and QEMU's exec (a daemon killed then must not lose that QEMU)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmid.host import identity
from vmid.runtime import process

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path(identity.SETPRIV).exists(), reason="util-linux's setpriv"),
]

#: Stands in for setpriv, held in its place until told: sh reads a line, then execs QEMU. Its
#: argv names the VMI, as setpriv's does (it ends with QEMU's).
_HELD = 'read line; exec "$0" -c "import time; time.sleep(60)" -name "guest=default/vm-a,x"'


def test_setpriv_gives_the_vmis_uid_gid_and_groups_alone_and_no_capability() -> None:
    user = identity.QemuUser("test", 90123, 90123, (90124,))
    argv = identity.launch_argv(
        user, ["grep", "-E", "^(Uid|Gid|Groups|CapEff|CapPrm)", "/proc/self/status"]
    )
    fields = dict(
        line.split(":", 1)
        for line in subprocess.run(
            argv, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    assert fields["Uid"].split() == ["90123"] * 4
    assert fields["Gid"].split() == ["90123"] * 4
    assert fields["Groups"].split() == ["90124"]
    assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == 0


def test_no_groups_are_cleared_groups() -> None:
    user = identity.QemuUser("test", 90123, 90123, ())
    argv = identity.launch_argv(user, ["grep", "^Groups", "/proc/self/status"])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.split(":", 1)[1].split() == []


def test_the_survey_waits_for_a_launcher_in_a_vmis_directory_until_it_is_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon died after its fork exec'd setpriv, before setpriv exec'd QEMU."""
    instances = tmp_path / "namespaces"
    directory = instances / "default/vm-a/qemu"
    directory.mkdir(parents=True)
    monkeypatch.setattr(process, "SETPRIV", os.path.realpath("/bin/sh"))
    launcher = subprocess.Popen(
        ["/bin/sh", "-c", _HELD, sys.executable, "-name", "guest=default/vm-a,x"],
        cwd=directory,
        stdin=subprocess.PIPE,
    )
    try:
        found: list[list[tuple[int, str]]] = []
        survey = threading.Thread(
            target=lambda: found.append(process.wait_for_execs(instances, "qemu", 30))
        )
        survey.start()
        time.sleep(0.5)
        assert survey.is_alive()  # the launcher is not QEMU yet: the survey waits
        assert launcher.stdin is not None
        launcher.stdin.write(b"go\n")
        launcher.stdin.close()
        survey.join(timeout=30)
        assert found == [[]]  # it is QEMU now
        assert process.find_qemus(instances, "qemu") == {"default/vm-a": [launcher.pid]}
    finally:
        launcher.kill()
        launcher.wait()
