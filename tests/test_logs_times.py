"""`vmid logs --timestamps`, `--since` and `--since-time`: when each console line arrived, from
the time index the daemon keeps beside each log file, bounded however a guest writes."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon import fake_config, manifest, running_daemon
from vmid.host import logfile

pytestmark = pytest.mark.timeout(120)

#: 2023-11-14T22:13:20Z, in ns.
BASE = 1_700_000_000 * 10**9
SECOND = 10**9
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$")


def logs(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmid.cli", "logs", "vm", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


def console(root: Path) -> Path:
    log = root / "var/log/vmid/namespaces/default/vm/console.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def at(seconds: int, nanoseconds: int = 0) -> str:
    """BASE + `seconds`, as --timestamps prints it."""
    moment = datetime.datetime.fromtimestamp(BASE // SECOND + seconds, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanoseconds:09d}Z"


def test_each_line_has_the_time_its_first_byte_arrived_across_files(tmp_path: Path) -> None:
    writer = logfile.RotatingFile(console(tmp_path), 16, 5, timed=True)  # 16 bytes a file
    writer.write(b"one\ntwo\nthr", BASE)
    writer.write(b"ee\nfour\n", BASE + SECOND)  # three began a second earlier
    writer.write(b"a line longer than a file", BASE + 2 * SECOND)
    writer.write(b"\nlast\n", BASE + 3 * SECOND)
    writer.close()
    expected = [
        f"{at(0)} one",
        f"{at(0)} two",
        f"{at(0)} three",
        f"{at(1)} four",
        f"{at(2)} a line longer than a file",
        f"{at(3)} last",
    ]
    assert logs(tmp_path, "--timestamps").stdout.splitlines() == expected
    assert logs(tmp_path).stdout == "one\ntwo\nthree\nfour\na line longer than a file\nlast\n"
    assert logs(tmp_path, "--timestamps", "--tail", "2").stdout.splitlines() == expected[-2:]
    since = logs(tmp_path, "--since-time", at(1).replace(".000000000", ""))
    assert since.stdout == "four\na line longer than a file\nlast\n"
    # With --tail, as kubelet: of the last 3 lines, those since then.
    both = logs(tmp_path, "--tail", "3", "--since-time", "2023-11-14T22:13:22+00:00")
    assert both.stdout == "a line longer than a file\nlast\n"


def test_since_a_duration_counts_back_from_now(tmp_path: Path) -> None:
    now = time.time_ns()
    writer = logfile.RotatingFile(console(tmp_path), 4096, 1, timed=True)
    writer.write(b"two hours ago\n", now - 7200 * SECOND)
    writer.write(b"ten minutes ago\n", now - 600 * SECOND)
    writer.write(b"just now\n", now)
    writer.close()
    assert logs(tmp_path, "--since", "1h").stdout == "ten minutes ago\njust now\n"
    assert logs(tmp_path, "--since", "5m").stdout == "just now\n"
    assert logs(tmp_path, "--since", "1h59m30.5s").stdout == "ten minutes ago\njust now\n"
    assert logs(tmp_path, "--since", "0").stdout.count("\n") == 3  # 0: every line, as kubectl
    for bad in ("5", "5x", "-5m", "m"):
        refused = logs(tmp_path, f"--since={bad}", check=False)
        assert refused.returncode == 2
        assert f"{bad!r} is not a duration" in refused.stderr
    refused = logs(tmp_path, "--since-time", "2026-01-31T10:00:00", check=False)
    assert (refused.returncode, "with its offset" in refused.stderr) == (2, True)
    both = logs(tmp_path, "--since", "1h", "--since-time", at(0), check=False)
    assert "not allowed with" in both.stderr


def test_a_log_written_before_there_was_an_index_is_as_old_as_its_last_change(
    tmp_path: Path,
) -> None:
    log = console(tmp_path)
    log.write_bytes(b"old one\nold two\n")  # an older vmid's log, or one left by a crash
    os.utime(log, ns=(BASE, BASE))
    assert logs(tmp_path, "--timestamps").stdout.splitlines() == [
        f"{at(0)} old one",
        f"{at(0)} old two",
    ]
    writer = logfile.RotatingFile(log, 4096, 1, timed=True)  # this vmid's daemon takes it on
    writer.write(b"new\n", BASE + 5 * SECOND)
    writer.close()
    writer = logfile.RotatingFile(log, 4096, 1, timed=True)  # a daemon restarted mid-line
    writer.write(b"half", BASE + 6 * SECOND)
    writer.close()
    writer = logfile.RotatingFile(log, 4096, 1, timed=True)
    writer.write(b" done\nnext\n", BASE + 7 * SECOND)
    writer.close()
    assert logs(tmp_path, "--timestamps").stdout.splitlines() == [
        f"{at(0)} old one",
        f"{at(0)} old two",
        f"{at(5)} new",
        f"{at(6)} half done",
        f"{at(7)} next",
    ]


def index_sizes(log: Path) -> dict[str, int]:
    index = logfile.times_path(log)
    return {p.name: p.stat().st_size for p in log.parent.glob(f"{index.name}*")}


def test_a_guest_writing_tiny_lines_keeps_the_index_bounded(tmp_path: Path) -> None:
    # One record per line: the index would grow 16 bytes per byte of log; at a quarter of the
    # log's size the file is rotated instead.
    log = console(tmp_path)
    writer = logfile.RotatingFile(log, 4096, 2, timed=True)
    for number in range(20000):
        writer.write(b"\n", BASE + number * SECOND // 20)
    writer.close()
    found = index_sizes(log)
    assert set(found) == {"console.log.times", "console.log.times.1", "console.log.times.2"}
    assert all(size <= 1024 for size in found.values()), found
    logs_kept = [log, log.with_name("console.log.1"), log.with_name("console.log.2")]
    assert sorted(p.name for p in log.parent.iterdir()) == sorted(
        [*found, *(p.name for p in logs_kept)]
    )
    stamped = logs(tmp_path, "--timestamps", "--tail", "1").stdout
    assert stamped == f"{at(999, 950_000_000)} \n"


def test_a_dripping_guest_keeps_its_index_bounded_and_its_lines_timed(tmp_path: Path) -> None:
    config = fake_config("logs: {maxSize: 4Ki, maxBackups: 2}\n")
    with running_daemon(tmp_path, config) as daemon:
        began = time.time_ns()
        daemon.drop("vm.yaml", manifest("vm", mode="drip"))  # a 1-byte line every 10 ms
        daemon.wait_phase("vm", "Running")
        log = tmp_path / "var/log/vmid/namespaces/default/vm/console.log"
        index = logfile.times_path(log)
        daemon.wait_for("the index rotated twice", index.with_name(f"{index.name}.2").exists)
        found = index_sizes(log)
        assert len(found) <= 3, found
        assert all(size <= 1024 for size in found.values()), found
        assert all(p.stat().st_size <= 4096 for p in logfile.oldest_first(log))
        before = time.time_ns()
        printed = daemon.vmid("logs", "vm", "--timestamps", "--since", "1s").stdout.splitlines()
        after = time.time_ns()
    times = [stamp(line) for line in printed]
    assert 0 < len(times) <= 200  # ~100 lines a second, of the log's ~900
    assert times == sorted(times)
    assert before - 2 * SECOND <= times[0]
    assert times[-1] <= after
    assert began <= times[0]


def stamp(line: str) -> int:
    matched = STAMP.match(line)
    assert matched is not None, line
    moment = datetime.datetime.fromisoformat(matched[1])
    return int(moment.replace(microsecond=0).timestamp()) * SECOND + int(matched[1][20:29])


def test_a_symlink_as_a_time_index_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    log = console(tmp_path)
    logfile.times_path(log).symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        logfile.RotatingFile(log, 4096, 1, timed=True)
    assert victim.read_text() == "untouched\n"
