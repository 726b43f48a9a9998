"""VirtualMachines end to end with a fake QEMU: run strategies, start/stop/restart, status."""

from __future__ import annotations

import calendar
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, fake_config, running_daemon

pytestmark = pytest.mark.timeout(120)


def vm_manifest(name: str, strategy: str = "Always", mode: str = "obey", grace: int = 5) -> str:
    run = (
        f"running: {strategy[len('running-') :]}"
        if strategy.startswith("running-")
        else (f"runStrategy: {strategy}")
    )
    return f"""apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  {run}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: {grace}
      domain:
        memory: {{guest: 64Mi}}
        firmware: {{serial: {mode}}}
        devices: {{autoattachPodInterface: false}}
"""


def vm_status(daemon: Daemon, name: str) -> dict[str, Any] | None:
    path = daemon.root / "run/vmid/vms/default" / name / "status.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    found: dict[str, Any] = data["status"]
    return found


def printable(daemon: Daemon, name: str) -> str | None:
    status = vm_status(daemon, name)
    return status["printableStatus"] if status else None


def wait_printable(daemon: Daemon, name: str, value: str, timeout: float = 30) -> None:
    daemon.wait_for(f"{name} {value}", lambda: printable(daemon, name) == value, timeout)


def test_always_restarts_a_guest_that_powers_off_with_the_same_uuid(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", vm_manifest("vm-a", "Always", mode="halt-1"))
        daemon.wait_phase("vm-a", "Running")
        first = daemon.status("vm-a")
        assert first is not None
        assert first["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachine"
        assert first["metadata"]["labels"] == {"app": "vm-a"}
        pid, uuid = first["status"]["qemu"]["pid"], first["spec"]["domain"]["firmware"]["uuid"]
        daemon.wait_for("a new QEMU", lambda: _pid(daemon, "vm-a") not in (None, pid))
        again = daemon.status("vm-a")
        assert again is not None
        assert again["spec"]["domain"]["firmware"]["uuid"] == uuid
        assert vm_status(daemon, "vm-a") is not None


def _pid(daemon: Daemon, name: str) -> int | None:
    data = daemon.status(name)
    if data is None or data["status"]["phase"] != "Running":
        return None
    pid: int = data["status"]["qemu"]["pid"]
    return pid


def vmid_ok(daemon: Daemon, *args: str) -> str:
    done = daemon.vmid(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def vmid_refused(daemon: Daemon, *args: str) -> str:
    done = daemon.vmid(*args)
    assert done.returncode == 1, done.stdout
    return done.stderr


def test_rerun_on_failure_reruns_a_killed_qemu_not_a_guest_power_off(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("k.yaml", vm_manifest("vm-k", "RerunOnFailure"))
        daemon.drop("h.yaml", vm_manifest("vm-h", "RerunOnFailure", mode="halt-1"))
        daemon.wait_phase("vm-k", "Running")
        pid = daemon.pid("vm-k")
        os.kill(pid, signal.SIGKILL)
        daemon.wait_for("a new QEMU", lambda: _pid(daemon, "vm-k") not in (None, pid))
        # The guest powered off: Succeeded, deleted, not started again.
        wait_printable(daemon, "vm-h", "Stopped")
        daemon.wait_phase("vm-h", None)
        time.sleep(1)
        assert daemon.phase("vm-h") is None
        assert printable(daemon, "vm-h") == "Stopped"


def test_halted_runs_nothing_until_started_and_stays_started_across_a_restart(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", vm_manifest("vm-a", "Halted"))
        wait_printable(daemon, "vm-a", "Stopped")
        assert daemon.phase("vm-a") is None
        assert "VM is not running" in vmid_refused(daemon, "stop", "vm-a")
        assert "Halted does not support manual restart" in vmid_refused(daemon, "restart", "vm-a")
        assert vmid_ok(daemon, "start", "vm-a") == "VM vm-a was scheduled to start\n"
        daemon.wait_phase("vm-a", "Running")
        wait_printable(daemon, "vm-a", "Running")
        status = vm_status(daemon, "vm-a")
        assert status is not None
        assert (status["runStrategy"], status["ready"], status["created"]) == ("Always", True, True)
        assert "VM is already running" in vmid_refused(daemon, "start", "vm-a")
    assert "vm-a" in (tmp_path / "etc/vmid/instances/a.yaml").read_text()  # never written
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.wait_phase("vm-a", "Running")
        assert vmid_ok(daemon, "stop", "vm-a") == "VM vm-a was scheduled to stop\n"
        daemon.wait_phase("vm-a", None)
        wait_printable(daemon, "vm-a", "Stopped")
        status = vm_status(daemon, "vm-a")
        assert status is not None
        assert status["runStrategy"] == "Halted"


def test_manual_acts_on_requests_only(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("m.yaml", vm_manifest("vm-m", "Manual", mode="halt-1"))
        wait_printable(daemon, "vm-m", "Stopped")
        assert daemon.phase("vm-m") is None
        vmid_ok(daemon, "start", "vm-m")
        daemon.wait_phase("vm-m", "Succeeded")  # the guest powered off: it stays so
        wait_printable(daemon, "vm-m", "Stopped")
        first = daemon.status("vm-m")
        assert first is not None
        vmid_ok(daemon, "start", "vm-m")  # a new VMI
        daemon.wait_for(
            "a new VMI",
            lambda: (
                (daemon.status("vm-m") or first)["metadata"] != first["metadata"]
                or _pid(daemon, "vm-m") not in (None, first["status"]["qemu"]["pid"])
            ),
        )


def test_once_runs_once(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("o.yaml", vm_manifest("vm-o", "Once", mode="halt-1"))
        daemon.wait_phase("vm-o", "Succeeded")
        wait_printable(daemon, "vm-o", "Stopped")
        time.sleep(1)
        assert daemon.phase("vm-o") == "Succeeded"


def test_restart_makes_a_new_vmi_with_the_same_uuid(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", vm_manifest("vm-a", "running-true"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        uuid = (daemon.status("vm-a") or {})["spec"]["domain"]["firmware"]["uuid"]
        assert "--grace-period=0" in vmid_refused(daemon, "restart", "vm-a", "--force")
        vmid_ok(daemon, "restart", "vm-a", "--force", "--grace-period", "0")
        daemon.wait_for("a new QEMU", lambda: _pid(daemon, "vm-a") not in (None, pid))
        assert (daemon.status("vm-a") or {})["spec"]["domain"]["firmware"]["uuid"] == uuid
        assert "killed at once (grace period 0)" in vmid_ok(daemon, "events", "vm-a")


def test_get_and_describe_show_vms_and_their_vmis(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", vm_manifest("vm-a", "Always"))
        daemon.drop("b.yaml", vm_manifest("vm-b", "Halted"))
        daemon.wait_phase("vm-a", "Running")
        wait_printable(daemon, "vm-a", "Running")
        wait_printable(daemon, "vm-b", "Stopped")
        rows = [line.split() for line in vmid_ok(daemon, "get", "vm").splitlines()]
        assert rows[0] == ["NAME", "AGE", "STATUS", "READY"]
        assert [(r[0], r[2], r[3]) for r in rows[1:]] == [
            ("vm-a", "Running", "True"),
            ("vm-b", "Stopped", "False"),
        ]
        for listing in (vmid_ok(daemon, "get"), vmid_ok(daemon, "get", "vmi")):
            assert [line.split()[0] for line in listing.splitlines()[1:]] == ["vm-a"]
        assert vmid_ok(daemon, "get", "vmi", "vm-a").splitlines()[1].split()[0] == "vm-a"
        one = json.loads(vmid_ok(daemon, "get", "vm", "vm-b", "-o", "json"))
        assert one["kind"] == "VirtualMachine"
        assert one["status"]["runStrategy"] == "Halted"
        described = vmid_ok(daemon, "describe", "vm", "vm-a")
        assert "Strategy:   Always" in described
        assert "Status:     Running" in described
        assert "not found" in vmid_refused(daemon, "get", "vm", "nope")
        assert "not found" in vmid_refused(daemon, "start", "nope")
        # What `get` takes for VMIs, `get vm` takes too.
        both = vmid_ok(daemon, "get", "vm", "vm-a", "vm-b", "-o", "name").split()
        assert both == ["virtualmachine.kubevirt.io/vm-a", "virtualmachine.kubevirt.io/vm-b"]
        assert vmid_ok(daemon, "get", "vm", "-l", "nope=1", "-o", "name") == ""
        columns = ["-o", "custom-columns=N:.metadata.name,S:.status.runStrategy", "--no-headers"]
        assert vmid_ok(daemon, "get", "vm", "vm-b", *columns).split() == ["vm-b", "Halted"]
        shown = vmid_ok(daemon, "get", "vm", "--show-labels").splitlines()
        assert shown[0].split()[-1] == "LABELS"
        path = vmid_ok(daemon, "get", "vm", "-o", "jsonpath={.items[*].metadata.name}")
        assert path.split() == ["vm-a", "vm-b"]
        partly = daemon.vmid("get", "vm", "vm-a", "nope")
        assert partly.returncode == 1
        assert "virtualmachine 'nope' not found" in partly.stderr
        assert partly.stdout.split()[4] == "vm-a"  # the header, then the one found


def test_removing_the_vm_stops_its_vmi(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        file = daemon.drop("a.yaml", vm_manifest("vm-a", "Always"))
        daemon.wait_phase("vm-a", "Running")
        file.unlink()
        daemon.wait_phase("vm-a", None)
        daemon.wait_for("the VM gone", lambda: vm_status(daemon, "vm-a") is None)
        assert "Deletion: its VirtualMachine stopped it" in vmid_ok(daemon, "events", "vm-a")


def test_a_vm_that_never_starts_backs_off(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("r.yaml", vm_manifest("vm-r", "Always", mode="refuse"))
        wait_printable(daemon, "vm-r", "CrashLoopBackOff")
        status = vm_status(daemon, "vm-r")
        assert status is not None
        assert status["startFailure"]["consecutiveFailCount"] == 1
        retry = _epoch(status["startFailure"]["retryAfterTimestamp"]) - time.time()
        assert 8 <= retry <= 16  # 10 s, plus up to 5 s at random
        refused = vmid_refused(daemon, "start", "vm-r")
        assert "Always does not support manual start requests" in refused
        events = vmid_ok(daemon, "events", "vm-r")
        assert "virtualmachine/vm-r" in events
        assert "start failure 1, next in" in events
        daemon.wait_for(
            "a second failure",
            lambda: (
                ((vm_status(daemon, "vm-r") or {}).get("startFailure") or {}).get(
                    "consecutiveFailCount"
                )
                == 2
            ),
            timeout=25,
        )


def _epoch(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


BLANK = """  dataVolumeTemplates:
  - metadata: {name: data-a}
    spec:
      source: {blank: {}}
      storage: {resources: {requests: {storage: 1Mi}}}
"""


def with_blank_volume(text: str) -> str:
    text = text.replace("  template:\n", BLANK + "  template:\n")
    disks = "devices: {autoattachPodInterface: false, disks: [{name: data}]}"
    text = text.replace("devices: {autoattachPodInterface: false}", disks)
    return text + "      volumes: [{name: data, dataVolume: {name: data-a}}]\n"


def test_a_blank_data_volume_is_made_once_kept_and_moved_aside(tmp_path: Path) -> None:
    config = fake_config("deletedVolumesKeepSeconds: 2\n")
    claim = tmp_path / "var/lib/vmid/volumes/data-a.img"
    with running_daemon(tmp_path, config) as daemon:
        file = daemon.drop("a.yaml", with_blank_volume(vm_manifest("vm-a", "Always")))
        daemon.wait_phase("vm-a", "Running")
        assert claim.stat().st_size == 1 << 20
        with claim.open("r+b") as stream:  # what the guest wrote
            stream.write(b"guest data")
        pid = daemon.pid("vm-a")
        vmid_ok(daemon, "restart", "vm-a")
        daemon.wait_for("a new QEMU", lambda: _pid(daemon, "vm-a") not in (None, pid))
        assert claim.read_bytes()[:10] == b"guest data"
    with running_daemon(tmp_path, config) as daemon:  # a daemon restart keeps it too
        daemon.wait_phase("vm-a", "Running")
        assert claim.read_bytes()[:10] == b"guest data"
        file.unlink()
        aside = tmp_path / "var/lib/vmid/volumes/.deleted"
        daemon.wait_for("the claim moved aside", lambda: not claim.exists())
        [moved] = list(aside.iterdir())
        assert moved.name.startswith("default_vm-a_data-a.")
        assert moved.read_bytes()[:10] == b"guest data"
        daemon.wait_for("the claim deleted", lambda: not list(aside.iterdir()), timeout=10)


def test_a_daemon_restart_stops_no_vm_that_was_running(tmp_path: Path) -> None:
    names = {"vm-r": "RerunOnFailure", "vm-m": "Manual", "vm-o": "Once"}
    with running_daemon(tmp_path, fake_config()) as daemon:
        for name, strategy in names.items():
            daemon.drop(f"{name}.yaml", vm_manifest(name, strategy))
        wait_printable(daemon, "vm-m", "Stopped")  # a start before the daemon shows it: refused
        vmid_ok(daemon, "start", "vm-m")
        for name in names:
            daemon.wait_phase(name, "Running")
        created = _created(daemon, "vm-r")
    with running_daemon(tmp_path, fake_config()) as daemon:  # it powered them off: not theirs
        for name in names:
            daemon.wait_phase(name, "Running")
            wait_printable(daemon, name, "Running")
        assert _created(daemon, "vm-r") == created


def _created(daemon: Daemon, name: str) -> str:
    path = daemon.root / "run/vmid/vms/default" / name / "status.json"
    return str(json.loads(path.read_text())["metadata"]["creationTimestamp"])


def test_a_spec_edit_restarts_the_vm_with_its_uuid_and_disks(tmp_path: Path) -> None:
    claim = tmp_path / "var/lib/vmid/volumes/data-a.img"
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", with_blank_volume(vm_manifest("vm-a", "Always")))
        daemon.wait_phase("vm-a", "Running")
        before = daemon.status("vm-a") or {}
        claim.write_bytes(b"kept")
        daemon.drop("a.yaml", with_blank_volume(vm_manifest("vm-a", "Always", grace=7)))
        pid = before["status"]["qemu"]["pid"]
        daemon.wait_for("a new QEMU", lambda: _pid(daemon, "vm-a") not in (None, pid))
        after = daemon.status("vm-a") or {}
        assert after["spec"]["terminationGracePeriodSeconds"] == 7
        uuid = before["spec"]["domain"]["firmware"]["uuid"]
        assert after["spec"]["domain"]["firmware"]["uuid"] == uuid
        assert claim.read_bytes() == b"kept"


#: A web server for the daemon's network namespace: files from its directory; `/truncated`
#: promises more bytes than it sends; `/slow.raw` sends a 4 MiB raw image 1 MiB each 2 s.
SERVER = """
import http.server, os, sys, time
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow.raw":
            self.send_response(200)
            self.send_header("Content-Length", str(4 << 20))
            self.end_headers()
            for part in range(4):
                self.wfile.write((b"slow image" if part == 0 else b"").ljust(1 << 20, b"\\0"))
                self.wfile.flush()
                time.sleep(2)
            return
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        super().do_GET()
os.chdir(sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", 8088), Handler).serve_forever()
"""


def http_data_volume(text: str, url: str) -> str:
    source = f"source: {{http: {{url: '{url}'}}}}"
    return with_blank_volume(text).replace("source: {blank: {}}", source)


def test_http_data_volumes_import_raw_qcow2_gz_and_say_why_not(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "disk.raw").write_bytes(b"raw image" + bytes(4096))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", www / "disk.raw",
                    www / "disk.qcow2"], check=True)  # fmt: skip
    with (www / "disk.qcow2").open("rb") as raw, gzip.open(www / "disk.qcow2.gz", "wb") as gz:
        gz.write(raw.read())
    # An image naming a host file as its backing file: the guest would read that file.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw",
                    www / "evil.qcow2", "1M"], check=True)  # fmt: skip
    volumes = tmp_path / "var/lib/vmid/volumes"
    with running_daemon(tmp_path, fake_config()) as daemon:
        netns = ["nsenter", f"--net=/proc/{daemon.process.pid}/ns/net"]
        subprocess.run([*netns, "ip", "link", "set", "lo", "up"], check=True)
        server = subprocess.Popen([*netns, sys.executable, "-c", SERVER, str(www)])
        try:
            time.sleep(1)
            cases = {"vm-r": "disk.raw", "vm-q": "disk.qcow2", "vm-z": "disk.qcow2.gz"}
            for name, path in cases.items():
                text = vm_manifest(name).replace("data-a", f"data-{name}")
                url = f"http://127.0.0.1:8088/{path}"
                daemon.drop(
                    f"{name}.yaml", http_data_volume(text, url).replace("data-a", f"data-{name}")
                )
            daemon.drop(
                "bad.yaml", http_data_volume(vm_manifest("vm-404"), "http://127.0.0.1:8088/nope")
            )
            daemon.drop(
                "cut.yaml",
                http_data_volume(vm_manifest("vm-cut"), "http://127.0.0.1:8088/truncated").replace(
                    "data-a", "data-cut"
                ),
            )
            daemon.drop(
                "evil.yaml",
                http_data_volume(
                    vm_manifest("vm-evil"), "http://127.0.0.1:8088/evil.qcow2"
                ).replace("data-a", "data-evil"),
            )
            for name in cases:
                daemon.wait_phase(name, "Running")
                claim = volumes / f"data-{name}.img"
                assert claim.stat().st_size == 1 << 20  # grown to the DataVolume's size
                assert claim.read_bytes()[:9] == b"raw image"
            wait_printable(daemon, "vm-404", "DataVolumeError")
            wait_printable(daemon, "vm-cut", "DataVolumeError")
            assert daemon.phase("vm-404") is None
            assert "HTTP 404" in vmid_ok(daemon, "describe", "vm", "vm-404")
            assert "ImportSucceeded" in vmid_ok(daemon, "events", "vm-q")
            assert "truncated: 1000 of 1000000 bytes" in vmid_ok(daemon, "describe", "vm", "vm-cut")
            assert not (volumes / "data-a.img").exists()
            assert not (volumes / "data-cut.img").exists()
            wait_printable(daemon, "vm-evil", "DataVolumeError")
            evil = vmid_ok(daemon, "describe", "vm", "vm-evil")
            assert "a qcow2 image with a backing file is not accepted" in evil
            assert not (volumes / "data-evil.img").exists()
        finally:
            server.kill()
            server.wait()


def test_a_refused_edit_leaves_the_vm_running_and_says_why(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", vm_manifest("vm-a", "Always"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        daemon.drop("a.yaml", vm_manifest("vm-a", "Sometimes"))
        daemon.wait_for(
            "the refusal",
            lambda: any(
                c["type"] == "Synchronized" for c in (vm_status(daemon, "vm-a") or {})["conditions"]
            ),
        )
        listing = daemon.vmid("get", "vm")
        assert "Invalid RunStrategy (Sometimes)" in listing.stderr
        assert daemon.pid("vm-a") == pid
        daemon.drop("a.yaml", vm_manifest("vm-a", "Always"))  # mended
        daemon.wait_for("no refusal", lambda: "Sometimes" not in daemon.vmid("get", "vm").stderr)
        assert daemon.pid("vm-a") == pid


def test_a_registry_data_volume_copies_a_stored_image_and_refuses_a_missing_one(
    tmp_path: Path,
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"registry image" + bytes(8192))
    with running_daemon(tmp_path, fake_config()) as daemon:
        vmid_ok(daemon, "image", "import", "example.org/disks/data:1", str(image))
        text = with_blank_volume(vm_manifest("vm-g")).replace(
            "source: {blank: {}}", "source: {registry: {url: 'docker://example.org/disks/data:1'}}"
        )
        daemon.drop("g.yaml", text)
        daemon.wait_phase("vm-g", "Running")
        claim = tmp_path / "var/lib/vmid/volumes/data-a.img"
        assert claim.read_bytes()[:14] == b"registry image"
        assert claim.stat().st_size == 1 << 20
        missing = text.replace("vm-g", "vm-n").replace("data-a", "data-n")
        missing = missing.replace("example.org/disks/data:1", "127.0.0.1:9/none:1")
        daemon.drop("n.yaml", missing)
        wait_printable(daemon, "vm-n", "DataVolumeError", timeout=60)
        assert "127.0.0.1:9/none:1" in vmid_ok(daemon, "describe", "vm", "vm-n")


def test_stop_with_a_grace_period_kills_after_it(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        # A guest that takes 20 s to power off, with 30 s of grace in its spec.
        daemon.drop("a.yaml", vm_manifest("vm-a", "Always", mode="delay-20", grace=30))
        daemon.wait_phase("vm-a", "Running")
        started = time.monotonic()
        vmid_ok(daemon, "stop", "vm-a", "--grace-period", "1")
        daemon.wait_phase("vm-a", None)
        assert time.monotonic() - started < 10
        assert "the grace period of 1 s passed; killed" in vmid_ok(daemon, "events", "vm-a")
        wait_printable(daemon, "vm-a", "Stopped")
        assert (vm_status(daemon, "vm-a") or {})["runStrategy"] == "Halted"


def test_a_pvc_data_volume_clones_a_claim_never_through_a_symlink_out(tmp_path: Path) -> None:
    volumes = tmp_path / "var/lib/vmid/volumes"
    volumes.mkdir(parents=True)
    (volumes / "golden.img").write_bytes(b"golden disk" + bytes(70000))
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret")
    (volumes / "link.img").symlink_to(secret)  # a claim pointing out of volumesDir
    with running_daemon(tmp_path, fake_config()) as daemon:
        text = with_blank_volume(vm_manifest("vm-c")).replace(
            "source: {blank: {}}", "source: {pvc: {name: golden, namespace: default}}"
        )
        daemon.drop("c.yaml", text)
        daemon.wait_phase("vm-c", "Running")
        clone = volumes / "data-a.img"
        assert clone.read_bytes()[:11] == b"golden disk"
        assert clone.stat().st_size == 1 << 20
        evil = text.replace("vm-c", "vm-e").replace("data-a", "data-e")
        daemon.drop("e.yaml", evil.replace("name: golden", "name: link"))
        wait_printable(daemon, "vm-e", "DataVolumeError")
        assert "which is not a block device" in vmid_ok(daemon, "describe", "vm", "vm-e")
        assert not (volumes / "data-e.img").exists()


def test_a_daemon_killed_leaves_the_vm_running_and_its_disk_whole(tmp_path: Path) -> None:
    claim = tmp_path / "var/lib/vmid/volumes/data-a.img"
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", with_blank_volume(vm_manifest("vm-a", "RerunOnFailure")))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        with claim.open("r+b") as stream:
            stream.write(b"guest data")
        daemon.process.kill()  # kill -9: its QEMU goes on
        daemon.process.wait()
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.wait_phase("vm-a", "Running")
        wait_printable(daemon, "vm-a", "Running")
        assert daemon.pid("vm-a") == pid  # taken over, not restarted
        assert claim.read_bytes()[:10] == b"guest data"
        os.kill(pid, signal.SIGKILL)  # now its QEMU dies: RerunOnFailure starts a new one
        daemon.wait_for("a new QEMU", lambda: _pid(daemon, "vm-a") not in (None, pid))
        assert claim.read_bytes()[:10] == b"guest data"


def test_a_daemon_killed_during_the_back_off_keeps_the_count_and_the_wait(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("r.yaml", vm_manifest("vm-r", "Always", mode="refuse"))
        wait_printable(daemon, "vm-r", "CrashLoopBackOff")
        daemon.wait_for("a second failure", lambda: _fail_count(daemon, "vm-r") == 2, timeout=25)
        before = (vm_status(daemon, "vm-r") or {})["startFailure"]
        daemon.process.kill()  # kill -9, 40-60 s before the next start
        daemon.process.wait()
    with running_daemon(tmp_path, fake_config()) as daemon:
        wait_printable(daemon, "vm-r", "CrashLoopBackOff")
        time.sleep(2)
        status = vm_status(daemon, "vm-r") or {}
        assert status["printableStatus"] == "CrashLoopBackOff"  # still waiting: no new VMI
        assert status["startFailure"] == before  # neither reset nor counted again


def _fail_count(daemon: Daemon, name: str) -> int:
    failure = (vm_status(daemon, name) or {}).get("startFailure") or {}
    return int(failure.get("consecutiveFailCount", 0))


def test_a_vm_whose_image_does_not_pull_shows_err_image_pull(tmp_path: Path) -> None:
    config = fake_config("images: {pullBackoffSeconds: 3}\n")
    with running_daemon(tmp_path, config) as daemon:
        disk = "devices: {autoattachPodInterface: false, disks: [{name: root}]}"
        text = vm_manifest("vm-p").replace("devices: {autoattachPodInterface: false}", disk)
        daemon.drop("p.yaml", text + "      volumes: [{name: root, containerDisk: "
                    "{image: '127.0.0.1:9/none:1'}}]\n")  # fmt: skip
        wait_printable(daemon, "vm-p", "ErrImagePull", timeout=60)
        [ready] = [
            c for c in (vm_status(daemon, "vm-p") or {})["conditions"] if c["type"] == "Ready"
        ]
        assert 'Failed to pull image "127.0.0.1:9/none:1"' in ready["message"]
        wait_printable(daemon, "vm-p", "ImagePullBackOff")
        assert "ImagePullBackOff" in vmid_ok(daemon, "get", "vm")
        assert "Back-off pulling image" in vmid_ok(daemon, "describe", "vm", "vm-p")


def test_start_paused_then_pause_and_unpause_the_vm(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", vm_manifest("vm-a", "Halted"))
        daemon.drop("b.yaml", vm_manifest("vm-b", "Halted"))
        wait_printable(daemon, "vm-a", "Stopped")
        assert "VirtualMachine vm-a is not set to run" in vmid_refused(
            daemon, "pause", "vm", "vm-a"
        )
        assert "virtualmachine 'nope' not found" in vmid_refused(daemon, "pause", "vm", "nope")
        assert vmid_ok(daemon, "start", "--paused", "vm-a") == "VM vm-a was scheduled to start\n"
        wait_printable(daemon, "vm-a", "Paused")
        vmi = daemon.status("vm-a") or {}
        assert vmi["spec"]["startStrategy"] == "Paused"
        assert (vm_status(daemon, "vm-a") or {})["runStrategy"] == "Always"
        pid = daemon.pid("vm-a")
        daemon.process.kill()  # a daemon restart takes the paused VMI over as it is
        daemon.process.wait()
    with running_daemon(tmp_path, fake_config()) as daemon:
        wait_printable(daemon, "vm-a", "Paused")
        assert daemon.pid("vm-a") == pid
        assert vmid_ok(daemon, "unpause", "vm", "vm-a") == "VMI vm-a was scheduled to unpause\n"
        wait_printable(daemon, "vm-a", "Running")
        vmid_ok(daemon, "pause", "vm", "vm-a")
        wait_printable(daemon, "vm-a", "Paused")
        assert "is already paused" in vmid_refused(daemon, "pause", "vm", "vm-a")
        vmid_ok(daemon, "unpause", "vm-a")  # the VMI's name, as before
        wait_printable(daemon, "vm-a", "Running")
        vmid_ok(daemon, "restart", "vm-a")  # a new VMI, not paused: the request was the last's
        daemon.wait_for("a new QEMU", lambda: _pid(daemon, "vm-a") not in (None, pid))
        wait_printable(daemon, "vm-a", "Running")
        assert "startStrategy" not in (daemon.status("vm-a") or {})["spec"]
        daemon.drop("m.yaml", vm_manifest("vm-m", "Manual"))
        wait_printable(daemon, "vm-m", "Stopped")
        vmid_ok(daemon, "start", "vm-m", "--paused")
        wait_printable(daemon, "vm-m", "Paused")


def test_an_import_shows_its_progress_as_cdi_does(tmp_path: Path) -> None:
    volumes = tmp_path / "var/lib/vmid/volumes"
    with running_daemon(tmp_path, fake_config()) as daemon:
        netns = ["nsenter", f"--net=/proc/{daemon.process.pid}/ns/net"]
        subprocess.run([*netns, "ip", "link", "set", "lo", "up"], check=True)
        server = subprocess.Popen([*netns, sys.executable, "-c", SERVER, str(tmp_path)])
        try:
            time.sleep(1)
            text = http_data_volume(vm_manifest("vm-s"), "http://127.0.0.1:8088/slow.raw")
            daemon.drop("s.yaml", text.replace("storage: 1Mi", "storage: 8Mi"))
            seen = set()

            def importing() -> bool:
                listing = daemon.vmid("get", "dv").stdout.splitlines()
                row = listing[1].split() if len(listing) > 1 else []
                if row[:2] == ["data-a", "ImportInProgress"] and row[2] != "N/A":
                    seen.add(row[2])
                return len(seen) >= 2

            daemon.wait_for("two steps of progress", importing, timeout=30)
            assert seen <= {"25.00%", "50.00%", "75.00%", "100.00%"}
            assert printable(daemon, "vm-s") == "Provisioning"
            assert "Provisioning" in vmid_ok(daemon, "get", "vm")
            described = vmid_ok(daemon, "describe", "vm", "vm-s")
            assert "Status:     Provisioning" in described
            assert re.search(r"data-a +ImportInProgress +\d+\.\d\d%", described), described
            assert re.search(r"importing data-a \(ImportInProgress \d+\.\d\d%\)", described)
            daemon.wait_phase("vm-s", "Running", timeout=30)
            dv = json.loads(vmid_ok(daemon, "get", "dv", "data-a", "-o", "json"))
            assert dv["kind"] == "DataVolume"
            assert (dv["status"]["phase"], dv["status"]["progress"]) == ("Succeeded", "100.0%")
            assert dv["metadata"]["ownerReferences"][0]["name"] == "vm-s"
            assert (volumes / "data-a.img").read_bytes()[:10] == b"slow image"
            # An import that fails: the DataVolume says why, the VM is DataVolumeError.
            text = http_data_volume(vm_manifest("vm-x"), "http://127.0.0.1:8088/truncated")
            daemon.drop("x.yaml", text.replace("data-a", "data-x"))
            wait_printable(daemon, "vm-x", "DataVolumeError")
            dv = json.loads(vmid_ok(daemon, "get", "dv", "data-x", "-o", "json"))
            assert dv["status"]["phase"] == "Failed"
            [running] = [c for c in dv["status"]["conditions"] if c["type"] == "Running"]
            assert running["reason"] == "Error"
            assert "truncated: 1000 of 1000000 bytes" in running["message"]
        finally:
            server.kill()
            server.wait()


def watch_vms(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmid", "get", "vm", *args, "-w", "--root", str(daemon.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(stream: Any, text: str) -> list[str]:
    lines: list[str] = []
    while text not in (line := stream.readline()):
        assert line, f"the watch ended before {text!r}: {lines}"
        lines.append(line)
    return [*lines, line]


def test_get_vm_watch_prints_each_change_of_status_until_the_daemon_stops(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("b.yaml", vm_manifest("vm-b", "Halted"))
        wait_printable(daemon, "vm-b", "Stopped")
        watcher = watch_vms(daemon)
        assert watcher.stdout is not None
        try:
            assert watcher.stdout.readline().split() == ["NAME", "AGE", "STATUS", "READY"]
            assert watcher.stdout.readline().split()[::2] == ["vm-b", "Stopped"]
            daemon.drop("a.yaml", vm_manifest("vm-a", "Manual"))
            assert read_until(watcher.stdout, "vm-a")[-1].split()[2:] == ["Stopped", "False"]
            vmid_ok(daemon, "start", "vm-a")
            lines = read_until(watcher.stdout, "True")
            assert [line.split()[2] for line in lines][-1] == "Running", lines
            (daemon.spool / "a.yaml").unlink()
            assert read_until(watcher.stdout, "Deleted")[-1].split() == ["vm-a", "Deleted"]
            vmid_ok(daemon, "start", "vm-b")
            assert "vm-b" in read_until(watcher.stdout, "Running")[-1]
        except BaseException:
            watcher.kill()
            raise
        daemon.process.terminate()
        assert daemon.process.wait(timeout=30) == 0
        _, err = watcher.communicate(timeout=10)
        assert watcher.returncode == 0, err
        assert err.strip().endswith("vmid: the daemon stopped"), err


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_get_vm_watch_prints_documents(tmp_path: Path, output: str) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", vm_manifest("vm-a", "Halted"))
        wait_printable(daemon, "vm-a", "Stopped")
        watcher = watch_vms(daemon, "vm-a", "-o", output)
        shown = '"printableStatus": "{}"' if output == "json" else "printableStatus: {}"
        try:
            assert watcher.stdout is not None
            read_until(watcher.stdout, shown.format("Stopped"))
            vmid_ok(daemon, "start", "vm-a")
            lines = read_until(watcher.stdout, shown.format("Running"))
            assert output == "json" or "---\n" in lines  # YAML documents apart
        finally:
            watcher.kill()
            watcher.communicate()
        assert "not found" in vmid_refused(daemon, "get", "vm", "nope", "-w")
        assert "vmid get vm -w does not take -o name" in vmid_refused(
            daemon, "get", "vm", "-w", "-o", "name"
        )


def vm_labelled(name: str, strategy: str, app: str) -> str:
    """A VM whose own labels (not its template's) say app=APP."""
    return vm_manifest(name, strategy).replace(
        f"  name: {name}\n", f"  name: {name}\n  labels: {{app: {app}}}\n", 1
    )


def test_get_vm_watch_shows_a_vm_whose_label_edit_leaves_the_selection(tmp_path: Path) -> None:
    """A label edit is the VM's metadata alone: its status shows the new labels (`-l`,
    `--show-labels`), a watch selecting it on them shows it leave, its VMI runs on (a paused
    one too: `start --paused` holds while its spec is the same)."""
    vms = (("vm-h", "Halted"), ("vm-p", "Manual"), ("vm-r", "Always"))
    with running_daemon(tmp_path, fake_config()) as daemon:
        for name, strategy in vms:
            daemon.drop(f"{name}.yaml", vm_labelled(name, strategy, "web"))
        wait_printable(daemon, "vm-p", "Stopped")
        vmid_ok(daemon, "start", "--paused", "vm-p")
        wait_printable(daemon, "vm-p", "Paused")
        wait_printable(daemon, "vm-r", "Running")
        pids = {name: daemon.pid(name) for name in ("vm-p", "vm-r")}
        watcher = watch_vms(daemon, "-l", "app=web")
        assert watcher.stdout is not None
        try:
            seen = [watcher.stdout.readline().split()[0] for _ in range(4)]
            assert seen == ["NAME", "vm-h", "vm-p", "vm-r"]
            for name, strategy in vms:
                daemon.drop(f"{name}.yaml", vm_labelled(name, strategy, "db"))
                assert read_until(watcher.stdout, "Deleted")[-1].split() == [name, "Deleted"]
        finally:
            watcher.kill()
            watcher.communicate(timeout=10)
        listed = vmid_ok(daemon, "get", "vm", "--show-labels").splitlines()
        assert [(row.split()[0], row.split()[-1]) for row in listed[1:]] == [
            (name, "app=db") for name, _ in vms
        ]
        assert vmid_ok(daemon, "get", "vm", "-l", "app=web", "-o", "name") == ""
        assert vmid_ok(daemon, "get", "vm", "-l", "app=db", "-o", "name").split() == [
            f"virtualmachine.kubevirt.io/{name}" for name, _ in vms
        ]
        # Labels are metadata: the VMIs run on as they were, their template's labels too.
        time.sleep(1)
        assert {name: daemon.pid(name) for name in pids} == pids
        assert printable(daemon, "vm-p") == "Paused"
        assert (daemon.status("vm-r") or {})["metadata"]["labels"] == {"app": "vm-r"}
        assert "Restarting" not in vmid_ok(daemon, "events", "vm-r")
