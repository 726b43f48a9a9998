"""CLI start-up: `vmid get`, `describe`, `logs`, `--help` side by side with a bare Python.

    .venv/bin/python bench/startup.py [--runs N]

Each verb runs against a root holding one running VMI's files (its status, its console log),
interleaved with `python -c pass` (the same interpreter): medians of the wall time and of the
CPU time (user + system, of the finished child), and their ratios. vmid's modules are compiled
first, as an installed vmid's are (with PYTHONDONTWRITEBYTECODE, each run would compile them).
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon import one_running_vmi

ROOT = Path(__file__).resolve().parent.parent
VERBS = (["get"], ["describe", "vm-a"], ["logs", "vm-a"], ["--help"])


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `argv`."""
    began = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, code, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(code)
    assert process.returncode == 0, argv
    return wall, usage.ru_utime + usage.ru_stime


def compare(verb: list[str], root: Path, runs: int) -> dict[str, list[float]]:
    vmid = [sys.executable, "-m", "vmid", "--root", str(root), *verb]
    bare = [sys.executable, "-c", "pass"]
    figures: dict[str, list[float]] = {"wall": [], "cpu": [], "bare_wall": [], "bare_cpu": []}
    timed(vmid), timed(bare)  # warm the page cache
    for _ in range(runs):
        wall, cpu = timed(vmid)
        bare_wall, bare_cpu = timed(bare)
        figures["wall"].append(wall)
        figures["cpu"].append(cpu)
        figures["bare_wall"].append(bare_wall)
        figures["bare_cpu"].append(bare_cpu)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "vmid", quiet=1)
    print(
        f"{'command':22} {'wall':>8} {'bare':>8} {'ratio':>6}   {'cpu':>8} {'bare':>8} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory(prefix="vmid-startup-") as tmp:
        root = Path(tmp)
        one_running_vmi(root, console="login:\n" * 20)
        for verb in VERBS:
            f = {k: statistics.median(v) for k, v in compare(verb, root, args.runs).items()}
            print(
                f"{'vmid ' + ' '.join(verb):22} {f['wall'] * 1000:6.1f}ms "
                f"{f['bare_wall'] * 1000:6.1f}ms "
                f"{f['wall'] / f['bare_wall']:5.2f}x   {f['cpu'] * 1000:6.1f}ms "
                f"{f['bare_cpu'] * 1000:6.1f}ms {f['cpu'] / f['bare_cpu']:5.2f}x"
            )


if __name__ == "__main__":
    main()
