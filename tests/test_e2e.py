"""End to end with everything real: the daemon, QEMU (TCG) and the test guest (tests/guest).

The daemon runs in a network namespace of its own (`unshare --net`): QEMU creates the taps of
the pod network there, never on this host's interfaces.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import rfb
from tests.conftest import EXAMPLES
from tests.daemon import Daemon, running_daemon
from vmid.config import QemuUids
from vmid.host import unixsock

GUEST = Path(__file__).parent / "guest"
SEED = EXAMPLES / "seed-testvmi-nocloud.yaml"
SEED_IMAGE = "kubevirt/fedora-cloud-container-disk-demo:latest"
UNSHARE = ("unshare", "--net", "--")

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="taps need root (in a private netns)"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("guest") / "guest.qcow2"
    subprocess.run(["bash", str(GUEST / "build.sh"), str(image)], check=True, timeout=900)
    return image


@pytest.fixture
def daemon(tmp_path: Path, guest_image: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path, "accelerator: tcg\n", prefix=UNSHARE) as daemon:
        imported = daemon.vmid("image", "import", SEED_IMAGE, str(guest_image))
        assert imported.returncode == 0, imported.stderr
        yield daemon


def ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet (it was an earlier daemon's child)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def console(daemon: Daemon, name: str) -> str:
    return daemon.vmid("logs", name).stdout


def seed_text(name: str, grace: int = 30, user_data: str = "") -> str:
    text = SEED.read_text().replace("name: testvmi-nocloud", f"name: {name}")
    text = text.replace(
        "terminationGracePeriodSeconds: 30", f"terminationGracePeriodSeconds: {grace}"
    )
    return text.replace("        password: fedora", f"        password: fedora{user_data}")


def test_seed_boots_sees_cloud_init_and_powers_off_on_removal(daemon: Daemon) -> None:
    file = daemon.drop("seed.yaml", SEED.read_text())
    daemon.wait_phase("testvmi-nocloud", "Running")
    daemon.wait_for(
        "the guest", lambda: "VMID-GUEST: ready" in console(daemon, "testvmi-nocloud"), timeout=120
    )
    status = daemon.status("testvmi-nocloud")
    assert status is not None
    uuid = status["spec"]["domain"]["firmware"]["uuid"]
    log = console(daemon, "testvmi-nocloud")
    assert f"VMID-GUEST: instance-id={uuid}" in log
    assert "VMID-GUEST: hostname=testvmi-nocloud" in log
    assert "VMID-GUEST: user-data: password: fedora" in log
    assert os.path.isabs(status["status"]["qemu"]["qmpSocket"])
    rebooted = daemon.vmid("soft-reboot", "testvmi-nocloud")
    assert rebooted.returncode == 0, rebooted.stderr
    daemon.wait_for(
        "the reboot",
        lambda: console(daemon, "testvmi-nocloud").count("VMID-GUEST: ready") == 2,
        timeout=120,
    )
    after = daemon.status("testvmi-nocloud")
    assert after is not None
    assert after["status"]["phase"] == "Running"
    assert after["status"]["qemu"]["pid"] == status["status"]["qemu"]["pid"]
    attached = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmid.cli",
            "console",
            "testvmi-nocloud",
            "--root",
            str(daemon.root),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert attached.stderr is not None
    greeting = attached.stderr.readline()  # printed once connected
    assert b"Successfully connected to testvmi-nocloud console" in greeting
    file.unlink()
    daemon.wait_phase("testvmi-nocloud", None, timeout=60)
    assert "testvmi-nocloud: ended Succeeded the guest powered off" in daemon.log_text()
    assert "VMID-GUEST: powering off" in console(daemon, "testvmi-nocloud")
    out, _ = attached.communicate(timeout=30)  # the console ends with the VM
    assert b"VMID-GUEST: powering off" in out


def test_guest_ignoring_acpi_is_killed_after_its_grace(daemon: Daemon) -> None:
    daemon.drop(
        "deaf.yaml", seed_text("deaf", grace=3, user_data="\n        # vmid-test: ignore-acpi")
    )
    daemon.wait_for(
        "the guest", lambda: "VMID-GUEST: ready" in console(daemon, "deaf"), timeout=120
    )
    (daemon.spool / "deaf.yaml").unlink()
    daemon.wait_phase("deaf", None, timeout=60)
    assert "VMID-GUEST: power button ignored" in console(daemon, "deaf")
    assert "deaf: ended Failed the guest did not power off within the grace period" in (
        daemon.log_text()
    )


def test_real_qemu_killed_from_outside_ends_failed_and_edits_restart(daemon: Daemon) -> None:
    daemon.drop("a.yaml", seed_text("vm-a"))
    daemon.wait_phase("vm-a", "Running")
    status = daemon.status("vm-a")
    assert status is not None
    os.kill(status["status"]["qemu"]["pid"], signal.SIGKILL)
    daemon.wait_phase("vm-a", "Failed")
    assert daemon.reason("vm-a") == ("QEMU ended unexpectedly: killed by SIGKILL")
    daemon.drop("a.yaml", seed_text("vm-a").replace("memory: 1024M", "memory: 512M"))

    def restarted() -> bool:
        data = daemon.status("vm-a") or {}
        argv = data.get("status", {}).get("qemu", {}).get("argv", [])
        return data.get("status", {}).get("phase") == "Running" and "489" in argv

    daemon.wait_for("the restart with the new spec", restarted)


MINIMAL = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: tools}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    memory: {guest: 64Mi}
    devices: {autoattachPodInterface: false}
"""


def test_qmp_pause_unpause_reset_and_screenshot(daemon: Daemon, tmp_path: Path) -> None:
    daemon.drop("tools.yaml", MINIMAL)
    daemon.wait_phase("tools", "Running")
    status = daemon.vmid("qmp", "tools", "query-status")
    assert status.returncode == 0, status.stderr
    assert '"status": "running"' in status.stdout

    def paused(kind: str = "Paused") -> str:
        data = daemon.status("tools") or {}
        conditions = {c["type"]: c for c in data.get("status", {}).get("conditions", [])}
        return str(conditions.get(kind, {}).get("status"))

    assert daemon.vmid("pause", "tools").returncode == 0
    daemon.wait_for("the Paused condition", lambda: paused() == "True")
    assert paused("Ready") == "False"  # KubeVirt's virtual-machine-unpaused readiness gate
    again = daemon.vmid("pause", "tools")
    assert (again.returncode, again.stderr.strip()) == (1, "vmid: VMI tools is already paused")
    assert daemon.vmid("unpause", "tools").returncode == 0
    daemon.wait_for("Paused=False", lambda: paused() == "False")
    assert paused("Ready") == "True"
    assert daemon.vmid("reset", "tools").returncode == 0
    shot = tmp_path / "screen.png"

    def screen() -> tuple[int, int]:
        saved = daemon.vmid("screenshot", "tools", str(shot))
        assert saved.returncode == 0, saved.stderr
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")

    # Right after the reset, VGA's first surface (640x480) until the firmware sets text mode:
    # VGA text mode, 80x25 cells of 9x16 pixels.
    daemon.wait_for("the text-mode screen", lambda: screen() == (720, 400))
    # `vmid vnc`: test_vnc_asks_for_the_one_time_password_only_vmid_vnc_printed.
    bad = daemon.vmid("qmp", "tools", "no-such-command")
    assert bad.returncode == 1
    assert "CommandNotFound" in bad.stderr
    missing = daemon.vmid("pause", "nope")
    assert missing.returncode == 1
    assert "not found" in missing.stderr


def test_vnc_asks_for_the_one_time_password_only_vmid_vnc_printed(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "accelerator: tcg\n", prefix=UNSHARE) as daemon:
        daemon.drop("tools.yaml", MINIMAL)  # no disk: QEMU's display is all this needs
        daemon.wait_phase("tools", "Running")
        viewer = subprocess.Popen(
            [sys.executable, "-m", "vmid.cli", "vnc", "tools", "--root", str(daemon.root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert viewer.stdout is not None
            port = int(viewer.stdout.readline().decode().split("127.0.0.1:")[1].split()[0])
            # Another local user connects to the port and guesses.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as attacker:
                assert rfb.login(attacker, b"guess") == "refused"
            password = viewer.stdout.readline().decode().split("password: ")[1].split()[0]
            assert len(password) == 8
            with socket.create_connection(("127.0.0.1", port), timeout=10) as user:
                assert rfb.login(user, password.encode()) == "accepted"
        finally:
            viewer.send_signal(signal.SIGTERM)
            _, errors = viewer.communicate(timeout=10)
        assert viewer.returncode == 0, errors
        status = daemon.status("tools")
        assert status is not None
        with unixsock.connect(Path(status["status"]["qemu"]["vncSocket"])) as late:
            assert rfb.login(late, password.encode()) == "refused"  # expired with vmid vnc
        shot = daemon.vmid("screenshot", "tools", str(tmp_path / "screen.png"))
        assert shot.returncode == 0, shot.stderr
        assert (tmp_path / "screen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_qemu_is_re_adopted_by_a_restarted_daemon(tmp_path: Path) -> None:
    keep = "accelerator: tcg\nonDaemonStop: keep\n"
    with running_daemon(tmp_path, keep, prefix=UNSHARE) as daemon:
        daemon.drop("tools.yaml", MINIMAL)
        daemon.wait_phase("tools", "Running")
        pid = daemon.pid("tools")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
    try:
        with running_daemon(tmp_path, "accelerator: tcg\n", prefix=UNSHARE) as again:
            again.wait_for(
                "the re-adoption", lambda: f"re-adopted qemu pid={pid}" in again.log_text()
            )
            paused = again.vmid("pause", "tools")
            assert paused.returncode == 0, paused.stderr  # its qmp.sock still works
            (again.spool / "tools.yaml").unlink()
            again.wait_phase("tools", None)
        assert ended(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_qemu_runs_unprivileged_under_seccomp_with_private_sockets(
    tmp_path: Path, guest_image: Path
) -> None:
    with running_daemon(tmp_path, "accelerator: tcg\n") as daemon:  # unprivileged by default
        imported = daemon.vmid("image", "import", SEED_IMAGE, str(guest_image))
        assert imported.returncode == 0, imported.stderr
        daemon.drop("seed.yaml", seed_text("low", grace=30))
        daemon.wait_phase("low", "Running")
        daemon.wait_for(
            "the guest", lambda: "VMID-GUEST: ready" in console(daemon, "low"), timeout=120
        )
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{daemon.pid('low')}/status").read_text()
            .splitlines()
        )  # fmt: skip
        uid = daemon.status("low")["status"]["qemu"]["uid"]  # type: ignore[index]
        assert QemuUids().first <= uid < QemuUids().first + QemuUids().count  # its very own
        assert fields["Uid"].split() == [str(uid)] * 4  # real, effective, saved, fs
        assert fields["Gid"].split() == [str(uid)] * 4
        kvm = [str(group.gr_gid) for group in grp.getgrall() if group.gr_name == "kvm"]
        assert fields["Groups"].split() == kvm  # nothing of root's; kvm, if any, for /dev/kvm
        assert fields["Seccomp"].strip() == "2"  # a seccomp filter (-sandbox on)
        assert fields["NoNewPrivs"].strip() == "1"
        runtime = tmp_path / "run/vmid/namespaces/default/low"
        for name in ("qmp.sock", "console.sock", "vnc.sock"):
            info = (runtime / "qemu" / name).stat()
            assert (info.st_uid, info.st_mode & 0o777) == (uid, 0o600), name
        # Its disks, ISO and image it gets by fd: they and their directories stay root's and
        # closed to it; the image store too.
        state = tmp_path / "var/lib/vmid/namespaces/default/low"
        assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (0, 0o700)
        for disk in [*state.glob("disks/*"), *state.glob("cloud-init/*")]:
            assert disk.stat().st_uid == 0, disk
        images = tmp_path / "var/lib/vmid/images"
        assert (images.stat().st_uid, images.stat().st_mode & 0o777) == (0, 0o700)
        logs = (
            tmp_path / "var/log/vmid/namespaces/default/low"
        )  # QEMU writes its logs through pipes: all root's
        for path in (logs, logs / "console.log", logs / "qemu.log"):
            assert (path.stat().st_uid, path.stat().st_mode & 0o077) == (0, 0), path
        assert (runtime.stat().st_uid, (runtime / "status.json").stat().st_uid) == (0, 0)
        own = (runtime / "qemu").stat()  # its working directory
        assert (own.st_uid, own.st_mode & 0o777) == (uid, 0o700)
        # The tools still work: root reaches the sockets, the screenshot comes back to root.
        assert daemon.vmid("qmp", "low", "query-status").returncode == 0
        shot = daemon.vmid("screenshot", "low", str(tmp_path / "low.png"))
        assert shot.returncode == 0, shot.stderr
        assert (tmp_path / "low.png").read_bytes().startswith(b"\x89PNG")
        (daemon.spool / "seed.yaml").unlink()
        daemon.wait_phase("low", None, timeout=60)
        assert "the guest powered off" in daemon.log_text()


def test_an_unprivileged_qemu_gets_a_root_only_hostdisk_by_fd(tmp_path: Path) -> None:
    disks = tmp_path / "disks"
    disks.mkdir()
    private = disks / "private.img"
    private.write_bytes(b"\0" * 1024 * 1024)
    private.chmod(0o600)  # root's
    config = f"accelerator: tcg\nhostDiskRoots: [{disks}]\n"
    manifest = f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: hd}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    memory: {{guest: 64Mi}}
    devices:
      autoattachPodInterface: false
      disks: [{{name: data, disk: {{bus: virtio}}}}]
  volumes: [{{name: data, hostDisk: {{path: {private}, type: Disk}}}}]
"""
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("hd.yaml", manifest)
        daemon.wait_phase("hd", "Running")
        (daemon.spool / "hd.yaml").unlink()
        daemon.wait_phase("hd", None)
    assert private.stat().st_uid == 0  # vmid never takes a user's file away from them


def test_a_253_character_name_gets_working_sockets(tmp_path: Path) -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    text = f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    memory: {{guest: 64Mi}}
    devices: {{autoattachPodInterface: false}}
"""
    with running_daemon(tmp_path, "accelerator: tcg\n") as daemon:
        daemon.drop("long.yaml", text)
        daemon.wait_phase(name, "Running")
        socket_path = tmp_path / "run/vmid/namespaces/default" / name / "qemu/qmp.sock"
        assert len(str(socket_path).encode()) > 108  # longer than sun_path holds
        done = daemon.vmid("qmp", name, "query-status")
        assert done.returncode == 0, done.stderr
        assert '"running"' in done.stdout
        (daemon.spool / "long.yaml").unlink()
        daemon.wait_phase(name, None)


def test_a_disk_vmid_creates_is_roots_and_outlives_its_vmi_and_its_uid(tmp_path: Path) -> None:
    """QEMU writes it through the fd vmid passes; a VMI's uid is released with the VMI, so a
    disk that outlives it must not be that uid's (the next VMI given the uid would own it)."""
    disks = tmp_path / "disks"
    disks.mkdir()
    created = disks / "new.img"
    config = f"accelerator: tcg\nhostDiskRoots: [{disks}]\n"
    manifest = f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: created}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    memory: {{guest: 64Mi}}
    devices:
      autoattachPodInterface: false
      disks: [{{name: data, disk: {{bus: virtio}}}}]
  volumes: [{{name: data, hostDisk: {{path: {created}, type: DiskOrCreate, capacity: 64Mi}}}}]
"""
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("c.yaml", manifest)
        daemon.wait_phase("created", "Running")
        info = created.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600)
        assert daemon.status("created")["status"]["qemu"]["uid"] != 0  # type: ignore[index]
        assert info.st_size == 64 * 1024 * 1024
        (daemon.spool / "c.yaml").unlink()
        daemon.wait_phase("created", None)
    assert created.exists()  # a hostDisk outlives its VMI


def test_a_disk_that_cannot_grow_pauses_the_guest_paused_io_error(
    tmp_path: Path, guest_image: Path
) -> None:
    """A hostDisk on a 1 MiB tmpfs: the guest writes it full, QEMU (werror=stop) stops it."""
    disks = tmp_path / "disks"
    disks.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disks)], check=True)
    manifest = f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: full}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    memory: {{guest: 128Mi}}
    devices:
      autoattachPodInterface: false
      disks:
      - {{name: containerdisk, disk: {{bus: virtio}}}}
      - {{name: data, serial: FILLME, disk: {{bus: virtio}}}}
      - {{name: cloudinitdisk, disk: {{bus: virtio}}}}
  volumes:
  - {{name: containerdisk, containerDisk: {{image: "{SEED_IMAGE}"}}}}
  - {{name: data, hostDisk: {{path: {disks}/data.img, type: DiskOrCreate, capacity: 16Mi}}}}
  - name: cloudinitdisk
    cloudInitNoCloud: {{userData: "#cloud-config\\n# vmid-test-fill: FILLME\\n"}}
"""
    try:
        config = f"accelerator: tcg\nhostDiskRoots: [{disks}]\n"
        with running_daemon(tmp_path, config, prefix=UNSHARE) as daemon:
            imported = daemon.vmid("image", "import", SEED_IMAGE, str(guest_image))
            assert imported.returncode == 0, imported.stderr

            def paused() -> dict[str, str]:
                data = daemon.status("full") or {}
                conditions = {c["type"]: c for c in data.get("status", {}).get("conditions", [])}
                condition: dict[str, str] = conditions.get("Paused", {})
                return condition | {"ready": conditions["Ready"]["status"]}

            daemon.drop("full.yaml", manifest)
            daemon.wait_phase("full", "Running")
            daemon.wait_for("the I/O error", lambda: paused().get("status") == "True", timeout=120)
            assert "VMID-GUEST: filling vd" in console(daemon, "full")
            assert paused() == paused() | {
                "reason": "PausedIOError",
                "message": "VMI was paused, low-level IO error detected: "
                "disk 'data': write failed: No space left on device",
                "ready": "False",
            }
            query = daemon.vmid("qmp", "full", "query-status")
            assert '"status": "io-error"' in query.stdout
            (daemon.spool / "full.yaml").unlink()
            daemon.wait_phase("full", None)
    finally:
        subprocess.run(["umount", str(disks)], check=False)


def test_a_vm_whose_guest_powers_off_comes_back_with_its_uuid(daemon: Daemon) -> None:
    """Run strategy Always with the real guest: it powers itself off (the ACPI button, which
    the guest answers with `poweroff -f`: QEMU's SHUTDOWN, guest: true), and a new VMI boots
    with a new QEMU and the same firmware UUID, so the same cloud-init instance-id."""
    spec = "\n".join(
        "    " + line for line in seed_text("vm-e2e").split("spec:\n", 1)[1].splitlines()
    )
    daemon.drop(
        "vm.yaml",
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: vm-e2e}\n"
        f"spec:\n  runStrategy: Always\n  template:\n    spec:\n{spec}\n",
    )
    daemon.wait_phase("vm-e2e", "Running")
    daemon.wait_for("the guest", lambda: "VMID-GUEST: ready" in console(daemon, "vm-e2e"), 120)
    first = daemon.status("vm-e2e") or {}
    uuid, pid = first["spec"]["domain"]["firmware"]["uuid"], first["status"]["qemu"]["pid"]
    assert f"VMID-GUEST: instance-id={uuid}" in console(daemon, "vm-e2e")
    done = daemon.vmid("qmp", "vm-e2e", "system_powerdown")  # the guest's own decision
    assert done.returncode == 0, done.stderr
    daemon.wait_for(
        "a new QEMU",
        lambda: (
            (daemon.status("vm-e2e") or first)["status"].get("qemu", {}).get("pid")
            not in (None, pid)
            and daemon.phase("vm-e2e") == "Running"
        ),
        timeout=60,
    )
    again = daemon.status("vm-e2e") or {}
    assert again["spec"]["domain"]["firmware"]["uuid"] == uuid
    assert ended(pid)
    daemon.wait_for(
        "the guest again", lambda: console(daemon, "vm-e2e").count("VMID-GUEST: ready") == 2, 120
    )
    assert console(daemon, "vm-e2e").count(f"VMID-GUEST: instance-id={uuid}") == 2
