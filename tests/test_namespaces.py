"""A VMI is namespace/name, as in KubeVirt: two VMIs of one name in two namespaces are two VMIs,
and a vmid from before namespaces hands its VMIs over as the `default` namespace's."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import fake_config, leave_running, manifest, running_daemon
from vmid.runtime.process import find_qemus

pytestmark = pytest.mark.timeout(120)


def in_namespace(namespace: str, name: str) -> str:
    return manifest(name).replace(
        f"  name: {name}\n", f"  name: {name}\n  namespace: {namespace}\n"
    )


def test_one_name_in_two_namespaces_is_two_vmis(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("web-a.yaml", in_namespace("a", "web"))
        daemon.drop("web-b.yaml", in_namespace("b", "web"))
        daemon.wait_phase("a/web", "Running")
        daemon.wait_phase("b/web", "Running")
        assert "already defined" not in daemon.log_text()
        pid_a, pid_b = daemon.pid("a/web"), daemon.pid("b/web")
        assert pid_a != pid_b
        for namespace, pid in (("a", pid_a), ("b", pid_b)):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            assert f"guest={namespace}/web,debug-threads=on" in argv  # QEMU's -name
            cwd = os.readlink(f"/proc/{pid}/cwd")
            assert cwd == str(tmp_path / f"run/vmid/namespaces/{namespace}/web/qemu")

        listed = daemon.vmid("get", "-n", "a")
        assert listed.returncode == 0
        assert [line.split()[0] for line in listed.stdout.splitlines()] == ["NAME", "web"]
        every = daemon.vmid("get", "-A").stdout.splitlines()
        assert every[0].split()[:2] == ["NAMESPACE", "NAME"]
        assert [line.split()[:3] for line in every[1:]] == [
            ["a", "web", every[1].split()[2]],
            ["b", "web", every[2].split()[2]],
        ]
        assert daemon.vmid("get").stdout.splitlines()[1:] == []  # kubectl's: `default` only
        shown = json.loads(daemon.vmid("get", "web", "-n", "b", "-o", "json").stdout)
        assert shown["metadata"]["namespace"] == "b"
        assert shown["status"]["qemu"]["pid"] == pid_b
        described = daemon.vmid("describe", "web", "--namespace", "b")
        assert "Namespace:  b" in described.stdout
        missing = daemon.vmid("describe", "web")
        assert missing.returncode == 1
        assert "'web' not found in namespace 'default'" in missing.stderr

        (daemon.spool / "web-b.yaml").unlink()
        daemon.wait_phase("b/web", None)
        assert daemon.phase("a/web") == "Running"
        assert daemon.pid("a/web") == pid_a


def test_a_name_defined_twice_in_one_namespace_is_still_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("1.yaml", in_namespace("a", "web"))
        daemon.wait_phase("a/web", "Running")
        daemon.drop("2.yaml", in_namespace("a", "web"))
        daemon.wait_for(
            "the refusal",
            lambda: "VMI 'a/web' (namespace/name) is already defined in" in daemon.log_text(),
        )


def old_layout(root: Path, name: str) -> None:
    """Put VMI `name`'s directories where a vmid before namespaces kept them."""
    for new, old in (
        ("run/vmid/namespaces/default", "run/vmid/instances"),
        ("var/lib/vmid/namespaces/default", "var/lib/vmid/instances"),
        ("var/log/vmid/namespaces/default", "var/log/vmid"),
    ):
        (root / old).mkdir(parents=True, exist_ok=True)
        os.rename(root / new / name, root / old / name)
    shutil.rmtree(root / "run/vmid/namespaces")
    status = root / "run/vmid/instances" / name / "status.json"
    data = json.loads(status.read_text())
    del data["metadata"]["namespace"]  # the object as it was written then
    status.write_text(json.dumps(data))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_vmis_of_a_vmid_before_namespaces_are_taken_over_in_default(tmp_path: Path) -> None:
    left = leave_running(tmp_path, "vm-a")
    pid = left["status"]["qemu"]["pid"]
    old_layout(tmp_path, "vm-a")
    try:
        with running_daemon(tmp_path, fake_config()) as again:
            again.wait_for(
                "the take-over", lambda: f"re-adopted qemu pid={pid}" in again.log_text()
            )
            again.wait_phase("vm-a", "Running")
            assert again.pid("vm-a") == pid
            assert not (tmp_path / "run/vmid/instances").exists()
            assert not (tmp_path / "var/lib/vmid/instances").exists()
            moved = tmp_path / "var/log/vmid/namespaces/default/vm-a/console.log"
            assert moved.exists()
            assert os.readlink(f"/proc/{pid}/cwd").endswith("namespaces/default/vm-a/qemu")
            assert again.log_text().count("qemu started") == 0
            (again.spool / "vm-a.yaml").unlink()
            again.wait_phase("vm-a", None)
            again.wait_for("its QEMU to end", lambda: not alive(pid))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_qemu_started_before_namespaces_is_found_by_its_bare_name(tmp_path: Path) -> None:
    instances = tmp_path / "namespaces"
    (instances / "default/web/qemu").mkdir(parents=True)
    (instances / "a/web/qemu").mkdir(parents=True)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)", "-name"]
    old = subprocess.Popen(
        [*sleep, "guest=web,debug-threads=on"], cwd=instances / "default/web/qemu"
    )
    # In another namespace only namespace/name is its own: a bare name is not.
    other = subprocess.Popen([*sleep, "guest=web,debug-threads=on"], cwd=instances / "a/web/qemu")
    try:
        assert find_qemus(instances, "qemu") == {"default/web": [old.pid]}
    finally:
        for process in (old, other):
            process.kill()
            process.wait()
