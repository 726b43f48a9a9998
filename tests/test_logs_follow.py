"""`vmid logs -f` and `--tail` against a real daemon whose fake QEMU writes a line every 10 ms."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import Daemon, fake_config, manifest, running_daemon

pytestmark = pytest.mark.timeout(120)

#: A rotation every 16 lines: about 6 a second, faster than `-f` looks (5 a second).
SMALL_LOGS = "logs: {maxSize: 16Ki, maxBackups: 3}\n"


def ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^tick (\d{8}) \.+$", text, re.MULTILINE)]


def last(log: Path) -> int:
    try:
        numbers = ticks(log.read_text(errors="replace"))
    except FileNotFoundError:  # rotated, the new file not made yet
        return 0
    return numbers[-1] if numbers else 0


def runs(numbers: list[int]) -> list[list[int]]:
    """`numbers` cut where they do not go up by one: one run per QEMU."""
    cut: list[list[int]] = []
    for number in numbers:
        if cut and number == cut[-1][-1] + 1:
            cut[-1].append(number)
        else:
            cut.append([number])
    return cut


class Follow:
    """`vmid logs NAME -f` writing into a file: a pipe nobody reads yet would hold it up."""

    def __init__(self, daemon: Daemon, name: str, *flags: str) -> None:
        self._out = daemon.root / "follow.out"
        command = ["logs", name, "-f", *flags, "--root", str(daemon.root)]
        with self._out.open("w") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "vmid.cli", *command],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )

    def __repr__(self) -> str:
        return f"<Follow {self._process.pid}>"

    def communicate(self, timeout: float) -> tuple[str, str]:
        _, err = self._process.communicate(timeout=timeout)
        return self._out.read_text(), err

    @property
    def returncode(self) -> int | None:
        return self._process.returncode


def test_logs_follow_across_rotations_until_deleted(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config(SMALL_LOGS)) as daemon:
        daemon.drop("tick.yaml", manifest("tick", mode="tick"))
        daemon.wait_phase("tick", "Running")
        log = daemon.root / "var/log/vmid/namespaces/default/tick/console.log"
        daemon.wait_for("a rotation", lambda: last(log) > 20)
        following = Follow(daemon, "tick")
        begun = last(log)
        # 120 lines: 7 rotations, more than the 3 backups kept.
        daemon.wait_for("7 rotations", lambda: last(log) > begun + 120)
        assert daemon.vmid("delete", "vmi", "tick").returncode == 0
        out, err = following.communicate(timeout=30)  # it ends by itself once the VMI is gone
    assert following.returncode == 0, err
    (numbers,) = runs(ticks(out))  # nothing lost or repeated across the rotations
    assert numbers[-1] > begun + 120


def test_logs_follow_with_timestamps_across_rotations(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config(SMALL_LOGS)) as daemon:
        daemon.drop("tick.yaml", manifest("tick", mode="tick"))
        daemon.wait_phase("tick", "Running")
        log = daemon.root / "var/log/vmid/namespaces/default/tick/console.log"
        daemon.wait_for("a rotation", lambda: last(log) > 20)
        started = datetime.datetime.now(datetime.UTC)
        following = Follow(daemon, "tick", "--timestamps", "--tail", "5")
        begun = last(log)
        daemon.wait_for("7 rotations", lambda: last(log) > begun + 120)
        assert daemon.vmid("delete", "vmi", "tick").returncode == 0
        out, err = following.communicate(timeout=30)
    assert following.returncode == 0, err
    lines = out.splitlines()
    stamped = [re.fullmatch(r"(\S+Z) (tick \d{8} \.+)", line) for line in lines]
    assert all(stamped), [line for line, m in zip(lines, stamped, strict=True) if not m][:3]
    times = [datetime.datetime.fromisoformat(m[1][:26] + "Z") for m in stamped if m]
    assert times == sorted(times)
    # --tail 5: lines of a moment before it read them, not the older ones (however slow it
    # was to start on a loaded machine).
    assert times[0] > started - datetime.timedelta(seconds=1)
    assert times[-1] - times[0] > datetime.timedelta(seconds=1)
    (numbers,) = runs(ticks("\n".join(m[2] for m in stamped if m)))
    assert len(numbers) > 125


def test_logs_follow_a_restart(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", fake_config()) as daemon:
        daemon.drop("tick.yaml", manifest("tick", mode="tick"))
        daemon.wait_phase("tick", "Running")
        log = daemon.root / "var/log/vmid/namespaces/default/tick/console.log"
        daemon.wait_for("a few lines", lambda: last(log) > 10)
        following = Follow(daemon, "tick")
        assert daemon.vmid("restart", "tick").returncode == 0
        daemon.wait_for("the new QEMU's lines", lambda: ticks(log.read_text()).count(0) == 2)
        assert daemon.vmid("delete", "vmi", "tick").returncode == 0
        out, err = following.communicate(timeout=30)
    assert following.returncode == 0, err
    old, new = runs(ticks(out))
    assert old[0] == 0
    assert new[0] == 0


def test_logs_tail(tmp_path: Path) -> None:
    log = tmp_path / "var/log/vmid/namespaces/default/vm/console.log"
    log.parent.mkdir(parents=True)
    (log.parent / "console.log.1").write_text("one\ntwo\n")
    log.write_text("three\nfour")

    def tail(count: str) -> str:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "vmid.cli",
                "logs",
                "vm",
                "--tail",
                count,
                "--root",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    assert tail("3") == "two\nthree\nfour"
    assert tail("0") == ""
    assert tail("10") == "one\ntwo\nthree\nfour"
