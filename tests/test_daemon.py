"""The daemon end to end with a fake QEMU: the spool drives VMIs, `vmid get` shows them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import (
    Daemon,
    fake_config,
    leave_running,
    manifest,
    running_daemon,
    start_daemon,
    traversable,
)
from vmid.config import Accelerator, Config, Paths
from vmid.host import inotify
from vmid.runtime import spool as spool_module
from vmid.runtime.spool import Spool

pytestmark = pytest.mark.timeout(120)


def test_manifest_renamed_in_runs_and_removal_stops_it(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        file = daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        listing = daemon.vmid("get")
        assert listing.returncode == 0
        assert listing.stdout.splitlines()[0].split() == [
            "NAME",
            "AGE",
            "PHASE",
            "IP",
            "NODENAME",
            "READY",
        ]
        name, _age, phase, _node, ready = listing.stdout.splitlines()[1].split()  # IP is empty
        assert (name, phase, ready) == ("vm-a", "Running", "True")
        file.unlink()
        daemon.wait_phase("vm-a", None)
        daemon.wait_for("the removal", lambda: "vm-a: removed" in daemon.log_text())
        assert "system_powerdown sent" in daemon.log_text()


def test_manifest_written_in_place_runs(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        (daemon.spool / "b.yaml").write_text(manifest("vm-b"))
        daemon.wait_phase("vm-b", "Running")


def test_get_yaml_and_json_show_spec_with_defaults_and_status(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        data = json.loads(daemon.vmid("get", "vm-a", "-o", "json").stdout)
        assert data["spec"]["domain"]["machine"]["type"] == "q35"
        status = data["status"]
        assert status["phase"] == "Running"
        assert [t["phase"] for t in status["phaseTransitionTimestamps"]] == [
            "Pending",
            "Scheduled",
            "Running",
        ]
        assert os.path.isabs(status["qemu"]["qmpSocket"])
        assert status["qemu"]["pid"] > 0
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["SoftwareEmulation"] == "True"
        listing = daemon.vmid("get", "-o", "yaml").stdout
        assert "kind: List" in listing
        assert "name: vm-a" in listing
        missing = daemon.vmid("get", "nope")
        assert missing.returncode == 1
        assert "not found" in missing.stderr


def test_a_bad_manifest_is_reported_and_the_others_run(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("bad.yaml", manifest("vm-bad").replace("guest: 64Mi", "guest: lots"))
        daemon.drop("good.yaml", manifest("vm-good"))
        daemon.wait_phase("vm-good", "Running")
        daemon.wait_phase("vm-bad", "Failed")
        status = daemon.status("vm-bad")
        assert status is not None
        assert "spec.domain.memory.guest" in status["status"]["reason"]
        daemon.drop("junk.yaml", "\x00\x01 not yaml at all: [")
        daemon.wait_for("the junk to be reported", lambda: "junk.yaml" in daemon.log_text())
        assert daemon.phase("vm-good") == "Running"


def test_an_edit_that_breaks_the_manifest_leaves_the_vm_running(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        daemon.drop("a.yaml", manifest("vm-a").replace("bus", "x").replace("64Mi", "1x"))

        def unsynchronized() -> bool:
            data = daemon.status("vm-a") or {}
            conditions = {c["type"]: c for c in data.get("status", {}).get("conditions", [])}
            return bool(conditions.get("Synchronized", {}).get("status") == "False")

        daemon.wait_for("Synchronized=False", unsynchronized)
        assert daemon.pid("vm-a") == pid
        assert daemon.phase("vm-a") == "Running"


@pytest.mark.parametrize("error", ["yaml", "value"])
def test_a_broken_edit_of_a_running_vmis_file_leaves_it_running_across_restarts(
    tmp_path: Path, error: str
) -> None:
    """An invalid value, or a file that no longer parses (it names no VMI then): neither is a
    removal, also for a daemon that starts while the file is so (it used to orphan the QEMU)."""
    good = manifest("vm-a")
    broken = good + "  : [\n" if error == "yaml" else good.replace("64Mi", "1x")
    with running_daemon(tmp_path, fake_config("onDaemonStop: keep\n")) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        daemon.drop("a.yaml", broken)
        daemon.wait_for("Synchronized=False", lambda: _synchronized(daemon) == "False")
        assert daemon.pid("vm-a") == pid
        assert daemon.phase("vm-a") == "Running"
    try:
        with running_daemon(tmp_path, fake_config()) as again:  # it knows the file still
            again.wait_for("Synchronized=False", lambda: _synchronized(again) == "False")
            assert again.pid("vm-a") == pid
            assert "system_powerdown" not in again.log_text()
            again.drop("a.yaml", manifest("vm-a"))
            again.wait_for("Synchronized=True", lambda: _synchronized(again) == "True")
            assert again.pid("vm-a") == pid
            assert again.log_text().count("qemu started") == 0
        assert not _alive(pid)  # its daemon's SIGTERM stopped it: it is no orphan
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_an_ended_vmi_whose_file_broke_while_vmid_was_down_is_kept_until_removed(
    tmp_path: Path,
) -> None:
    pid = leave_running(tmp_path, "vm-a")["status"]["qemu"]["pid"]
    os.kill(pid, signal.SIGKILL)  # it ends while vmid is down...
    (tmp_path / "etc/vmid/instances/vm-a.yaml").write_text(manifest("vm-a") + "  : [\n")
    with running_daemon(tmp_path, fake_config()) as again:  # ...and its file no longer parses
        again.wait_phase("vm-a", "Failed")
        assert again.reason("vm-a") == "QEMU ended while vmid was not running"
        assert (
            tmp_path / "var/lib/vmid/namespaces/default/vm-a"
        ).exists()  # its state: not a removal
        (again.spool / "vm-a.yaml").unlink()
        again.wait_phase("vm-a", None)
        again.wait_for(
            "its state to go",
            lambda: not (tmp_path / "var/lib/vmid/namespaces/default/vm-a").exists(),
        )


def _synchronized(daemon: Daemon) -> str | None:
    status = daemon.status("vm-a")
    return _conditions(status).get("Synchronized", {}).get("status") if status else None


def test_a_manifest_fixed_while_the_daemon_was_down_is_synchronized_again(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config("onDaemonStop: keep\n")) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        daemon.drop("a.yaml", manifest("vm-a").replace("64Mi", "1x"))
        daemon.wait_for(
            "Synchronized=False",
            lambda: (
                _conditions(daemon.status("vm-a")).get("Synchronized", {}).get("status") == "False"
            ),
        )
    try:
        (tmp_path / "etc/vmid/instances/a.yaml").write_text(manifest("vm-a"))
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_for("the re-adoption", lambda: "re-adopted" in again.log_text())
            conditions = _conditions(again.status("vm-a"))
            assert conditions["Synchronized"]["status"] == "True"
            assert conditions["Ready"]["status"] == "True"
            assert again.pid("vm-a") == pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _conditions(status: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    assert status is not None
    return {c["type"]: c for c in status["status"].get("conditions", [])}


def test_a_spec_change_restarts_the_vm_with_the_new_spec(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        old_pid = daemon.pid("vm-a")
        daemon.drop("a.yaml", manifest("vm-a", memory="96Mi"))

        def restarted() -> bool:
            data = daemon.status("vm-a") or {}
            pid = data.get("status", {}).get("qemu", {}).get("pid")
            return pid not in (None, old_pid) and data["status"]["phase"] == "Running"

        daemon.wait_for("the restart", restarted)
        argv = daemon.status("vm-a")["status"]["qemu"]["argv"]  # type: ignore[index]
        assert argv[argv.index("-m") + 1] == "96"


def test_metadata_only_changes_do_not_restart(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        text = manifest("vm-a").replace("  name: vm-a", "  name: vm-a\n  labels: {team: x}")
        daemon.drop("a.yaml", text)
        daemon.drop("z.yaml", manifest("vm-z"))  # a later event proves the edit was read
        daemon.wait_phase("vm-z", "Running")
        assert daemon.pid("vm-a") == pid


def test_two_files_claiming_one_name_the_first_wins(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("b.yaml", manifest("same", memory="96Mi"))
        daemon.drop("a.yaml", manifest("same", memory="64Mi"))
        daemon.wait_for(
            "the duplicate to be reported", lambda: "already defined in" in daemon.log_text()
        )
        daemon.wait_phase("same", "Running")

        def from_a() -> bool:
            argv = (daemon.status("same") or {}).get("status", {}).get("qemu", {}).get("argv", [])
            return bool(argv) and argv[argv.index("-m") + 1] == "64"

        daemon.wait_for("a.yaml's spec", from_a)


def test_qemu_killed_from_outside_ends_failed(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        os.kill(daemon.pid("vm-a"), signal.SIGKILL)
        daemon.wait_phase("vm-a", "Failed")
        assert "SIGKILL" in daemon.reason("vm-a")


def test_sigterm_stops_every_vm_gracefully_in_parallel(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        for index in range(3):
            daemon.drop(f"{index}.yaml", manifest(f"vm-{index}", mode="delay-1", grace=10))
        for index in range(3):
            daemon.wait_phase(f"vm-{index}", "Running")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
        log = daemon.log_text()
        assert log.count("ended Succeeded") == 3
        assert "vmid stopped" in log


def test_vms_the_daemons_stop_powered_off_run_again_at_its_next_start(tmp_path: Path) -> None:
    """`systemctl restart vmid` (or stop, then start) with `onDaemonStop: stop`: the VMs come
    back, as after a reboot; a guest that powered itself off stays off (KubeVirt's VMI)."""
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.drop("b.yaml", manifest("vm-b", mode="halt-0"))
        daemon.wait_phase("vm-a", "Running")
        daemon.wait_phase("vm-b", "Succeeded")
        pid = daemon.pid("vm-a")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
        assert daemon.phase("vm-a") == "Succeeded"
    with running_daemon(tmp_path, fake_config()) as again:
        again.wait_phase("vm-a", "Running")
        assert again.pid("vm-a") != pid
        assert "vm-a: powered off as vmid stopped: starting it again" in again.log_text()
        assert again.phase("vm-b") == "Succeeded"


def test_keep_then_a_new_daemon_re_adopts_the_running_vm(tmp_path: Path) -> None:
    left = leave_running(tmp_path, "vm-a")
    pid, created = left["status"]["qemu"]["pid"], left["metadata"]["creationTimestamp"]
    try:
        os.kill(pid, 0)  # still running
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_for(
                "the re-adoption", lambda: f"re-adopted qemu pid={pid}" in again.log_text()
            )
            status = again.status("vm-a")
            assert status is not None
            assert status["status"]["phase"] == "Running"
            assert status["status"]["qemu"]["pid"] == pid
            assert status["metadata"]["creationTimestamp"] == created
            assert again.log_text().count("qemu started") == 0
            (again.spool / "vm-a.yaml").unlink()  # the re-adopted VM stops the usual way
            again.wait_phase("vm-a", None)
            assert "vm-a: ended Succeeded the guest powered off" in again.log_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_manifest_removed_while_the_daemon_was_down_is_honoured(tmp_path: Path) -> None:
    pid = leave_running(tmp_path, "vm-a")["status"]["qemu"]["pid"]
    try:
        (tmp_path / "etc/vmid/instances/vm-a.yaml").unlink()
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_phase("vm-a", None)
            log = again.log_text()
            assert "removed while vmid was not running" in log
            assert "system_powerdown sent" in log
            assert "vm-a: ended Succeeded the guest powered off" in log
            assert not (tmp_path / "var/lib/vmid/namespaces/default/vm-a").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_state_a_vmi_kept_between_two_runs_goes_when_its_manifest_went_meanwhile(
    tmp_path: Path,
) -> None:
    """Found by tests/chaos.py (seed 92): the daemon killed while a VMI restarts for a new spec
    (its status and runtime directory gone, its uid and firmware UUID kept for the next run),
    its manifest then removed: the next daemon found no status, and the uid stayed taken."""
    pid = leave_running(tmp_path, "vm-a")["status"]["qemu"]["pid"]
    os.kill(pid, signal.SIGKILL)
    state = tmp_path / "var/lib/vmid/namespaces/default/vm-a"
    shutil.rmtree(tmp_path / "run/vmid/namespaces/default/vm-a")
    assert sorted(p.name for p in state.iterdir()) == ["firmware-uuid", "uid"]
    (tmp_path / "etc/vmid/instances/vm-a.yaml").unlink()
    with running_daemon(tmp_path, fake_config()):
        assert not state.exists()


def test_a_vm_that_died_while_the_daemon_was_down_ends_failed(tmp_path: Path) -> None:
    pid = leave_running(tmp_path, "vm-a")["status"]["qemu"]["pid"]
    os.kill(pid, signal.SIGKILL)
    with running_daemon(tmp_path, fake_config()) as again:
        again.wait_phase("vm-a", "Failed")
        status = again.status("vm-a")
        assert status is not None
        assert status["status"]["reason"] == "QEMU ended while vmid was not running"
        assert _conditions(status)["Ready"]["status"] == "False"
        assert again.log_text().count("qemu started") == 0


def test_a_vm_left_running_with_another_spec_restarts_gracefully_never_doubled(
    tmp_path: Path,
) -> None:
    """A spec edited while vmid was down: as an edit while it runs, the old QEMU is powered
    off first, then the new spec starts; never two QEMUs on one VM's disks."""
    pid = leave_running(tmp_path, "vm-a")["status"]["qemu"]["pid"]
    try:
        (tmp_path / "etc/vmid/instances/vm-a.yaml").write_text(manifest("vm-a", memory="96Mi"))
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_for("the new spec", lambda: _runs_memory(again, "96"))
            log = again.log_text()
            assert f"found its QEMU (pid {pid}) running" in log
            assert log.index("system_powerdown sent") < log.index("qemu started")
            assert log.count("qemu started") == 1
            assert not _alive(pid)  # the old one is gone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _runs_memory(daemon: Daemon, memory: str) -> bool:
    data = daemon.status("vm-a") or {}
    argv = data.get("status", {}).get("qemu", {}).get("argv", [])
    return data.get("status", {}).get("phase") == "Running" and memory in argv


def test_a_spec_change_keeps_the_vmis_firmware_uuid(tmp_path: Path) -> None:
    """cloud-init's instance-id: a resize must not make a real guest redo its first boot."""
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("vm-a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        before = _uuid_option(daemon)
        daemon.drop("vm-a.yaml", manifest("vm-a", memory="96Mi"))
        daemon.wait_for("the new spec", lambda: _runs_memory(daemon, "96"))
        assert _uuid_option(daemon) == before


def test_render_shows_the_firmware_uuid_and_the_status_the_real_argv(tmp_path: Path) -> None:
    """The UUID vmid render prints is the running QEMU's; status.qemu.argv is QEMU's own."""
    with running_daemon(tmp_path, fake_config()) as daemon:
        source = tmp_path / "vm-a.yaml"
        source.write_text(manifest("vm-a"))
        before = daemon.vmid("render", str(source))
        assert before.returncode == 0
        assert "is a placeholder: the daemon gives the VMI a random firmware UUID" in before.stderr
        daemon.drop("vm-a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        running = _uuid_option(daemon)
        after = daemon.vmid("render", str(source))
        assert f"-uuid {running} " in after.stdout
        assert "placeholder" not in after.stderr
        status = daemon.status("vm-a")
        assert status is not None
        pid = status["status"]["qemu"]["pid"]
        argv = status["status"]["qemu"]["argv"]
        real = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        assert real[-len(argv) :] == argv  # (the fake QEMU is a script: python3 comes first)


def _uuid_option(daemon: Daemon) -> str:
    status = daemon.status("vm-a")
    assert status is not None
    argv: list[str] = status["status"]["qemu"]["argv"]
    return argv[argv.index("-uuid") + 1]


def test_a_qemu_whose_launch_was_never_recorded_is_taken_over_not_doubled(
    tmp_path: Path,
) -> None:
    """The daemon died between fork and writing the pid down: the status says Pending."""
    pid = leave_running(tmp_path, "vm-a")["status"]["qemu"]["pid"]
    path = tmp_path / "run/vmid/namespaces/default/vm-a/status.json"
    data = json.loads(path.read_text())
    data["status"] = {"phase": "Pending", "phaseTransitionTimestamps": [], "qemu": {}}
    path.write_text(json.dumps(data))
    try:
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_phase("vm-a", "Running")
            assert again.pid("vm-a") == pid
            assert again.log_text().count("qemu started") == 0
            assert f"found its QEMU (pid {pid}) running" in again.log_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_qemu_left_before_cont_is_booted_when_re_adopted(tmp_path: Path) -> None:
    """The daemon dies after QEMU started but before it was continued (`-S`)."""
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("vm-a.yaml", manifest("vm-a", mode="stall"))
        daemon.wait_phase("vm-a", "Scheduled")
        pid = daemon.pid("vm-a")
        runstate = tmp_path / "run/vmid/namespaces/default/vm-a/qemu/runstate"
        daemon.wait_for("QEMU to be up", lambda: runstate.exists())
        daemon.process.kill()
        daemon.process.wait()
    try:
        assert runstate.read_text() == "prelaunch"
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_phase("vm-a", "Running")
            assert again.pid("vm-a") == pid
            assert runstate.read_text() == "running"  # the guest runs, as Running says
            assert again.log_text().count("qemu started") == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("first", ["edit", "removal and re-add"])
def test_a_change_then_a_removal_within_the_grace_starts_nothing(
    tmp_path: Path, first: str
) -> None:
    """What the manifest said before it went must not start once the old QEMU is gone."""
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1"))
        daemon.wait_phase("vm-a", "Running")
        if first == "removal and re-add":
            (daemon.spool / "a.yaml").unlink()
            daemon.wait_for("the stop", lambda: "system_powerdown sent" in daemon.log_text())
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1", memory="96Mi"))
        daemon.wait_for("the restart", lambda: "system_powerdown sent" in daemon.log_text())
        daemon.wait_for("the new spec", lambda: "manifest changed" in daemon.log_text())
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_phase("vm-a", None)
        time.sleep(0.5)  # a wrongly started successor would show by now
        assert daemon.phase("vm-a") is None
        assert daemon.log_text().count("qemu started") == 1


def test_qemu_gets_a_minimal_environment_not_the_daemons(tmp_path: Path) -> None:
    """As libvirt: no NOTIFY_SOCKET, watchdog or locale of the daemon's; stable English."""
    daemon_env = {"LANG": "de_DE.UTF-8", "VMID_TEST_DAEMON_ONLY": "1"}
    with running_daemon(tmp_path, fake_config(), env=daemon_env) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        environ = Path(f"/proc/{daemon.pid('vm-a')}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0] for item in environ if item}
        assert names == {b"PATH", b"LC_ALL"}, names
        assert b"LC_ALL=C" in environ


def test_a_manifest_back_invalid_while_its_vmi_stops_shows_it_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1"))
        daemon.wait_phase("vm-a", "Running")
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_for("the stop", lambda: "system_powerdown sent" in daemon.log_text())
        daemon.drop("a.yaml", manifest("vm-a").replace("64Mi", "1x"))
        daemon.wait_for("vm-a to end", lambda: "vm-a: removed" in daemon.log_text())
        daemon.wait_phase("vm-a", "Failed", timeout=5)  # not at the next minute's rescan
        assert "Invalid value" in daemon.reason("vm-a")


def test_launch_failure_shows_qemus_message(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="refuse"))
        daemon.wait_phase("vm-a", "Failed")
        reason = daemon.reason("vm-a")
        assert "'nope' is not a valid device model name" in reason


def test_missing_image_never_pulled_fails_that_vm_with_a_hint(tmp_path: Path) -> None:
    text = manifest("vm-a").replace(
        "devices: {autoattachPodInterface: false}",
        "devices:\n      autoattachPodInterface: false\n      disks: [{name: root}]\n"
        "  volumes: [{name: root, containerDisk: {image: example/missing, "
        "imagePullPolicy: Never}}]",
    )
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", text)
        daemon.wait_phase("vm-a", "Failed")
        reason = daemon.reason("vm-a")
        assert "vmid image import docker.io/example/missing:latest" in reason
        assert "not present with pull policy of Never" in reason


def test_the_newest_of_several_quick_edits_wins(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1"))
        daemon.wait_phase("vm-a", "Running")
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1", memory="96Mi"))
        daemon.wait_for("the stop to begin", lambda: "system_powerdown sent" in daemon.log_text())
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1", memory="128Mi"))

        def running_with(memory: str) -> bool:
            data = daemon.status("vm-a") or {}
            argv = data.get("status", {}).get("qemu", {}).get("argv", [])
            return data["status"]["phase"] == "Running" and memory in argv if data else False

        daemon.wait_for("the newest spec", lambda: running_with("128"))
        assert daemon.log_text().count("qemu started") == 2


def test_a_name_too_long_for_a_path_is_refused_and_the_daemon_goes_on(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("long.yaml", manifest("a" * 300))
        daemon.drop("ok.yaml", manifest("vm-ok"))
        daemon.wait_phase("vm-ok", "Running")
        daemon.wait_for(
            "the long name's problem", lambda: "must be no more than 253" in daemon.log_text()
        )
        assert daemon.process.poll() is None


def test_an_ended_vmi_is_cleaned_up_when_removed_and_starts_anew_when_re_added(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        file = daemon.drop("a.yaml", manifest("vm-a", mode="crash"))
        daemon.wait_phase("vm-a", "Failed")
        file.unlink()
        daemon.wait_phase("vm-a", None)
        assert not (tmp_path / "var/lib/vmid/namespaces/default/vm-a").exists()
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")


def test_sigterm_during_a_restart_for_a_spec_change_exits_cleanly(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1"))
        daemon.wait_phase("vm-a", "Running")
        daemon.drop("a.yaml", manifest("vm-a", mode="delay-1", memory="96Mi"))
        daemon.wait_for("the stop to begin", lambda: "system_powerdown sent" in daemon.log_text())
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
        assert daemon.log_text().count("qemu started") == 1


def test_the_first_file_claims_a_name_even_when_it_is_invalid(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("same").replace("64Mi", "lots"))
        daemon.drop("b.yaml", manifest("same"))
        daemon.wait_for("the duplicate", lambda: "already defined in" in daemon.log_text())
        daemon.wait_phase("same", "Failed")


def test_status_files_and_logs_are_private(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        status = tmp_path / "run/vmid/namespaces/default/vm-a/status.json"
        assert status.stat().st_mode & 0o077 == 0
        assert (
            tmp_path / "var/log/vmid/namespaces/default/vm-a/qemu.log"
        ).stat().st_mode & 0o077 == 0


def test_kill_9_of_the_daemon_then_restart_re_adopts_every_vm(tmp_path: Path) -> None:
    names = [f"vm-{i}" for i in range(3)]
    with running_daemon(tmp_path, fake_config()) as daemon:
        for name in names:
            daemon.drop(f"{name}.yaml", manifest(name))
        for name in names:
            daemon.wait_phase(name, "Running")
        pids = {n: daemon.pid(n) for n in names}
        daemon.process.kill()
        daemon.process.wait()
    try:
        with running_daemon(tmp_path, fake_config()) as again:
            for name in names:
                again.wait_for(
                    name,
                    lambda n=name: (
                        f"re-adopted qemu pid={pids[n]}"  # type: ignore[misc]
                        in again.log_text()
                    ),
                )
                assert again.pid(name) == pids[name]
            assert again.log_text().count("qemu started") == 0
            (again.spool / "vm-1.yaml").unlink()
            again.wait_phase("vm-1", None)
            assert again.phase("vm-0") == again.phase("vm-2") == "Running"
            assert "vm-1: ended Succeeded" in again.log_text()
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_get_watch_prints_each_change(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "vmid.cli", "get", "-w", "--root", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().split() == [
                "NAME",
                "AGE",
                "PHASE",
                "IP",
                "NODENAME",
                "READY",
            ]
            file = daemon.drop("a.yaml", manifest("vm-a"))
            while "Running" not in (line := watcher.stdout.readline()):
                assert line, "the watch ended"
            assert line.split()[0] == "vm-a"
            file.unlink()
            while "Deleted" not in (line := watcher.stdout.readline()):
                assert line, "the watch ended"
        finally:
            watcher.send_signal(signal.SIGINT)
            watcher.communicate(timeout=30)


def test_describe_shows_spec_conditions_history_and_events(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        described = daemon.vmid("describe", "vm-a")
        assert described.returncode == 0, described.stderr
        text = described.stdout
        assert "Phase:      Running" in text
        assert "Memory:     64Mi" in text
        assert "Conditions:" in text
        assert "SoftwareEmulation" in text
        for phase in ("Pending", "Scheduled", "Running"):
            assert f"  {phase} " in text
        for message in ("VirtualMachineInstance defined.", "VirtualMachineInstance started."):
            assert message in text
        assert daemon.vmid("describe", "nope").returncode == 1


def test_spool_files_others_may_write_or_that_lead_outside_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(manifest("outside"))
    with running_daemon(tmp_path, fake_config()) as daemon:
        writable = daemon.spool / "writable.yaml"
        writable.write_text(manifest("writable"))
        writable.chmod(0o666)
        foreign = daemon.spool / "foreign.yaml"
        foreign.write_text(manifest("foreign"))
        os.chown(foreign, 65534, 65534)
        (daemon.spool / "link-out.yaml").symlink_to(outside)
        (daemon.spool / ".inside").write_text(manifest("inside"))
        (daemon.spool / "link-in.yaml").symlink_to(daemon.spool / ".inside")
        daemon.wait_phase("inside", "Running")  # a link within the spool is fine
        daemon.wait_for(
            "three refusals",
            lambda: all(
                f"instances/{name}.yaml:1:1: refused: " in daemon.log_text()
                for name in ("writable", "foreign", "link-out")
            ),
        )
        log = daemon.log_text()
        assert "with mode -rw-rw-rw-; a manifest must be owned by root" in log
        assert "owned by uid 65534" in log
        assert f"a symlink to {outside}, outside the spool" in log
        assert daemon.phase("outside") is None
        assert daemon.phase("writable") is None


def test_a_fifo_renamed_over_a_manifest_is_refused_and_the_daemon_goes_on(
    tmp_path: Path,
) -> None:
    # The attack: between the spool's check of a manifest and its open, a FIFO is renamed
    # over it; opening a FIFO waits for a writer, wedging the spool for good. Flipping a file
    # and a FIFO for two seconds hits that window in some of the hundreds of scans it causes.
    with running_daemon(tmp_path, fake_config()) as daemon:
        target = daemon.spool / "flip.yaml"
        deadline = time.monotonic() + 2
        flips = 0
        while time.monotonic() < deadline or flips % 2 == 0:  # end on the FIFO
            staging = daemon.spool / f".flip{flips % 2}"
            if flips % 2:
                os.mkfifo(staging)
            else:
                staging.write_text("# not a manifest yet\n")
            os.rename(staging, target)
            flips += 1
        daemon.drop("b.yaml", manifest("vm-b"))
        daemon.wait_phase("vm-b", "Running", timeout=15)
        daemon.wait_for(
            "the FIFO to be refused",
            lambda: (
                "instances/flip.yaml:1:1: refused: a FIFO (named pipe), not a regular file"
                in daemon.log_text()
            ),
            timeout=10,
        )
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=15) == 0


def test_spool_links_are_followed_only_to_a_regular_file_in_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "instances"
    spool.mkdir()
    (spool / ".real").write_text(manifest("real"))
    (spool / "relative.yaml").symlink_to(".real")
    (spool / "chain.yaml").symlink_to("relative.yaml")
    (spool / "up.yaml").symlink_to("..")
    os.mkfifo(spool / ".fifo")
    (spool / "to-fifo.yaml").symlink_to(spool / ".fifo")
    desired = Spool(spool, Config(), Paths(tmp_path), Accelerator.TCG).scan()
    assert list(desired.vmis) == ["default/real"]
    assert desired.vmis["default/real"].file == str(spool / "relative.yaml")
    problems = {Path(p.file).name: p.message for p in desired.problems}
    assert problems == {
        "chain.yaml": f"refused: a symlink to {spool}/relative.yaml, which is a symlink, "
        "which vmid does not follow here",
        "to-fifo.yaml": f"refused: a symlink to {spool}/.fifo, which is a FIFO (named pipe), "
        "not a regular file",
        "up.yaml": f"refused: a symlink to {tmp_path}, outside the spool; copy the file in instead",
    }


def test_a_fifo_as_vmid_yaml_is_refused_on_sighup_and_sigterm_still_stops(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        config = daemon.root / "etc/vmid/vmid.yaml"
        config.unlink()
        os.mkfifo(config)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(
            "the reload to be refused",
            lambda: (
                f"configuration not reloaded: {config}: not read: it is a FIFO (named pipe)"
                in daemon.log_text()
            ),
            timeout=10,
        )
        assert daemon.phase("vm-a") == "Running"
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=15) == 0


def test_a_symlink_planted_as_a_vms_log_is_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    logs = tmp_path / "var/log/vmid/namespaces/default/planted"
    logs.mkdir(parents=True)
    (logs / "qemu.log").symlink_to(victim)
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("p.yaml", manifest("planted"))
        daemon.wait_phase("planted", "Failed")
        assert "Too many levels of symbolic links" in daemon.reason("planted")
    assert victim.read_text() == "untouched\n"


def test_on_daemon_stop_keep_set_by_a_reload_keeps_the_vms_running(tmp_path: Path) -> None:
    """The README's upgrade procedure: keep, reload, then stop leaves every VM running."""
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("vm-a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        (tmp_path / "etc/vmid/vmid.yaml").write_text(fake_config("onDaemonStop: keep\n"))
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("the reload", lambda: "configuration reloaded" in daemon.log_text())
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
    try:
        os.kill(pid, 0)  # still running, for the next daemon to re-adopt
        assert daemon.phase("vm-a") == "Running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_signals_while_the_daemon_starts_are_answered_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "etc/vmid/instances").mkdir(parents=True)
    (tmp_path / "etc/vmid/vmid.yaml").write_text(fake_config())
    daemon = start_daemon(tmp_path)
    try:
        # From vmid's first line on (the interpreter's own start-up is beyond any program).
        daemon.wait_for("vmid to hold its signals", lambda: _holds_sighup(daemon.process.pid))
        while "vmid ready" not in daemon.log_text():
            daemon.process.send_signal(signal.SIGHUP)
            time.sleep(0.005)
            assert daemon.process.poll() is None, daemon.log_text()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
        assert "vmid stopped" in daemon.log_text()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def _holds_sighup(pid: int) -> bool:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigBlk:"):
                return bool(int(line.split()[1], 16) & 1 << (signal.SIGHUP - 1))
    return False


def _alive(pid: int) -> bool:
    """Whether `pid` runs (an orphan nobody has reaped yet is a zombie: not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_read_only_state_directory_ends_the_daemon_with_a_message(tmp_path: Path) -> None:
    state = tmp_path / "var/lib/vmid"
    state.mkdir(parents=True)
    traversable(tmp_path)  # as a root must be for the VMs' own uids
    (tmp_path / "vmid.yaml").write_text(fake_config())
    # A read-only mount in a mount namespace of the test's own: the host's mounts are untouched.
    script = f'mount -t tmpfs -o ro tmpfs "{state}" && exec "$@"'
    config = ["--config", str(tmp_path / "vmid.yaml")]
    daemon = [sys.executable, "-m", "vmid.cli", "daemon", "--root", str(tmp_path), *config]
    result = subprocess.run(
        ["unshare", "--mount", "--net", "--", "sh", "-c", script, "sh", *daemon],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # as for a bad vmid.yaml
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"vmid: cannot prepare {state}: Read-only file system; vmid keeps its state, runtime "
        "files and logs under --root and needs them writable"
    )


def _with_scratch_disk(text: str) -> str:
    """A manifest of tests/daemon.py with one disk (emptyDisk: no image needed)."""
    return text.replace(
        "devices: {autoattachPodInterface: false}",
        "devices: {autoattachPodInterface: false, disks: [{name: scratch, disk: {bus: virtio}}]}"
        "\n  volumes: [{name: scratch, emptyDisk: {capacity: 1Mi}}]",
    )


def _pid(daemon: Daemon, name: str) -> int | None:
    pid: int | None = (daemon.status(name) or {}).get("status", {}).get("qemu", {}).get("pid")
    return pid


def _terminating(daemon: Daemon, name: str) -> bool:
    status = daemon.status(name) or {"metadata": {}}
    return "deletionTimestamp" in status["metadata"]


def test_a_restart_for_a_new_spec_shows_the_old_vmi_terminating(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="ignore", grace=3))
        daemon.wait_phase("vm-a", "Running")
        old_pid = daemon.pid("vm-a")
        daemon.drop("a.yaml", manifest("vm-a", mode="ignore", grace=3, memory="96Mi"))
        daemon.wait_for("the old VMI to terminate", lambda: _terminating(daemon, "vm-a"))
        old = daemon.status("vm-a")
        assert old is not None
        assert old["status"]["qemu"]["pid"] == old_pid
        assert old["metadata"]["deletionGracePeriodSeconds"] == 3
        assert _conditions(old)["Ready"]["status"] == "False"
        row = daemon.vmid("get", "vm-a").stdout.splitlines()[1].split()
        assert row[2] == "Terminating"
        daemon.wait_for("the new VMI", lambda: _pid(daemon, "vm-a") not in (None, old_pid))
        daemon.wait_phase("vm-a", "Running")
        assert not _terminating(daemon, "vm-a")
        assert _conditions(daemon.status("vm-a"))["Ready"]["status"] == "True"


def test_a_stop_an_earlier_daemon_began_is_not_shown_once_the_vmi_goes_on(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="ignore", grace=30))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        daemon.process.send_signal(signal.SIGTERM)  # onDaemonStop: stop
        daemon.wait_for("the stop to begin", lambda: _terminating(daemon, "vm-a"))
        daemon.process.kill()  # then the daemon dies within the grace: the guest runs on
        daemon.process.wait()
    try:
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_for("the re-adoption", lambda: "re-adopted" in again.log_text())
            status = again.status("vm-a")
            assert status is not None
            assert status["status"]["qemu"]["pid"] == pid
            assert not _terminating(again, "vm-a")
            assert _conditions(status)["Ready"]["status"] == "True"
            assert again.vmid("get", "vm-a").stdout.splitlines()[1].split()[2] == "Running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_vmi_paused_on_a_disk_error_is_paused_io_error_when_re_adopted(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config("onDaemonStop: keep\n")) as daemon:
        daemon.drop("a.yaml", _with_scratch_disk(manifest("vm-a", mode="ioerror")))
        daemon.wait_for(
            "the disk error",
            lambda: (
                _conditions(daemon.status("vm-a") or {"status": {}}).get("Paused", {}).get("status")
                == "True"
            ),
        )
        pid = daemon.pid("vm-a")
    try:
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_for("the re-adoption", lambda: "re-adopted" in again.log_text())

            def paused() -> dict[str, str]:
                return dict(_conditions(again.status("vm-a")).get("Paused", {}))

            # Its status is written just after the log line: the earlier daemon's says the
            # event's words ("write failed: ..."), the re-adopting one's what query-block says.
            again.wait_for("its status", lambda: "'scratch': No" in paused().get("message", ""))
            assert paused()["reason"] == "PausedIOError"
            assert _conditions(again.status("vm-a"))["Ready"]["status"] == "False"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_keep_stop_while_a_removed_vmi_is_taken_over_leaves_its_qemu_its_files(
    tmp_path: Path,
) -> None:
    """Its manifest went while vmid was down; a stop with `keep` comes while the next daemon
    takes its QEMU over: the QEMU runs on, so its directory must stay (it was deleted under
    the running QEMU, an orphan no daemon could find again), and the next daemon stops it."""
    keep = fake_config("onDaemonStop: keep\n")
    with running_daemon(tmp_path, keep) as first:
        first.drop("vm-a.yaml", manifest("vm-a", mode="slow-takeover"))
        first.wait_phase("vm-a", "Running")
        pid = first.pid("vm-a")
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=30) == 0
    try:
        (tmp_path / "etc/vmid/instances/vm-a.yaml").unlink()  # removed while vmid was down
        with running_daemon(tmp_path, keep) as second:
            second.wait_for("the take-over", lambda: "taking it over" in second.log_text())
            second.process.send_signal(signal.SIGTERM)  # its query-status takes 2 s more
            assert second.process.wait(timeout=30) == 0
        assert _alive(pid)
        assert (tmp_path / "run/vmid/namespaces/default/vm-a/qemu").is_dir()
        with running_daemon(tmp_path, fake_config()) as third:
            third.wait_for("its QEMU to be stopped", lambda: not _alive(pid))
            third.wait_phase("vm-a", None)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


_FORK = """
import json, os, re, socket, sys
argv, control, ready, up = json.loads(sys.argv[1])
os.chdir(os.path.dirname(control) + "/qemu")  # as the daemon's fork: cwd set, exec still to come
os.unlink(control)
listener = socket.socket(socket.AF_UNIX)
listener.bind("../control.sock")  # relative: the absolute path is longer than sun_path
listener.listen(4)
os.write(up, b"u")  # in the VMI's directory, its exec to come
fd = listener.fileno()
os.set_inheritable(fd, True)
argv = [re.sub(r"id=vmid-control,fd=\\d+", f"id=vmid-control,fd={fd}", a) for a in argv]
os.read(ready, 1)
os.execvp(argv[0], argv)
"""


def test_a_fork_killed_with_its_daemon_before_exec_is_taken_over_once_it_is_qemu(
    tmp_path: Path,
) -> None:
    """The daemon dies between forking a QEMU and its exec, and the manifest goes meanwhile.
    The fork (the daemon's own executable, in the VMI's directory) becomes that QEMU a moment
    later: the next daemon must wait for it, never remove the directory under it (an orphan
    in a deleted directory no daemon can find), and stop it."""
    status = leave_running(tmp_path, "vm-a")
    pid = status["status"]["qemu"]["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
    os.kill(pid, signal.SIGKILL)  # what it was about to become: the fork below
    directory = tmp_path / "run/vmid/namespaces/default/vm-a"
    ready, go = os.pipe()
    is_up, up = os.pipe()
    spec = json.dumps([argv, str(directory / "control.sock"), ready, up])
    fork = subprocess.Popen(
        [sys.executable, "-c", _FORK, spec], pass_fds=[ready, up], stdout=subprocess.DEVNULL
    )
    os.close(ready)
    os.close(up)
    assert os.read(is_up, 1) == b"u"  # before: it held the daemon's lock (tests/test_pidlock.py)
    os.close(is_up)
    log = tmp_path / "daemon.log"

    def exec_once_surveyed() -> None:  # the next daemon has looked: let the fork exec
        waiting = "waiting for their exec"
        while directory.exists() and waiting not in _text(log) and fork.poll() is None:
            time.sleep(0.01)
        os.write(go, b"x")

    (tmp_path / "etc/vmid/instances/vm-a.yaml").unlink()  # removed while vmid was down
    surveyed = threading.Thread(target=exec_once_surveyed)
    try:
        log.unlink()
        surveyed.start()
        with running_daemon(tmp_path, fake_config()) as again:
            assert fork.wait(timeout=30) == 0  # stopped gracefully: it powered off
            again.wait_phase("vm-a", None)
            assert f"found its QEMU (pid {fork.pid}) running" in again.log_text()
    finally:
        surveyed.join()
        os.close(go)
        fork.kill()
        fork.wait()


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _rewrite_as_git_does(path: Path, text: str) -> None:
    """`git checkout`: unlink, then create the file anew (O_EXCL) and write it (a moment later:
    git writes a tree's files one by one)."""
    path.unlink()
    time.sleep(0.001)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _rewrite_as_an_editor_does(path: Path, text: str) -> None:
    """Emacs's first save: the file renamed to its backup, a new one written in its place."""
    backup = path.with_name(path.name + "~")
    path.rename(backup)
    time.sleep(0.001)
    path.write_text(text)
    backup.unlink()


def test_a_manifest_rewritten_by_git_or_an_editor_is_an_edit_not_a_removal(
    tmp_path: Path,
) -> None:
    """Found in review: scanned between the removal and the new file, the VM was powered off
    and started again, for an update that changed nothing (15 of 20 `git checkout`s)."""
    with running_daemon(tmp_path, fake_config()) as daemon:
        text = manifest("vm-a")
        path = daemon.drop("vm-a.yaml", text)
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        for _ in range(10):
            _rewrite_as_git_does(path, text)
            time.sleep(0.05)
            _rewrite_as_an_editor_does(path, text)
            time.sleep(0.05)
        time.sleep(0.5)
        assert daemon.phase("vm-a") == "Running"
        assert daemon.pid("vm-a") == pid
        assert "system_powerdown sent" not in daemon.log_text()


def test_only_a_manifest_going_away_waits_for_its_edit_to_settle() -> None:
    """`vmid apply` and tools renaming a dot file into the spool are scanned at once (their
    MOVED_FROM of the dot file is no removal: seen adding 10 ms to every launch)."""
    removal = spool_module.Inotify._removal
    assert removal(inotify.Event(1, inotify.MOVED_FROM, "web.yaml"))
    assert removal(inotify.Event(1, inotify.DELETE, "web.json"))
    assert not removal(inotify.Event(1, inotify.MOVED_FROM, ".web.yaml.tmp"))
    assert not removal(inotify.Event(1, inotify.DELETE, "web.yaml~"))
    assert not removal(inotify.Event(1, inotify.MOVED_TO, "web.yaml"))
    assert not removal(inotify.Event(1, inotify.CLOSE_WRITE, "web.yaml"))


def test_a_deep_tree_in_a_vmis_qemu_directory_goes_with_it_and_the_daemon_stays(
    tmp_path: Path,
) -> None:
    # A guest escaped into its QEMU can nest directories in its working directory as deep as
    # it likes: shutil.rmtree raised RecursionError out of the VMI's removal, ending the daemon.
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.drop("b.yaml", manifest("vm-b"))
        daemon.wait_phase("vm-a", "Running")
        daemon.wait_phase("vm-b", "Running")
        qemu_dir = tmp_path / "run/vmid/namespaces/default/vm-a/qemu"
        fd = os.open(qemu_dir, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(3000):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(fd)
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_phase("vm-a", None)
        assert not qemu_dir.exists()
        assert daemon.process.poll() is None
        assert daemon.phase("vm-b") == "Running"
