"""The daemon under systemd: sd_notify readiness, status, stopping, timeouts and watchdog."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.daemon import fake_config, manifest, running_daemon
from vmid.config import Config, load_config
from vmid.runtime.systemd import Notifier

pytestmark = pytest.mark.timeout(120)


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_status_stopping_and_watchdog(tmp_path: Path) -> None:
    spool = tmp_path / "etc/vmid/instances"
    spool.mkdir(parents=True)
    (spool / "a.yaml").write_text(manifest("vm-a", grace=7))
    (spool / "b.yaml").write_text(manifest("vm-b", mode="refuse"))
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
        messages: list[str] = []

        def watchdog_pinged() -> bool:
            messages.extend(received(sock))
            return any("WATCHDOG=1" in m for m in messages)

        with running_daemon(tmp_path, fake_config(), env=env) as daemon:
            daemon.wait_for("the watchdog", watchdog_pinged)
            daemon.process.send_signal(signal.SIGTERM)
            assert daemon.process.wait(timeout=30) == 0
        messages += received(sock)
    text = "\n".join(messages)
    ready = next(m for m in messages if "READY=1" in m)
    # READY=1 only once the spool's VMIs have started or failed, with a summary.
    assert "STATUS=1 running, 1 failed" in ready
    assert "STOPPING=1" in text
    assert f"EXTEND_TIMEOUT_USEC={(7 + 15) * 10**6}" in text


def test_the_status_line_follows_many_changes(tmp_path: Path) -> None:
    """STATUS= is sent once per burst of changes (issue 16): the last one sent is right."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        lines: list[str] = []

        def last_status_is(expected: str) -> bool:
            lines.extend(line for m in received(sock) for line in m.splitlines())
            return [line for line in lines if line.startswith("STATUS=")][-1:] == [expected]

        with running_daemon(tmp_path, fake_config(), env={"NOTIFY_SOCKET": address}) as daemon:
            daemon.wait_for("ready", lambda: last_status_is("STATUS=no VMIs"))
            for i in range(8):
                daemon.drop(f"vm-{i}.yaml", manifest(f"vm-{i}", mode="refuse" if i else "obey"))
            daemon.wait_for("8", lambda: last_status_is("STATUS=1 running, 7 failed"))
            for i in range(5):
                (daemon.spool / f"vm-{i}.yaml").unlink()
            daemon.wait_for("3 left", lambda: last_status_is("STATUS=3 failed"))


def mended(messages: list[str], sock: socket.socket) -> bool:
    messages.extend(received(sock))
    return any("STATUS=1 running, 2 failed" in m for m in messages)


def test_status_line_counts_refused_manifests_as_vmid_get_does(tmp_path: Path) -> None:
    spool = tmp_path / "etc/vmid/instances"
    spool.mkdir(parents=True)
    (spool / "a.yaml").write_text(manifest("vm-a"))
    (spool / "b.yaml").write_text(manifest("vm-b", mode="refuse"))  # QEMU fails: a Failed VMI
    (spool / "c.yaml").write_text(manifest("vm-c", memory="lots"))  # a VMI refused
    (spool / "d.yaml").write_text("{{{ not yaml")  # a file refused: a row <d.yaml>
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        with running_daemon(tmp_path, fake_config(), env={"NOTIFY_SOCKET": address}) as daemon:
            table = daemon.vmid("get").stdout
            messages = received(sock)
            (spool / "d.yaml").unlink()  # mended: the line follows, though no VMI changed
            daemon.wait_for("the line without it", lambda: mended(messages, sock))
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=1 running, 3 failed" in ready
    assert table.count(" Failed ") == 3, table
    assert table.count(" Running ") == 1, table


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    notifier.notify(READY="1")
    assert notifier.watchdog_seconds is None


def test_abstract_socket_and_watchdog_of_another_process() -> None:
    notifier = Notifier(
        {"NOTIFY_SOCKET": "@vmid-test", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    )
    assert repr(notifier) == "<Notifier socket='\\x00vmid-test' watchdog=None>"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_unit_file_is_valid(tmp_path: Path) -> None:
    unit = (Path(__file__).parent.parent / "systemd/vmid.service").read_text()
    assert "Type=notify" in unit
    assert "KillMode=process" in unit
    # verify wants the ExecStart binary to exist; check every directive with one that does.
    (tmp_path / "vmid.service").write_text(unit.replace("/usr/local/bin/vmid", "/bin/true"))
    result = subprocess.run(
        # --man=no: Documentation= names vmid(8), installed by `make install`, not here.
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "vmid.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr


def test_the_shipped_config_is_the_defaults_and_runs_qemu_unprivileged() -> None:
    config = load_config(Path(__file__).parent.parent / "conf/vmid.yaml", required=True)
    assert config == Config()
    assert not config.qemuAsRoot
    assert config.sandbox


MAX_EXPOSURE = 3.3  # `systemd-analyze security`: 6.6 before CapabilityBoundingSet and the rest


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_the_unit_keeps_its_exposure_score() -> None:
    unit = Path(__file__).parent.parent / "systemd/vmid.service"
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = next(
        (x for x in result.stdout.splitlines() if "Overall exposure level" in x), result.stderr
    )
    assert "vmid.service:" in line, line
    assert float(line.split(":")[1].split()[0]) <= MAX_EXPOSURE, result.stdout
