"""Re-adoption after a daemon restart: N running VMIs (real QEMU, TCG, no guest OS).

    .venv/bin/python bench/readopt.py [--vms N]

Starts a daemon with `onDaemonStop: keep`, launches N minimal VMIs, kills the daemon with
SIGKILL, starts a new one and measures the time from its start to every VMI re-adopted (and
to its `vmid ready` line), then stops everything.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale import SCALE as MANIFEST
from tests.daemon import running_daemon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=10)
    args = parser.parse_args()
    names = [f"vm-{i}" for i in range(args.vms)]
    with tempfile.TemporaryDirectory(prefix="vmid-readopt-") as tmp:
        root = Path(tmp)
        with running_daemon(root, "accelerator: tcg\n") as first:
            for name in names:
                first.drop(f"{name}.yaml", MANIFEST.format(name=name))
            for name in names:
                first.wait_phase(name, "Running", timeout=120)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
        began = time.monotonic()
        with running_daemon(root, "accelerator: tcg\n") as again:
            ready = time.monotonic() - began
            again.wait_for("all", lambda: again.log_text().count("re-adopted qemu") == len(names))
            adopted = time.monotonic() - began
            started = again.log_text().count("qemu started")
    print(
        f"{args.vms} VMIs: daemon start -> all re-adopted {adopted * 1000:.0f} ms, "
        f"-> ready {ready * 1000:.0f} ms (includes Python start-up); new QEMUs: {started}"
    )


if __name__ == "__main__":
    main()
