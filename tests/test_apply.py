"""`vmid apply`, `vmid delete` and `vmid restart` against a real daemon with the fake QEMU."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.daemon import Daemon, fake_config, manifest, running_daemon

pytestmark = pytest.mark.timeout(120)


def vmid(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmid.cli", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        input=stdin,
    )


def spool_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "etc/vmid/instances").iterdir())


def test_apply_installs_nothing_when_one_document_is_invalid(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(manifest("good"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest("bad").replace("memory: {guest: 64Mi}", "memroy: {guest: 64Mi}"))
    (tmp_path / "root/etc/vmid/instances").mkdir(parents=True)
    done = vmid(tmp_path / "root", "apply", "-f", str(good), "-f", str(bad))
    assert done.returncode == 1
    assert f"{bad}:8:" in done.stderr
    assert 'unknown field "memroy"' in done.stderr
    assert "nothing was applied" in done.stderr
    assert spool_files(tmp_path / "root") == []


def test_apply_creates_configures_and_leaves_unchanged(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config()) as daemon:
        done = vmid(daemon.root, "apply", "-f", "-", stdin=manifest("web"))
        assert (done.returncode, done.stdout) == (0, "virtualmachineinstance/web created\n")
        installed = daemon.spool / "default_web.yaml"
        st = installed.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
        daemon.wait_phase("web", "Running")
        pid = daemon.pid("web")
        again = vmid(daemon.root, "apply", "-f", "-", stdin=manifest("web"))
        assert again.stdout == "virtualmachineinstance/web unchanged\n"
        bigger = vmid(daemon.root, "apply", "-f", "-", stdin=manifest("web", memory="96Mi"))
        assert bigger.stdout == "virtualmachineinstance/web configured\n"
        daemon.wait_for(
            "a new QEMU", lambda: daemon.phase("web") == "Running" and daemon.pid("web") != pid
        )
        assert spool_files(daemon.root) == ["default_web.yaml"]


def test_apply_splits_a_file_of_several_objects_and_honours_the_namespace(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text("# two VMIs\n" + manifest("a") + "---\n" + manifest("b"))
    root = tmp_path / "root"
    done = vmid(root, "apply", "-f", str(tmp_path), "-n", "staging")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "virtualmachineinstance/a created",
        "virtualmachineinstance/b created",
    ]
    assert spool_files(root) == ["staging_a.yaml", "staging_b.yaml"]
    assert "namespace: staging" in (root / "etc/vmid/instances/staging_b.yaml").read_text()
    other = vmid(root, "apply", "-f", str(root / "etc/vmid/instances/staging_a.yaml"), "-n", "x")
    assert other.returncode == 1
    assert "does not match the namespace 'x'" in other.stderr


def test_delete_waits_until_gone_and_rewrites_a_shared_file(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config()) as daemon:
        daemon.drop("pair.yaml", manifest("a") + "---\n" + manifest("b"))
        daemon.wait_phase("a", "Running")
        daemon.wait_phase("b", "Running")
        done = vmid(daemon.root, "delete", "vmi", "a")
        assert done.returncode == 0, done.stderr
        assert done.stdout == 'virtualmachineinstance "a" deleted\n'
        assert "pair.yaml rewritten without virtualmachineinstance/a" in done.stderr
        assert daemon.status("a") is None  # gone when delete returns
        assert daemon.phase("b") == "Running"
        assert "name: b" in (daemon.spool / "pair.yaml").read_text()
        missing = vmid(daemon.root, "delete", "vmi", "a")
        assert missing.returncode == 1
        assert "virtualmachineinstance 'a' not found in namespace 'default'" in missing.stderr


def test_delete_grace_period_overrides_the_manifests(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config()) as daemon:
        daemon.drop("slow.yaml", manifest("slow", mode="ignore", grace=60))
        daemon.wait_phase("slow", "Running")
        started = time.monotonic()
        done = vmid(daemon.root, "delete", "vmi", "slow", "--grace-period", "1")
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 20  # not the manifest's 60 s
        assert "the grace period of 1 s passed; killed" in vmid(daemon.root, "events").stdout
        assert os.listdir(daemon.root / "run/vmid/requests") == []


def test_delete_force_kills_at_once_without_waiting(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config()) as daemon:
        daemon.drop("slow.yaml", manifest("slow", mode="ignore", grace=60))
        daemon.wait_phase("slow", "Running")
        done = vmid(
            daemon.root, "delete", "-f", str(daemon.spool / "slow.yaml"), "--force", "--wait=false"
        )
        assert done.returncode == 0, done.stderr
        daemon.wait_phase("slow", None, timeout=10)
        assert "killed at once (grace period 0)" in vmid(daemon.root, "events").stdout


def restarted(daemon: Daemon, name: str, pid: int) -> bool:
    data = daemon.status(name)
    qemu = (data or {}).get("status", {}).get("qemu") or {}
    return daemon.phase(name) == "Running" and qemu.get("pid") not in (None, pid)


def test_restart_a_running_and_a_failed_vmi(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config()) as daemon:
        daemon.drop("web.yaml", manifest("web"))
        daemon.wait_phase("web", "Running")
        pid = daemon.pid("web")
        done = vmid(daemon.root, "restart", "web")
        assert (done.returncode, done.stdout) == (0, "VMI web was scheduled to restart\n")
        daemon.wait_for("web to run again", lambda: restarted(daemon, "web", pid))
        assert "restart requested" in vmid(daemon.root, "events").stdout
        os.kill(daemon.pid("web"), 9)
        daemon.wait_phase("web", "Failed")
        pid = daemon.pid("web")
        assert vmid(daemon.root, "restart", "web").returncode == 0
        daemon.wait_for("web to run again", lambda: restarted(daemon, "web", pid))
        unknown = vmid(daemon.root, "restart", "nope")
        assert unknown.returncode == 1
        assert "'nope' not found" in unknown.stderr


def test_a_restart_request_not_made_by_root_is_ignored(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config()) as daemon:
        daemon.drop("web.yaml", manifest("web"))
        daemon.wait_phase("web", "Running")
        pid = daemon.pid("web")
        requests = daemon.root / "run/vmid/requests"
        assert stat.S_IMODE(requests.stat().st_mode) == 0o700
        planted = requests / ".planted"
        planted.write_text('{"key": "default/web", "gracePeriodSeconds": 0}')
        os.chown(planted, 65534, 65534)  # as if another user had made it
        name = hashlib.sha256(b"default/web").hexdigest()[:40] + ".restart"  # as vmid names it
        planted.rename(requests / name)
        daemon.wait_for("the request to be dropped", lambda: not os.listdir(requests))
        assert f"{name}: not taken: owned by uid 65534, not root's" in daemon.log_text()
        assert daemon.pid("web") == pid
        assert daemon.phase("web") == "Running"


def test_apply_writes_json_as_yaml_with_the_namespace(tmp_path: Path) -> None:
    data = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance"}
    text = manifest("j").split("\n", 2)[2]  # the metadata and spec, in YAML
    source = tmp_path / "j.json"
    source.write_text(json.dumps({**data, **YAML(typ="safe").load(text)}))
    done = vmid(tmp_path / "root", "apply", "-f", str(source), "-n", "staging")
    assert (done.returncode, done.stdout) == (0, "virtualmachineinstance/j created\n")
    installed = YAML(typ="safe").load(tmp_path / "root/etc/vmid/instances/staging_j.yaml")
    assert installed["metadata"] == {"name": "j", "namespace": "staging"}
    assert "{" not in (tmp_path / "root/etc/vmid/instances/staging_j.yaml").read_text()
