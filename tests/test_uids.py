"""Each VMI's QEMU runs as a uid of its own: no VM's QEMU reaches another VM's sockets or files.

The attack: a guest that escapes into its QEMU acts with that QEMU's uid. With one QEMU user
for every VM (the old `qemuUser`) it could drive every other VM's qmp.sock and read their
disks, cloud-init ISOs (passwords) and console logs; as root it could do anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.daemon import Daemon, fake_config, leave_running, manifest, running_daemon
from tests.test_network import links, vmi
from vmid.config import QemuUids, load_config
from vmid.errors import ConfigError, IdentityError
from vmid.host import identity

pytestmark = pytest.mark.timeout(120)

FIRST, COUNT = QemuUids().first, QemuUids().count
#: Tests that expect exact numbers take them from ranges of their own near the default's top:
#: a QEMU some other test left running keeps its uid, rightly, and would shift them.
OWN_RANGE = f"qemuUids: {{first: {FIRST + COUNT - 1000}, count: 100}}\n"

#: Run as the attacker's uid: try to connect to each socket and read each file; say what happened.
PROBE = """
import json, os, socket, sys
result = {}
for path in sys.argv[1:]:
    try:
        if path.endswith(".sock"):
            with socket.socket(socket.AF_UNIX) as client:
                os.chdir(os.path.dirname(path))  # a socket path may be too long for sun_path
                client.connect(os.path.basename(path))
                result[path] = client.recv(64).decode(errors="replace")
        else:
            with open(path, "rb") as stream:
                result[path] = stream.read(64).hex()
    except OSError as exc:
        result[path] = exc.strerror
print(json.dumps(result))
"""


def probe_as(uid: int, gid: int, paths: list[Path]) -> dict[str, str]:
    """What a process running as uid/gid (nothing else) gets when it opens each path."""
    done = subprocess.run(
        ["/usr/bin/python3", "-c", PROBE, *map(str, paths)],
        user=uid,
        group=gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, str] = json.loads(done.stdout)
    return result


def ids(pid: int) -> tuple[list[int], list[int]]:
    """The Uid: and Gid: lines (real, effective, saved, filesystem) of a process."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return [int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()]


def uid_of(daemon: Daemon, name: str) -> int:
    """The uid the VMI's QEMU runs as, from /proc (all four uids and gids the same)."""
    uids, gids = ids(daemon.pid(name))
    assert len(set(uids)) == 1, uids
    assert gids == uids
    return uids[0]


def qemu_pid(daemon: Daemon, name: str) -> int | None:
    pid: int | None = ((daemon.status(name) or {}).get("status") or {}).get("qemu", {}).get("pid")
    return pid


def with_files(name: str) -> str:
    """A VMI with an overlay disk, a cloud-init ISO holding a password, and a console log."""
    return manifest(name).replace(
        "devices: {autoattachPodInterface: false}",
        "devices:\n"
        "      autoattachPodInterface: false\n"
        "      disks: [{name: root, disk: {bus: virtio}}, {name: ci, disk: {bus: virtio}}]\n"
        "  volumes:\n"
        "  - {name: root, containerDisk: {image: example/img:1}}\n"
        "  - {name: ci, cloudInitNoCloud: {userData: '#cloud-config\\npassword: s3cret'}}",
    )


def files_of(root: Path, name: str) -> list[Path]:
    state = root / "var/lib/vmid/namespaces/default" / name
    found = [*state.glob("disks/*"), *state.glob("cloud-init/*")]
    assert len(found) == 2, found  # the overlay and the ISO
    return [
        root / "run/vmid/namespaces/default" / name / "qemu/qmp.sock",
        *found,
        console_log(root, name),
    ]


def console_log(root: Path, name: str) -> Path:
    return root / "var/log/vmid/namespaces/default" / name / "console.log"


def test_each_vmis_qemu_has_its_own_uid_and_cannot_reach_another_vms_sockets_or_files(
    tmp_path: Path,
) -> None:
    image = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    with running_daemon(tmp_path, fake_config()) as daemon:
        assert daemon.vmid("image", "import", "example/img:1", str(image)).returncode == 0
        daemon.drop("a.yaml", with_files("vm-a"))
        daemon.drop("b.yaml", with_files("vm-b"))
        daemon.wait_phase("vm-a", "Running")
        daemon.wait_phase("vm-b", "Running")
        a, b = uid_of(daemon, "vm-a"), uid_of(daemon, "vm-b")
        assert a != b
        assert {a, b} <= set(range(FIRST, FIRST + COUNT))
        assert daemon.status("vm-b")["status"]["qemu"]["uid"] == b  # type: ignore[index]
        # vm-b's QEMU, taken over by its guest, attacks vm-a: every door is shut.
        stolen = probe_as(b, b, files_of(tmp_path, "vm-a"))
        assert set(stolen.values()) == {"Permission denied"}, stolen
        # Its own sockets are open to it (the probe itself works); its disk, ISO and log are
        # not even its own: QEMU got them as fds and pipes.
        own = probe_as(b, b, files_of(tmp_path, "vm-b"))
        assert own.pop(str(files_of(tmp_path, "vm-b")[0])).startswith('{"QMP"')
        assert set(own.values()) == {"Permission denied"}, own
        # The tools (root) still reach both.
        assert daemon.vmid("qmp", "vm-a", "query-status").returncode == 0


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed")
def test_each_vmis_tap_is_its_own_qemus(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        for name in ("web", "db"):
            daemon.drop(f"{name}.yaml", vmi(name))
        for name in ("web", "db"):
            daemon.wait_phase(name, "Running")
            tap = daemon.status(name)["status"]["interfaces"][0]["podInterfaceName"]  # type: ignore[index]
            assert links(daemon)[tap]["linkinfo"]["info_data"]["user"] == uid_of(daemon, name)


def test_the_uid_is_kept_across_a_daemon_restart_and_a_spec_change(tmp_path: Path) -> None:
    left = leave_running(tmp_path, "vm-a")
    pid = left["status"]["qemu"]["pid"]
    uid = ids(pid)[0][0]
    assert uid >= FIRST
    try:
        with running_daemon(tmp_path, fake_config()) as daemon:
            daemon.drop("b.yaml", manifest("vm-b"))  # a newcomer never gets vm-a's uid
            daemon.wait_for("the re-adoption", lambda: "re-adopted" in daemon.log_text())
            daemon.wait_phase("vm-b", "Running")
            assert uid_of(daemon, "vm-b") != uid
            daemon.drop("vm-a.yaml", manifest("vm-a", memory="96Mi"))  # a spec change
            daemon.wait_for("vm-a's restart", lambda: qemu_pid(daemon, "vm-a") not in (None, pid))
            daemon.wait_phase("vm-a", "Running")
            assert uid_of(daemon, "vm-a") == uid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_removed_vmis_uid_is_free_again_only_once_its_files_are_gone(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        uid = uid_of(daemon, "vm-a")
        with pinned(tmp_path / "var/lib/vmid/namespaces/default/vm-a/pinned"):
            (daemon.spool / "a.yaml").unlink()
            daemon.wait_phase("vm-a", None)
            daemon.wait_for("the refusal", lambda: f"uid {uid} stays taken" in daemon.log_text())
            daemon.drop("b.yaml", manifest("vm-b"))
            daemon.wait_phase("vm-b", "Running")
            assert uid_of(daemon, "vm-b") != uid  # a file of vm-a is left: its uid stays taken
        daemon.drop("a.yaml", manifest("vm-a"))  # vm-a again: it finds its own record
        daemon.wait_phase("vm-a", "Running")
        assert uid_of(daemon, "vm-a") == uid
        (daemon.spool / "a.yaml").unlink()
        state = tmp_path / "var/lib/vmid/namespaces/default/vm-a"
        daemon.wait_for("vm-a's files to go", lambda: not state.exists())
        # Its kept log is root's: the next VMI given that uid cannot read it.
        assert console_log(tmp_path, "vm-a").stat().st_uid == 0
        daemon.drop("c.yaml", manifest("vm-c"))
        daemon.wait_phase("vm-c", "Running")
        assert uid_of(daemon, "vm-c") == uid  # nothing of vm-a is left: free again


@contextlib.contextmanager
def pinned(path: Path) -> Iterator[None]:
    """A file in a VMI's directory that even root cannot delete (immutable) while inside."""
    path.write_text("")
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
        path.unlink()


def test_a_crash_after_the_uid_was_recorded_leaves_the_vmi_its_own_uid(tmp_path: Path) -> None:
    # What a daemon killed between recording the uid and launching QEMU leaves behind: the
    # record (the lowest uid would be `first`), and a record cut short before it was synced.
    # Their manifests are still there (one removed meanwhile takes its record with it:
    # tests/test_daemon.py).
    first = FIRST + COUNT - 1000
    spool = tmp_path / "etc/vmid/instances"
    spool.mkdir(parents=True)
    for name, text in (("vm-a", f"{first + 7}\n"), ("vm-b", ""), ("vm-c", "0\n")):
        state = tmp_path / "var/lib/vmid/instances" / name
        state.mkdir(parents=True)
        (state / "uid").write_text(text)
        (spool / f"{name}.yaml").write_text(manifest(name))
    with running_daemon(tmp_path, fake_config(OWN_RANGE)) as daemon:
        for name in ("vm-a", "vm-b", "vm-c"):
            daemon.wait_phase(name, "Running")
        assert uid_of(daemon, "vm-a") == first + 7
        # Nothing used those numbers yet: allocated anew, and a record never makes QEMU root.
        assert {uid_of(daemon, "vm-b"), uid_of(daemon, "vm-c")} == {first, first + 1}


def test_a_process_of_the_vmis_uid_that_vmid_does_not_supervise_blocks_its_launch(
    tmp_path: Path,
) -> None:
    # Whatever runs as a VMI's uid is that VMI's (the uid is its alone): a QEMU vmid lost track
    # of (its directory deleted under it). Never a second QEMU on its disks while it runs.
    uid = FIRST + COUNT - 500
    state = tmp_path / "var/lib/vmid/namespaces/default/vm-a"
    state.mkdir(parents=True)
    (state / "uid").write_text(f"{uid}\n")
    left = subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[])
    try:
        with running_daemon(tmp_path, fake_config()) as daemon:
            # No manifest when it starts: the record would go, were it not for that process.
            assert f"its state stays until it is stopped (kill {left.pid})" in daemon.log_text()
            daemon.drop("a.yaml", manifest("vm-a"))
            daemon.wait_phase("vm-a", "Failed")
            assert f"(pid {left.pid}); vmid will not start a second QEMU" in daemon.reason("vm-a")
            assert left.poll() is None  # left alone: the admin decides
    finally:
        left.kill()
        left.wait()


def test_no_uid_left_fails_that_vmi_saying_so(tmp_path: Path) -> None:
    config = fake_config(f"qemuUids: {{first: {FIRST + COUNT - 900}, count: 1}}\n")
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        daemon.drop("b.yaml", manifest("vm-b"))
        daemon.wait_phase("vm-b", "Failed")
        assert "no uid left for its QEMU: all 1 of qemuUids" in daemon.reason("vm-b")


def test_root_qemu_only_when_asked_and_loudly(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config("qemuAsRoot: true\n")) as daemon:
        warnings = [line for line in daemon.log_text().splitlines() if "WARNING" in line]
        assert any("qemuAsRoot: true: every QEMU runs as root" in line for line in warnings)
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        assert uid_of(daemon, "vm-a") == 0
        warnings = [line for line in daemon.log_text().splitlines() if "WARNING" in line]
        assert any("vm-a: its QEMU runs as root (qemuAsRoot: true" in line for line in warnings)
        assert not (tmp_path / "var/lib/vmid/namespaces/default/vm-a/uid").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("qemuUser: vmid-qemu\n", "qemuUser: no longer supported: each VMI's QEMU now runs as"),
        ("qemuUids: {first: 60000, count: 2000}\n", "overlaps 61184-65519 (systemd's Dynamic"),
        ("qemuUids: {first: 65534}\n", "overlaps 65534-65535 (nobody"),
        ("qemuUids: {first: 0, count: 10}\n", "overlaps 0-999 (root and system users)"),
        ("qemuUids: {first: 2147483000, count: 1000}\n", "all below 2^31"),
        ("qemuUids: {count: 0}\n", "must name at least one uid"),
    ],
)
def test_a_qemu_uid_range_that_others_use_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    file = tmp_path / "vmid.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match="qemuU") as caught:
        load_config(file, required=True)
    assert message in str(caught.value)


async def test_allocation_skips_uids_of_records_processes_and_users(tmp_path: Path) -> None:
    instances, first = tmp_path / "instances", FIRST + COUNT - 800
    sleeper = await trio.lowlevel.open_process(["sleep", "60"], user=first + 1, group=first + 1)
    try:
        got = [identity.allocate(instances / n, first, 3) for n in ("a/x", "b/x", "a/x")]
        assert got == [first, first + 2, first]  # first + 1 is a process's; a keeps its own
        with pytest.raises(IdentityError, match="no uid left"):
            identity.allocate(instances / "c/x", first, 3)
    finally:
        sleeper.kill()
        await sleeper.wait()
    with pytest.raises(IdentityError):
        identity.allocate(instances / "d/x", 0, 1)  # root is a user: never given to a QEMU


def test_the_daemons_kept_records_give_what_reading_every_record_gives(tmp_path: Path) -> None:
    """identity.Records (read once, then kept by allocate and forget) decides as reading every
    VMI's record at each allocation did: a record found at start counts, a forgotten uid is
    given again, and it always holds what the records on disk hold."""
    instances, first = tmp_path / "instances", FIRST + COUNT - 700
    (instances / "old/x").mkdir(parents=True)
    (instances / "old/x/uid").write_text(f"{first}\n")  # before the daemon: read from disk
    records = identity.Records(instances)

    def allocate(name: str) -> int:
        uid = identity.allocate(instances / name, first, 5, {}, records)
        on_disk = {int(p.read_text()) for p in instances.glob("*/*/uid")}
        assert records.taken() == on_disk
        return uid

    assert [allocate("a/x"), allocate("b/x")] == [first + 1, first + 2]
    identity.release(instances / "a/x")
    records.forget(first + 1)
    assert [allocate("c/x"), allocate("d/x"), allocate("e/x")] == [first + 1, first + 3, first + 4]
    with pytest.raises(IdentityError, match="no uid left"):
        allocate("f/x")


def test_a_root_no_qemu_uid_can_reach_is_refused_at_start(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    (closed / "root").mkdir(parents=True)
    closed.chmod(0o700)
    done = subprocess.run(
        [sys.executable, "-m", "vmid.cli", "daemon", "--root", str(closed / "root")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"{closed} (mode 0700) is closed to others" in done.stderr
    assert f"chmod o+x {closed}" in done.stderr


def test_a_launch_makes_qemus_working_directory_anew(tmp_path: Path) -> None:
    # What a uid that had this number before a power loss (its record lost with it: records
    # reach the disk only before the guest runs) may have left in the VMI's QEMU directory, on
    # a root whose run/ is not a tmpfs: nothing of it is the new QEMU's.
    qemu_dir = tmp_path / "run/vmid/namespaces/default/vm-a/qemu"
    qemu_dir.mkdir(parents=True)
    (qemu_dir / "planted").write_text("left by another uid")
    os.symlink("/etc/shadow", qemu_dir / "qmp.sock")
    os.chown(qemu_dir, FIRST + COUNT - 700, FIRST + COUNT - 700)
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        uid = uid_of(daemon, "vm-a")
        assert os.stat(qemu_dir).st_uid == uid
        assert "planted" not in os.listdir(qemu_dir)
        assert not (qemu_dir / "qmp.sock").is_symlink()


def test_a_root_qemu_with_its_own_firmware_uuid_has_no_records_to_sync(tmp_path: Path) -> None:
    # Found in review: no uid record (root) and no UUID file (the manifest's own), so no state
    # directory: the records' sync before `cont` failed the launch on it.
    uuid = "5f5e3a3e-6a7b-4d2c-9a51-0d7b6f2b9c11"
    text = manifest("vm-a").replace(
        "firmware: {serial: obey}", f"firmware: {{serial: obey, uuid: {uuid}}}"
    )
    assert uuid in text
    with running_daemon(tmp_path, fake_config("qemuAsRoot: true\n")) as daemon:
        daemon.drop("a.yaml", text)
        daemon.wait_phase("vm-a", "Running")
