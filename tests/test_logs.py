"""Bounded logs: rotated files, a guest flooding its console or QEMU's stderr, retention."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon import Daemon, fake_config, manifest, running_daemon
from vmid.config import load_config
from vmid.errors import ConfigError
from vmid.host import logfile

pytestmark = pytest.mark.timeout(120)

SMALL = "logs: {maxSize: 64Ki, maxBackups: 2}\n"
SMALL_BYTES = 64 * 1024


def sizes(log: Path) -> dict[str, int]:
    """The sizes of `log` and of its rotated files, by name."""
    index = logfile.times_path(log).name
    found = log.parent.glob(f"{log.name}*")
    return {p.name: p.stat().st_size for p in found if not p.name.startswith(index)}


def assert_bounded(log: Path, max_bytes: int, backups: int) -> None:
    """`log`, its rotated files and their time indexes (a console's) are bounded."""
    for files, limit in ((log, max_bytes), (logfile.times_path(log), max_bytes // 4)):
        found = sizes(files)
        names = {files.name, *(f"{files.name}.{n}" for n in range(1, backups + 1))}
        assert set(found) <= names, found
        assert all(size <= limit for size in found.values()), found
    for path in log.parent.glob(f"{log.name}*"):
        info = path.lstat()
        assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o600), path


def test_a_rotating_file_keeps_each_file_and_their_number_bounded(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    writer = logfile.RotatingFile(log, 1000, 2)
    for number in range(100):
        writer.write(f"{number:04d}".encode() * 60)  # 240 bytes: writes straddle the limit
    writer.close()
    assert sizes(log) == {"console.log": 1000, "console.log.1": 1000, "console.log.2": 1000}
    text = b"".join(p.read_bytes() for p in logfile.oldest_first(log))
    assert text == b"".join(f"{n:04d}".encode() * 60 for n in range(100))[-3000:]


def test_no_backups_means_one_file_started_afresh(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    log.write_bytes(b"x" * 5000)  # left larger by an older vmid: rotated at the first write
    writer = logfile.RotatingFile(log, 4096, 0)
    writer.write(b"new\n")
    writer.close()
    assert sizes(log) == {"qemu.log": 4}
    assert logfile.oldest_first(log) == [log]


def test_fewer_backups_than_before_deletes_the_extra_old_files(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    for number in range(1, 6):
        log.with_name(f"console.log.{number}").write_text(f"{number}\n")
    log.write_bytes(b"c" * 10)
    writer = logfile.RotatingFile(log, 10, 2)
    writer.write(b"d")
    writer.close()
    assert sizes(log) == {"console.log": 1, "console.log.1": 10, "console.log.2": 2}


def test_a_symlink_or_a_fifo_as_a_log_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (tmp_path / "qemu.log").symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        logfile.RotatingFile(tmp_path / "qemu.log", 4096, 1)
    os.mkfifo(tmp_path / "console.log")  # never blocks the daemon: ENXIO with no reader
    with pytest.raises(OSError, match="No such device or address"):
        logfile.RotatingFile(tmp_path / "console.log", 4096, 1)
    assert victim.read_text() == "untouched\n"


def test_logs_limits_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "vmid.yaml"
    config.write_text("logs: {maxSize: 1Mi, maxBackups: 5, keepAfterRemovalSeconds: 60}\n")
    logs = load_config(config, required=True).logs
    assert (logs.maxSize.value(), logs.maxBackups, logs.keepAfterRemovalSeconds) == (1 << 20, 5, 60)
    for bad, message in (
        ("{maxSize: 100}", "logs.maxSize: 100 is out of range: from 4Ki to 1Ti"),
        ("{maxBackups: -1}", "logs.maxBackups: -1 is not from 0 to 100"),
        ("{keepAfterRemovalSeconds: -5}", "logs.keepAfterRemovalSeconds: must not be negative"),
    ):
        config.write_text(f"logs: {bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(config, required=True)


def test_vmid_logs_prints_the_rotated_files_first(tmp_path: Path) -> None:
    logs = tmp_path / "var/log/vmid/namespaces/default/vm-a"
    logs.mkdir(parents=True)
    for name, text in (("console.log.2", "one\n"), ("console.log.1", "two\n")):
        (logs / name).write_text(text)
    (logs / "console.log").write_text("three\n")
    done = subprocess.run(
        [sys.executable, "-m", "vmid.cli", "logs", "vm-a", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == "one\ntwo\nthree\n"


def wait_for_file_text(daemon: Daemon, path: Path, text: str, timeout: float = 60) -> None:
    def found() -> bool:
        try:
            return text in path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    daemon.wait_for(f"{text!r} in {path}", found, timeout)


def test_a_guest_flooding_its_console_keeps_console_and_qemu_logs_bounded(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config(SMALL)) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="flood-4"))  # 4 MiB to each, at full speed
        daemon.wait_phase("vm-a", "Running")
        logs = tmp_path / "var/log/vmid/namespaces/default/vm-a"
        for log in (logs / "console.log", logs / "qemu.log"):
            wait_for_file_text(daemon, log, "flood done")
            assert_bounded(log, SMALL_BYTES, 2)
            assert sum(sizes(log).values()) > SMALL_BYTES  # it did rotate
        assert sizes(logfile.times_path(logs / "console.log"))  # the console's lines are timed
        assert not sizes(logfile.times_path(logs / "qemu.log"))
        printed = daemon.vmid("logs", "vm-a").stdout
        assert printed.endswith("x\nflood done\n")
        assert len(printed) == sum(sizes(logs / "console.log").values())


def last_tick(log: Path) -> int:
    """The number of the last `tick N` line the fake QEMU wrote to its console log."""
    text = ""
    for path in logfile.oldest_first(log):
        with contextlib.suppress(FileNotFoundError):  # rotated meanwhile
            text += path.read_text()
    ticks = re.findall(r"^tick (\d{8}) \.+$", text, re.MULTILINE)
    return int(ticks[-1]) if ticks else -1


def test_the_console_log_goes_on_after_a_daemon_restart_with_keep(tmp_path: Path) -> None:
    config = fake_config(SMALL + "onDaemonStop: keep\n")
    console = tmp_path / "var/log/vmid/namespaces/default/vm-a/console.log"
    with running_daemon(tmp_path, config) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", mode="tick"))  # 100 lines of 1 KiB a second
        daemon.wait_phase("vm-a", "Running")
        daemon.wait_for("ticks", lambda: last_tick(console) >= 10)
        pid = daemon.pid("vm-a")
    try:
        before = last_tick(console)
        time.sleep(0.5)  # no reader: QEMU's writes fail (EPIPE), QEMU runs on
        with running_daemon(tmp_path, config) as again:
            again.wait_for(
                "the re-adoption", lambda: f"re-adopted qemu pid={pid}" in again.log_text()
            )
            again.wait_for("ticks after the re-adoption", lambda: last_tick(console) > before + 150)
            assert_bounded(console, SMALL_BYTES, 2)
            (again.spool / "a.yaml").unlink()
            again.wait_phase("vm-a", None)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_removed_vmis_logs_are_deleted_after_the_configured_time(tmp_path: Path) -> None:
    config = fake_config("logs: {keepAfterRemovalSeconds: 3}\n")
    logs = tmp_path / "var/log/vmid/namespaces/default"
    with running_daemon(tmp_path, config) as daemon:
        for name in ("gone", "kept"):
            daemon.drop(f"{name}.yaml", manifest(name))
            daemon.wait_phase(name, "Running")
        (daemon.spool / "gone.yaml").unlink()
        daemon.wait_phase("gone", None)
        removed = time.monotonic()
        assert (logs / "gone/qemu.log").exists()  # kept a while: a post-mortem can read them
        daemon.wait_for("the logs of gone deleted", lambda: "gone: logs del" in daemon.log_text())
        assert time.monotonic() - removed >= 2.5
        assert not (logs / "gone").exists()
        assert (logs / "kept/qemu.log").exists()


def test_logs_of_vmis_removed_while_vmid_was_down_are_deleted_at_start(tmp_path: Path) -> None:
    # Where a vmid before namespaces kept them (moved to namespaces/default/ at start).
    logs = tmp_path / "var/log/vmid"
    for name in ("gone", "kept"):  # a week old, as if their VMIs were removed long ago
        (logs / name).mkdir(parents=True)
        (logs / name / "console.log").write_text("old\n")
        for path in (logs / name / "console.log", logs / name):
            os.utime(path, (time.time() - 7 * 86400,) * 2)
    (logs / "dnsmasq-vmid0.log").write_text("not a VMI's\n")
    (tmp_path / "etc/vmid/instances").mkdir(parents=True)
    # kept's manifest is in the spool (its QEMU is gone after a reboot): its logs stay.
    (tmp_path / "etc/vmid/instances/kept.yaml").write_text(manifest("kept", mode="refuse"))
    with running_daemon(tmp_path, fake_config()) as daemon:
        moved = logs / "namespaces/default"
        daemon.wait_for("the sweep", lambda: not (moved / "gone").exists())
        assert (moved / "kept/console.log").read_text() == "old\n"
        assert not (logs / "gone").exists()
        assert not (logs / "kept").exists()
        assert (logs / "dnsmasq-vmid0.log").exists()


def test_the_daemon_stays_responsive_while_a_guest_floods(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config(SMALL)) as daemon:
        daemon.drop("flood.yaml", manifest("flood", mode="flood-64"))
        daemon.wait_phase("flood", "Running")
        began = time.monotonic()
        for number in range(3):
            daemon.drop(f"vm-{number}.yaml", manifest(f"vm-{number}"))
        for number in range(3):
            daemon.wait_phase(f"vm-{number}", "Running", timeout=20)
        assert time.monotonic() - began < 20
        os.kill(daemon.pid("flood"), signal.SIGKILL)
        daemon.wait_phase("flood", "Failed")
