"""vmid under a real systemd: `make install` in a booted container (tests/nspawn.py), then every
`systemctl` verb a user runs, with the fake QEMU (tests/fakeqemu.py)."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests import nspawn
from tests.daemon import manifest

# The first test also waits for the container: the wheels and the test guest (downloaded on a
# fresh machine), `make install`.
pytestmark = [pytest.mark.timeout(600)]

FAKE_QEMU = f"{nspawn.SOURCE}/tests/fakeqemu.py"
GUEST = "/srv/guest.qcow2"
GUEST_IMAGE = "vmid-tests/guest:1"
REAL_VMI = f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vm-real
spec:
  terminationGracePeriodSeconds: 120
  domain:
    memory: {{guest: 128Mi}}
    devices:
      autoattachPodInterface: false
      disks: [{{name: root, disk: {{bus: virtio}}}}]
  volumes: [{{name: root, containerDisk: {{image: "{GUEST_IMAGE}"}}}}]
"""


@functools.cache
def _unavailable() -> str | None:
    return nspawn.unavailable()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    """One booted container for the module, with vmid installed by `make install`."""
    if reason := _unavailable():
        pytest.skip(reason)
    wheels = nspawn.wheels()
    workdir = tmp_path_factory.mktemp("nspawn")
    guest = workdir / "guest.qcow2"  # for the one test with a real QEMU
    build = nspawn.REPO / "tests/guest/build.sh"
    subprocess.run(["bash", str(build), str(guest)], check=True, timeout=900)
    name = f"vmid-test-{os.getpid()}"
    binds = (f"--bind-ro={wheels}:{nspawn.WHEELS}", f"--bind-ro={guest}:{GUEST}")
    with nspawn.booted(name, workdir, binds) as box:
        box.copy_in(nspawn.REPO, nspawn.SOURCE)
        box.run(
            "env",
            "PIP_NO_INDEX=1",
            f"PIP_FIND_LINKS={nspawn.WHEELS}",
            "make",
            "-C",
            nspawn.SOURCE,
            "install",
            timeout=600,
        )
        yield box


def test_make_install_puts_everything_in_place(container: nspawn.Container) -> None:
    assert container.run("vmid", "version").stdout.startswith("vmid version ")
    target = container.run("readlink", "-f", "/usr/local/bin/vmid").stdout.strip()
    assert target == "/opt/vmid/bin/vmid"
    # The unit's ExecStart= is what make install made.
    exec_start = container.show("vmid.service", "ExecStart")
    assert "path=/usr/local/bin/vmid" in exec_start, exec_start
    assert container.run("test", "-d", "/etc/vmid/instances", check=False).returncode == 0
    assert "accelerator" in container.run("cat", "/etc/vmid/vmid.yaml").stdout
    for page in ("/usr/local/share/man/man8/vmid.8", "/usr/local/share/man/man5/vmid.yaml.5"):
        assert container.run("test", "-s", page, check=False).returncode == 0, page
    assert container.run("getent", "group", "kvm", check=False).returncode == 0
    assert container.show("vmid.service", "LoadState") == "loaded"
    # Every directive known, ExecStart= there, and the man pages Documentation= names found.
    verify = container.run("systemd-analyze", "verify", "vmid.service", check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == "", verify.stderr
    assert container.show("vmid.service", "UnitFileState") == "disabled"


DROP_IN = "/run/systemd/system/vmid.service.d/test.conf"
STATUS = "status.json"


def config(extra: str = "") -> str:
    return f"accelerator: tcg\nqemu: {FAKE_QEMU}\n{extra}"


def start(box: nspawn.Container, settings: str, manifests: dict[str, str], unit: str = "") -> None:
    """vmid started afresh by `systemctl start`, with `settings` as vmid.yaml, `manifests` (file:
    text) as its spool and `unit` as a runtime drop-in of vmid.service (or none). What an
    earlier test left goes first, the way a user removes it: its manifests (vmid powers each VM
    off, whatever onDaemonStop says, and its scope goes with it), then `systemctl stop`."""
    if box.show("vmid.service", "ActiveState") == "active":
        box.sh("rm -f /etc/vmid/instances/*")
        box.wait_for("no VMI left", lambda: not box.sh(f"find /run/vmid/namespaces -name {STATUS}"))
    box.sh(
        "systemctl stop vmid; systemctl reset-failed\n"
        f"rm -rf /etc/vmid/instances/* /run/vmid /var/lib/vmid /var/log/vmid {DROP_IN}\n"
    )
    if unit:
        box.write(DROP_IN, f"[Service]\n{unit}")
    box.systemctl("daemon-reload")
    box.write("/etc/vmid/vmid.yaml", settings)
    for file, text in manifests.items():
        box.write(f"/etc/vmid/instances/{file}", text)
    box.systemctl("start", "vmid")


def vmid(box: nspawn.Container, *args: str) -> str:
    return box.run("vmid", *args, check=False).stdout.strip()


def qemu_pid(box: nspawn.Container, name: str) -> int:
    return int(vmid(box, "get", name, "-o", "jsonpath={.status.qemu.pid}"))


def alive(box: nspawn.Container, pid: int) -> bool:
    return box.run("kill", "-0", str(pid), check=False).returncode == 0


def phase(box: nspawn.Container, name: str) -> str:
    return vmid(box, "get", name, "-o", "jsonpath={.status.phase}")


def restarted(box: nspawn.Container, old_pid: str) -> bool:
    """vmid.service runs again, as another process than `old_pid`, and said READY."""
    pid = box.show("vmid.service", "MainPID")
    return pid not in ("0", old_pid) and box.show("vmid.service", "ActiveState") == "active"


def test_enable_now_starts_it_ready_with_its_status(container: nspawn.Container) -> None:
    box = container
    box.write("/etc/vmid/vmid.yaml", config())
    box.write("/etc/vmid/instances/a.yaml", manifest("vm-a"))
    box.write("/etc/vmid/instances/b.yaml", manifest("vm-b"))
    box.write("/etc/vmid/instances/c.yaml", manifest("vm-c", memory="lots"))  # a VMI refused
    box.write("/etc/vmid/instances/d.yaml", "{{{ not yaml")  # a file refused: a row <d.yaml>
    # Type=notify: `enable --now` returns once vmid said READY=1, its VMIs Running or Failed.
    box.systemctl("enable", "--now", "vmid")
    assert box.show("vmid.service", "ActiveState") == "active"
    assert box.show("vmid.service", "UnitFileState") == "enabled"
    assert phase(box, "vm-a") == phase(box, "vm-b") == "Running"
    status = box.systemctl("status", "vmid")
    # vmid get shows 2 Failed rows (vm-c and <d.yaml>): so does systemctl status.
    assert 'Status: "2 running, 2 failed"' in status, status
    table = vmid(box, "get")
    assert table.count(" Failed ") == 2, table


def test_reload_rereads_the_config_and_restart_keeps_the_vms(
    container: nspawn.Container,
) -> None:
    """The README's upgrade: `onDaemonStop: keep`, reload, `systemctl restart vmid`."""
    box = container
    start(box, config(), {"a.yaml": manifest("vm-a"), "b.yaml": manifest("vm-b")})
    pids = {name: qemu_pid(box, name) for name in ("vm-a", "vm-b")}
    box.write("/etc/vmid/vmid.yaml", config("onDaemonStop: keep\n"))
    since = box.sh("date +@%s").strip()
    box.systemctl("reload", "vmid")
    journal = ("-u", "vmid", "-o", "cat", "--since", since)
    box.wait_for("the reload", lambda: "configuration reloaded" in box.journal(*journal))
    daemon = box.show("vmid.service", "MainPID")
    box.systemctl("restart", "vmid")
    assert restarted(box, daemon)
    for name, pid in pids.items():
        assert qemu_pid(box, name) == pid, f"{name} was not re-adopted"
        assert alive(box, pid)
        assert phase(box, name) == "Running"
    assert box.show("vmid.service", "StatusText") == "2 running"


def test_stop_powers_every_vm_off_within_its_grace(container: nspawn.Container) -> None:
    """vmid extends systemd's stop timeout to the longest grace: a guest that takes 6 s to power
    off is killed neither by a TimeoutStopSec= of 2 s nor by the watchdog (2 s too)."""
    box = container
    slow = manifest("vm-slow", mode="delay-6", grace=30)
    drop_in = "TimeoutStopSec=2\nWatchdogSec=2\n"
    start(box, config(), {"a.yaml": manifest("vm-a"), "s.yaml": slow}, drop_in)
    pids = [qemu_pid(box, "vm-a"), qemu_pid(box, "vm-slow")]
    since = box.sh("date +@%s").strip()
    box.systemctl("stop", "vmid")
    assert box.show("vmid.service", "Result") == "success"
    assert box.show("vmid.service", "ActiveState") == "inactive"
    assert not any(alive(box, pid) for pid in pids)
    journal = box.journal("-u", "vmid", "-o", "cat", "--since", since)
    assert "Killing" not in journal, journal
    assert "timed out" not in journal, journal
    assert "Watchdog" not in journal, journal
    # Both guests powered off (ACPI): Succeeded, not killed after a grace (Failed).
    assert phase(box, "vm-a") == phase(box, "vm-slow") == "Succeeded"


def test_restart_powers_the_vms_off_and_starts_them_again(container: nspawn.Container) -> None:
    """`systemctl restart vmid` with `onDaemonStop: stop` (the default): as a reboot does."""
    box = container
    start(box, config(), {"a.yaml": manifest("vm-a")})
    pid = qemu_pid(box, "vm-a")
    box.systemctl("restart", "vmid")
    assert phase(box, "vm-a") == "Running"
    assert qemu_pid(box, "vm-a") != pid
    assert not alive(box, pid)


def test_a_killed_daemon_is_restarted_and_readopts(container: nspawn.Container) -> None:
    box = container
    start(box, config(), {"a.yaml": manifest("vm-a")})
    pid = qemu_pid(box, "vm-a")
    daemon = box.show("vmid.service", "MainPID")
    restarts = int(box.show("vmid.service", "NRestarts"))
    box.run("kill", "-KILL", daemon)
    box.wait_for("systemd to restart vmid", lambda: restarted(box, daemon))
    assert int(box.show("vmid.service", "NRestarts")) == restarts + 1
    assert qemu_pid(box, "vm-a") == pid
    assert phase(box, "vm-a") == "Running"


def test_the_watchdog_restarts_a_hung_daemon_and_its_vms_survive(
    container: nspawn.Container,
) -> None:
    box = container
    start(box, config(), {"a.yaml": manifest("vm-a")}, "WatchdogSec=2\n")
    pid = qemu_pid(box, "vm-a")
    daemon = box.show("vmid.service", "MainPID")
    box.run("kill", "-STOP", daemon)
    box.wait_for("the watchdog to restart vmid", lambda: restarted(box, daemon), timeout=60)
    assert "Watchdog timeout" in box.journal("-u", "vmid", "-o", "cat")
    assert qemu_pid(box, "vm-a") == pid
    assert alive(box, pid)
    assert phase(box, "vm-a") == "Running"


def test_a_real_qemu_runs_under_the_units_sandbox_and_stop_powers_it_off(
    container: nspawn.Container,
) -> None:
    """The unit's hardening (capabilities, system calls, devices, ProtectProc=) lets a real QEMU
    (TCG) boot the test guest as a uid of its own, and `systemctl stop` powers it off (ACPI)."""
    box = container
    start(box, "accelerator: tcg\n", {})
    box.run("vmid", "image", "import", GUEST_IMAGE, GUEST)
    box.write("/etc/vmid/instances/real.yaml", REAL_VMI)
    box.wait_for("the guest", lambda: "VMID-GUEST: ready" in vmid(box, "logs", "vm-real"), 300)
    pid = qemu_pid(box, "vm-real")
    fields = dict(
        line.split(":", 1) for line in box.run("cat", f"/proc/{pid}/status").stdout.splitlines()
    )
    uid = vmid(box, "get", "vm-real", "-o", "jsonpath={.status.qemu.uid}")
    assert int(uid) >= 90000
    assert fields["Uid"].split() == [uid] * 4
    assert fields["Seccomp"].strip() == "2"
    box.systemctl("stop", "vmid", timeout=300)
    assert box.show("vmid.service", "Result") == "success"
    assert phase(box, "vm-real") == "Succeeded"
    assert "powering off" in vmid(box, "logs", "vm-real")  # the guest's own ACPI handler


def test_make_uninstall_removes_what_make_install_put_but_the_configuration(
    container: nspawn.Container,
) -> None:
    box = container
    start(box, config(), {"a.yaml": manifest("vm-a")})
    pid = qemu_pid(box, "vm-a")
    box.run("make", "-C", nspawn.SOURCE, "uninstall")
    assert box.show("vmid.service", "LoadState") == "not-found"
    assert not alive(box, pid)  # stopped as `systemctl stop` does (onDaemonStop: stop)
    for path in ("/opt/vmid", "/usr/local/bin/vmid", "/usr/local/share/man/man8/vmid.8"):
        assert box.run("test", "-e", path, check=False).returncode == 1, path
    assert box.run("test", "-f", "/etc/vmid/instances/a.yaml", check=False).returncode == 0
