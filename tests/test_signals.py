"""Signals to a stopping daemon: acknowledged, never fatal, never a shorter grace."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.daemon import fake_config, manifest, running_daemon

pytestmark = pytest.mark.timeout(120)

GRACE = 4


def acknowledged(log: str) -> list[tuple[str, str, str]]:
    """What each signal while stopping was answered: (next step, signal, why)."""
    return re.findall(r"stopping: (.*) \((SIG\w+): (.*)\)$", log, re.MULTILINE)


def test_signals_while_stopping_are_acknowledged_and_every_vm_keeps_its_grace(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("deaf", mode="ignore", grace=GRACE))
        daemon.drop("b.yaml", manifest("obeys", mode="delay-1", grace=GRACE))
        daemon.wait_phase("deaf", "Running")
        daemon.wait_phase("obeys", "Running")
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_for("the stop", lambda: daemon.log_text().count("system_powerdown sent") == 2)
        daemon.process.send_signal(signal.SIGINT)  # Ctrl+C
        daemon.wait_for("an answer", lambda: len(acknowledged(daemon.log_text())) == 1)
        daemon.wait_for("obeys to end", lambda: "obeys: ended Succeeded" in daemon.log_text())
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("an answer", lambda: len(acknowledged(daemon.log_text())) == 2)
        # Until it is gone, as a user pressing Ctrl+C again and again (or a script sending
        # SIGTERM): the last ones come as the daemon ends, after its last VM.
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        count = 0
        while daemon.process.poll() is None and count < 3000:
            daemon.process.send_signal(signals[count % 3])
            count += 1
            time.sleep(0.005)
        assert daemon.process.wait(timeout=30) == 0
        log = daemon.log_text()
    assert "Traceback" not in log
    assert "vmid stopped" in log
    assert "configuration reloaded" not in log
    assert "deaf: grace period of 4 s passed: killing" in log  # its whole grace, not less
    answers = acknowledged(log)
    assert answers[0] == ("2 VMIs left, next kill in 4 s", "SIGINT", "already stopping")
    assert re.fullmatch(r"1 VMI left, next kill in [23] s", answers[1][0])
    assert answers[1][1:] == ("SIGHUP", "no reload while stopping")
    steps = {re.sub(r"\d+ s$", "N s", step) for step, _, _ in answers[2:]}
    assert steps <= {
        "1 VMI left, next kill in N s",
        "1 VMI left, killing one now (its grace is over)",
        "every VMI stopped, removing the network",
    }, steps
