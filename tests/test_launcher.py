"""QEMU's launch through setpriv: the uid it runs as, and the instant setpriv runs between the
daemon's fork and QEMU's exec (a daemon killed then must not lose that QEMU)."""

from __future__ import annotations

import json
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


_NAMED = """
import json, subprocess, sys
from vmid.errors import IdentityError
from vmid.host import identity
user = identity.QemuUser("VMI default/a's QEMU (uid 90123)", 90123, 90123, ())
ran = subprocess.run(identity.launch_argv(user, ["id", "-u"]), capture_output=True, text=True)
try:
    identity.check_unambiguous(user)
    refused = ""
except IdentityError as exc:
    refused = str(exc)
print(json.dumps([ran.stdout.strip(), refused, identity._named(90123), identity._named(90124)]))
"""


def test_a_user_named_by_a_vmis_uid_is_refused_not_run_as(tmp_path: Path) -> None:
    """setpriv looks `--reuid=90123` up as a name first: a user named "90123" (LDAP, sssd, a
    careless useradd) would have QEMU run as that user's uid. Seen in a mount namespace of
    the test's own, /etc/passwd bound over with a copy holding such a user."""
    passwd = tmp_path / "passwd"
    passwd.write_text(
        Path("/etc/passwd").read_text() + "90123:x:4242:4242::/nonexistent:/bin/false\n"
    )
    script = f'mount --bind {passwd} /etc/passwd && exec {sys.executable} -c "$0"'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, _NAMED],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=True,
    )
    ran_as, refused, taken, free = json.loads(done.stdout)
    assert ran_as == "4242"  # the attack: setpriv took the name
    assert 'a user or group of this host is named "90123"' in refused  # vmid refuses the launch
    assert taken is True  # and never gives out such a uid
    assert free is False
