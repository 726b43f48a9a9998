"""A real `vmid daemon --root TMP` for end-to-end tests, and ways to watch what it does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FAKE_QEMU = str(Path(__file__).with_name("fakeqemu.py"))


class Daemon:
    """A vmid daemon process and its root directory."""

    def __init__(self, root: Path, process: subprocess.Popen[bytes], log: Path) -> None:
        self.root = root
        self.process = process
        self.log = log

    @property
    def spool(self) -> Path:
        return self.root / "etc/vmid/instances"

    def status(self, name: str) -> dict[str, Any] | None:
        """The status object of VMI `name` (NAME in namespace default, or NAMESPACE/NAME)."""
        key = name if "/" in name else f"default/{name}"
        path = self.root / "run/vmid/namespaces" / key / "status.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def pid(self, name: str) -> int:
        """The QEMU pid the VMI's status names."""
        data = self.status(name)
        assert data is not None, f"{name} has no status"
        pid: int = data["status"]["qemu"]["pid"]
        return pid

    def reason(self, name: str) -> str:
        """Why the VMI is in its phase (KubeVirt's status.reason)."""
        data = self.status(name)
        assert data is not None, f"{name} has no status"
        return str(data["status"].get("reason", ""))

    def phase(self, name: str) -> str | None:
        data = self.status(name)
        return data["status"]["phase"] if data else None

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon died waiting for {what}:\n{self.log_text()}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log_text()}")

    def wait_phase(self, name: str, phase: str | None, timeout: float = 30) -> None:
        self.wait_for(f"{name} to be {phase}", lambda: self.phase(name) == phase, timeout)

    def drop(self, name: str, text: str) -> Path:
        """Write a manifest the way tools should: a temporary file renamed into the spool."""
        staging = self.spool / f".{name}.tmp"
        staging.write_text(text)
        target = self.spool / name
        staging.rename(target)
        return target

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def vmid(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vmid.cli", *args, "--root", str(self.root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@contextmanager
def running_daemon(
    root: Path,
    config: str,
    prefix: tuple[str, ...] = ("unshare", "--net", "--"),
    env: dict[str, str] | None = None,
    open_root: bool = True,
) -> Iterator[Daemon]:
    """Start `vmid daemon --root root` with `config` as vmid.yaml; stop it with SIGTERM.

    `prefix` runs the daemon under another command: by default `unshare --net`, so whatever
    it does to links and nftables stays in a network namespace of its own. `open_root`: make
    `root` traversable by others first (see `traversable`).
    """
    (root / "etc/vmid/instances").mkdir(parents=True, exist_ok=True)
    (root / "etc/vmid/vmid.yaml").write_text(own_uids(config))
    daemon = start_daemon(root, prefix, env, open_root)
    process = daemon.process
    try:
        daemon.wait_for("the daemon to be ready", lambda: "vmid ready" in daemon.log_text())
        yield daemon
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def own_uids(config: str) -> str:
    """`config` with a qemuUids range of this test process's own (unless it sets one): two test
    runs (or a test and `make chaos`) at once must not pick one uid, which the launch guard
    rightly refuses as a QEMU of another VMI. Stays below the ranges tests/test_uids.py sets."""
    if "qemuUids" in config:
        return config
    first = 90200 + (os.getpid() % 30) * 250  # room for tests/test_faults.py's 200 VMIs
    return f"{config.rstrip()}\nqemuUids: {{first: {first}, count: 250}}\n"


def start_daemon(
    root: Path,
    prefix: tuple[str, ...] = ("unshare", "--net", "--"),
    env: dict[str, str] | None = None,
    open_root: bool = True,
) -> Daemon:
    """Start `vmid daemon --root root` (the `vmid` entry point) without waiting for it."""
    if open_root:
        traversable(root)
    log = root / "daemon.log"
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "vmid", "daemon", "-v", "--root", str(root)],
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    return Daemon(root, process, log)


def traversable(root: Path) -> None:
    """Let others search `root` and its parents (pytest makes them 0700), as `/` is: each VM's
    QEMU runs as a uid of its own and must reach its files under the root (the daemon refuses a
    root closed to others unless `qemuAsRoot: true`)."""
    for directory in (root, *root.parents):
        mode = directory.stat().st_mode
        if mode & 0o011 != 0o011:
            directory.chmod(mode | 0o011)


def leave_running(root: Path, name: str) -> dict[str, Any]:
    """Run VMI `name` under a daemon with `onDaemonStop: keep`, stop that daemon, and return the
    VMI's status as the daemon left it; its (fake) QEMU goes on running."""
    with running_daemon(root, fake_config("onDaemonStop: keep\n")) as daemon:
        daemon.drop(f"{name}.yaml", manifest(name))
        daemon.wait_phase(name, "Running")
        status = daemon.status(name)
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
    assert status is not None
    return status


def fake_config(extra: str = "") -> str:
    return f"accelerator: tcg\nqemu: {FAKE_QEMU}\n{extra}"


def manifest(name: str, mode: str = "obey", grace: int = 5, memory: str = "64Mi") -> str:
    return f"""apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: {grace}
  domain:
    memory: {{guest: {memory}}}
    firmware: {{serial: {mode}}}
    devices: {{autoattachPodInterface: false}}
"""


def one_running_vmi(root: Path, console: str = "login:\n") -> None:
    """The files a daemon leaves for one running VMI `default/vm-a` (its status, its console
    log, the event store), without a daemon: what the reading verbs read."""
    from vmid.paths import Paths
    from vmid.runtime import status

    paths = Paths(root)
    directory = paths.instance_runtime("default/vm-a")
    directory.mkdir(parents=True)
    manifest = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm-a", "namespace": "default"},
        "spec": {"domain": {"devices": {}}},
    }
    vmi = status.Status(directory / status.STATUS_FILE, manifest)
    vmi.transition(status.Phase.SCHEDULED)
    vmi.transition(status.Phase.RUNNING)
    vmi.write()
    paths.instance_logs("default/vm-a").mkdir(parents=True)
    (paths.instance_logs("default/vm-a") / "console.log").write_text(console)
    paths.events.mkdir(parents=True, exist_ok=True)
