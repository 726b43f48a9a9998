"""Fault injection against the real daemon (fake QEMUs): each fault, then what a user sees.

Every test ends by checking that nothing leaked: no QEMU process of the test's root, no
instance files, no addresses or taps of VMIs that are gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon import Daemon, fake_config, manifest, running_daemon

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, mounts)"),
    pytest.mark.timeout(300),
]


def qemus_of(root: Path) -> dict[str, int]:
    """{VMI name: pid} of every process working in a VMI's QEMU directory under `root`."""
    found = {}
    instances = root / "run/vmid/namespaces/default"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if cwd.parent.parent == instances and cwd.name == "qemu" and state != "Z":
            found[cwd.parent.name] = int(entry.name)
    return found


def assert_nothing_left(root: Path) -> None:
    assert qemus_of(root) == {}
    assert list((root / "run/vmid/namespaces/default").glob("*")) == []
    assert list((root / "var/lib/vmid/instances").glob("*")) == []
    registry = root / "var/lib/vmid/network/attachments.json"
    if registry.exists():
        assert json.loads(registry.read_text())["attachments"] == []


def with_nic(text: str) -> str:
    return text.replace(
        "devices: {autoattachPodInterface: false}",
        "devices: {interfaces: [{name: default, masquerade: {}}]}\n"
        "  networks: [{name: default, pod: {}}]",
    )


def test_a_stopped_qemu_that_cannot_answer_is_killed_at_the_grace(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("frozen", grace=3))
        daemon.wait_phase("frozen", "Running")
        pid = daemon.pid("frozen")
        os.kill(pid, signal.SIGSTOP)  # QMP unresponsive, ACPI never heard
        began = time.monotonic()
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_phase("frozen", None, timeout=30)
        assert time.monotonic() - began >= 3
        assert "grace period of 3 s passed: killing" in daemon.log_text()
        assert_nothing_left(tmp_path)


def test_qemu_img_failing_fails_that_vmi_with_its_message(tmp_path: Path) -> None:
    broken = tmp_path / "qemu-img"
    broken.write_text("#!/bin/sh\necho 'qemu-img: injected failure: I/O error' >&2\nexit 1\n")
    broken.chmod(0o755)
    with running_daemon(tmp_path, fake_config(f"qemuImg: {broken}\n")) as daemon:
        daemon.drop("ok.yaml", manifest("plain"))
        disk = manifest("with-disk").replace(
            "devices: {autoattachPodInterface: false}",
            "devices: {autoattachPodInterface: false, disks: [{name: d, disk: {bus: virtio}}]}\n"
            "  volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]",
        )
        daemon.drop("disk.yaml", disk)
        daemon.wait_phase("with-disk", "Failed")
        daemon.wait_phase("plain", "Running")
        assert "injected failure: I/O error" in daemon.reason("with-disk")
        (daemon.spool / "disk.yaml").unlink()
        (daemon.spool / "ok.yaml").unlink()
        daemon.wait_phase("plain", None)
        daemon.wait_phase("with-disk", None)
        assert_nothing_left(tmp_path)


def test_a_full_state_directory_fails_only_the_vmi_that_needs_space(tmp_path: Path) -> None:
    # A 256 KiB tmpfs on the state directory, in a mount namespace of the daemon's own.
    mount = (
        'mkdir -p "$0/var/lib/vmid" && '
        'mount -t tmpfs -o size=256k,mode=0711 tmpfs "$0/var/lib/vmid" && exec "$@"'
    )
    prefix = ("unshare", "--net", "--mount", "--", "sh", "-c", mount, str(tmp_path))
    efi = manifest("efi").replace(
        "    firmware: {serial: obey}",
        "    firmware: {serial: obey, bootloader: {efi: {secureBoot: false}}}",
    )
    with running_daemon(tmp_path, fake_config(), prefix=prefix) as daemon:
        daemon.drop("ok.yaml", manifest("plain"))
        daemon.wait_phase("plain", "Running")  # (while efi fills it, even a uid record fails)
        daemon.drop("efi.yaml", efi)  # its 528 KiB of UEFI variables do not fit
        daemon.wait_phase("efi", "Failed")
        assert daemon.phase("plain") == "Running"
        assert "No space left on device" in daemon.reason("efi")
        (daemon.spool / "efi.yaml").unlink()
        daemon.wait_phase("efi", None)
        daemon.drop("later.yaml", manifest("later"))  # the daemon goes on as before
        daemon.wait_phase("later", "Running")


def test_a_missing_or_removed_image_fails_that_vmi(tmp_path: Path) -> None:
    image = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    with running_daemon(tmp_path, fake_config()) as daemon:
        assert daemon.vmid("image", "import", "example/img:1", str(image)).returncode == 0
        (stored,) = (tmp_path / "var/lib/vmid/images/sha256").glob("*/disk.img")
        stored.unlink()  # its metadata is left: the store says it has the image
        vmi = manifest("corrupt").replace(
            "devices: {autoattachPodInterface: false}",
            "devices: {autoattachPodInterface: false, disks: [{name: d, disk: {bus: virtio}}]}\n"
            "  volumes: [{name: d, containerDisk: {image: example/img:1}}]",
        )
        daemon.drop("c.yaml", vmi)
        missing = vmi.replace("corrupt", "missing").replace("img:1", "img:2")
        daemon.drop("m.yaml", missing.replace("img:2}", "img:2, imagePullPolicy: Never}"))
        daemon.drop("ok.yaml", manifest("plain"))
        daemon.wait_phase("corrupt", "Failed")
        daemon.wait_phase("missing", "Failed")
        daemon.wait_phase("plain", "Running")
        assert daemon.reason("corrupt") == f"cannot open {stored}: No such file or directory"
        assert "vmid image import" in daemon.reason("missing")


def test_the_spool_deleted_and_recreated(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("a"))
        daemon.drop("b.yaml", manifest("b"))
        daemon.wait_phase("a", "Running")
        daemon.wait_phase("b", "Running")
        shutil.rmtree(daemon.spool)
        daemon.wait_phase("a", None)
        daemon.wait_phase("b", None)
        daemon.spool.mkdir(exist_ok=True)  # perhaps by the daemon already
        daemon.drop("c.yaml", manifest("c"))
        daemon.wait_phase("c", "Running", timeout=90)  # noticed at once, or by the rescan
        assert daemon.process.poll() is None


def test_a_burst_of_200_manifests_ends_exactly_as_the_spool(tmp_path: Path) -> None:
    count = 200
    with running_daemon(tmp_path, fake_config()) as daemon:
        for index in range(count):
            text = manifest(f"vm-{index}", grace=2)
            daemon.drop(f"vm-{index}.yaml", with_nic(text) if index % 4 == 0 else text)
        daemon.wait_for(
            "200 VMIs running",
            lambda: sum(daemon.phase(f"vm-{i}") == "Running" for i in range(count)) == count,
            timeout=240,
        )
        # Remove 100, change 50 (a restart each), keep 50: all at once.
        for index in range(count):
            if index % 2 == 0:
                (daemon.spool / f"vm-{index}.yaml").unlink()
            elif index % 4 == 1:
                text = manifest(f"vm-{index}", grace=2, memory="80Mi")
                daemon.drop(f"vm-{index}.yaml", with_nic(text) if index % 8 == 1 else text)

        def settled() -> bool:
            for index in range(count):
                status = daemon.status(f"vm-{index}")
                gone = index % 2 == 0
                changed = index % 4 == 1
                if gone != (status is None):
                    return False
                if status is None:
                    continue
                memory = status["spec"]["domain"]["memory"]["guest"]
                if status["status"]["phase"] != "Running" or changed != (memory == "80Mi"):
                    return False
            return True

        daemon.wait_for("the spool's final state", settled, timeout=240)
        assert sorted(qemus_of(tmp_path)) == sorted(f"vm-{i}" for i in range(1, count, 2))
        registry = json.loads((tmp_path / "var/lib/vmid/network/attachments.json").read_text())
        assert sorted(a["vmi"] for a in registry["attachments"]) == sorted(
            f"default/vm-{i}" for i in range(1, count, 2) if i % 8 == 1
        )
        for path in list(daemon.spool.glob("*.yaml")):
            path.unlink()
        daemon.wait_for("every VMI gone", lambda: qemus_of(tmp_path) == {}, timeout=120)
        daemon.wait_for(
            "every status gone",
            lambda: not list((tmp_path / "run/vmid/namespaces/default").glob("*")),
            timeout=60,
        )
        assert_nothing_left(tmp_path)
        assert "Traceback" not in daemon.log_text()


def _kill(daemon: Daemon) -> None:
    daemon.process.kill()
    daemon.process.wait()


def test_the_daemon_killed_in_the_middle_of_a_launch(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("a"))
        daemon.wait_for(
            "a to be launching", lambda: daemon.phase("a") in ("Pending", "Scheduled"), timeout=30
        )
        _kill(daemon)
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.wait_phase("a", "Running")
        time.sleep(1)  # a second QEMU would show up by now
        assert list(qemus_of(tmp_path)) == ["a"]  # never two QEMUs for one VMI
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_phase("a", None)
        assert_nothing_left(tmp_path)


def test_the_daemon_killed_in_the_middle_of_a_stop(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("a", mode="ignore", grace=4))
        daemon.wait_phase("a", "Running")
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_for("the powerdown", lambda: "system_powerdown sent" in daemon.log_text())
        _kill(daemon)
    assert list(qemus_of(tmp_path)) == ["a"]  # QEMU outlives the daemon
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.wait_phase("a", None, timeout=30)  # re-adopted, stopped with its grace
        assert_nothing_left(tmp_path)


def test_an_inotify_queue_overflow_loses_no_manifest(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("a"))
        daemon.wait_phase("a", "Running")
        daemon.process.send_signal(signal.SIGSTOP)  # the daemon reads nothing meanwhile
        try:
            limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
            noise = daemon.spool / ".noise"
            for _ in range(limit // 2 + 100):  # two events each: create+write, delete
                noise.write_text("x")
                noise.unlink()
            daemon.drop("b.yaml", manifest("b"))
            (daemon.spool / "a.yaml").unlink()
        finally:
            daemon.process.send_signal(signal.SIGCONT)
        daemon.wait_for("the overflow", lambda: "spool watch lost events" in daemon.log_text())
        daemon.wait_phase("b", "Running")
        daemon.wait_phase("a", None)
