"""The scale curve: N minimal VMIs at once -> all Running, side by side with N bare QEMUs.

    .venv/bin/python bench/scale.py [--vms 10 50 100 200] [--runs N] [--idle S] [--profile F]

For each N, in turn: vmid (N manifests renamed into the spool at once -> every status says
Running), then two floors, N bare QEMUs with the same argv started in parallel:
- paused: each answers `query-status` and stays paused (-S), as `make bench` measured it first;
- running: each is handshaken (`qmp_capabilities`) and sent `cont`, as vmid does, so its
  guest runs and competes for the CPUs as vmid's do.
Every QEMU of a batch is kept until the whole batch is up. The daemon's CPU for the launch,
its RSS above the idle daemon's, and its CPU over `--idle` seconds with the N VMs running (once
SETTLE_SECONDS have passed: the launch's last replies and each VMI's first look at its guest
agent channel are the launch's, not idleness), per VMI. `--profile F` runs the daemon under
cProfile (its main thread: the trio loop) and writes F when it stops (`python -m pstats F`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hostlike
from bench.latency import _command, _rendered_argv, control_listener
from tests.daemon import Daemon, running_daemon

ROOT = Path(__file__).resolve().parent.parent
#: After all are Running, the wait before idleness is measured.
SETTLE_SECONDS = 5.0
SCALE = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    memory: {{guest: 32Mi}}
    devices: {{autoattachPodInterface: false, autoattachGraphicsDevice: false}}
"""


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU seconds of process `pid`, or of its thread `thread` only (its main thread: `pid`)."""
    where = f"/proc/{pid}" if thread is None else f"/proc/{pid}/task/{thread}"
    fields = Path(f"{where}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sys_seconds(pid: int) -> float:
    """The kernel's share of `cpu_seconds(pid)` (fork, page faults, syscalls)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_all(names: list[str], done: Callable[[str], bool], timeout: float) -> None:
    """Until `done` holds for every name. Looks at the first one not done yet only, every
    10 ms: polling N status files at once would take the CPU the daemon is measured using."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        if done(pending[0]):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(names)} not done: {pending[:3]}")
        time.sleep(0.01)


def vmid_batch(daemon: Daemon, count: int, idle: float, tag: str) -> dict[str, float]:
    """`count` VMIs at once through the daemon; what it took and what it costs."""
    pid = daemon.process.pid
    names = [f"s{tag}-{i}" for i in range(count)]
    for name in names:
        (daemon.spool / f".{name}.tmp").write_text(SCALE.format(name=name))
    time.sleep(1)  # the daemon settles: its idle RSS and CPU are the baseline
    rss_idle, cpu_before, loop_before = rss_kib(pid), cpu_seconds(pid), cpu_seconds(pid, pid)
    sys_before = sys_seconds(pid)
    began = time.monotonic()
    for name in names:
        (daemon.spool / f".{name}.tmp").rename(daemon.spool / f"{name}.yaml")
    wait_all(names, lambda n: daemon.phase(n) == "Running", 600)
    up = time.monotonic() - began
    cpu_launch = cpu_seconds(pid) - cpu_before
    loop_launch = cpu_seconds(pid, pid) - loop_before
    sys_launch = sys_seconds(pid) - sys_before
    rss_running = rss_kib(pid)
    time.sleep(SETTLE_SECONDS)
    idle_before = cpu_seconds(pid)
    time.sleep(idle)
    idle_cpu = cpu_seconds(pid) - idle_before
    began = time.monotonic()
    for name in names:
        (daemon.spool / f"{name}.yaml").unlink()
    wait_all(names, lambda n: daemon.phase(n) is None, 600)
    return {
        "all_running_s": up,
        "all_gone_s": time.monotonic() - began,
        "cpu_launch_s": cpu_launch,
        "loop_cpu_launch_s": loop_launch,
        "sys_cpu_launch_s": sys_launch,
        "rss_idle_kib": rss_idle,
        "rss_running_kib": rss_running,
        "idle_cpu_s": idle_cpu,
        "idle_s": idle,
    }


def bare_batch(argv: list[str], workdir: Path, count: int, run_guest: bool) -> float:
    """`count` bare QEMUs started in parallel -> each answering (paused), or handshaken and
    sent `cont` (`run_guest`); seconds until the last one is; all are kept until then."""
    kept: list[tuple[subprocess.Popen[bytes], socket.socket, Any, socket.socket]] = []
    times: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        directory = workdir / str(index)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            listener, args = control_listener(argv, directory)
            process = subprocess.Popen(args, cwd=directory, pass_fds=(listener.fileno(),),
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(120)
            sock.connect(str(directory / "control.sock"))
            stream = sock.makefile("rw")
            json.loads(stream.readline())
            _command(stream, "qmp_capabilities")
            _command(stream, "cont" if run_guest else "query-status")
            elapsed = time.monotonic() - began
            with lock:
                times.append(elapsed)
                kept.append((process, sock, stream, listener))
        except BaseException as exc:  # reported below: a thread cannot raise into main
            errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process, sock, stream, listener in kept:
        with_quit(process, stream)
        sock.close()
        listener.close()
    if errors:
        raise errors[0]
    return max(times)


def with_quit(process: subprocess.Popen[bytes], stream: Any) -> None:
    try:
        stream.write(json.dumps({"execute": "quit"}) + "\n")
        stream.flush()
    except OSError:
        process.kill()
    process.wait(timeout=60)


def curve(daemon: Daemon, counts: list[int], runs: int, idle: float) -> list[dict[str, Any]]:
    argv = _rendered_argv(daemon.root, SCALE)
    rows = []
    for count in counts:
        row: dict[str, Any] = {"vms": count, "vmid": [], "paused": [], "running": []}
        for run in range(runs):
            print(f"{count} VMIs, run {run + 1}/{runs} ...", file=sys.stderr)
            row["vmid"].append(vmid_batch(daemon, count, idle, f"{count}r{run}"))
            workdir = daemon.root / "run" / f"bare-{count}-{run}"  # tmpfs (bench/hostlike.py)
            row["paused"].append(bare_batch(argv, workdir / "paused", count, run_guest=False))
            row["running"].append(bare_batch(argv, workdir / "running", count, run_guest=True))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    def median(row: dict[str, Any], key: str) -> float:
        return float(statistics.median(v[key] for v in row["vmid"]))

    lines = [
        f"{'VMIs':>5} {'vmid':>8} {'bare -S':>8} {'ratio':>6} {'bare run':>8} {'ratio':>6}"
        f" {'CPU ms/VMI':>10} {'(loop)':>6} {'RSS KiB/VMI':>11} {'idle CPU':>9} {'gone':>7}"
    ]
    for row in rows:
        n = row["vms"]
        up = median(row, "all_running_s")
        paused, running = statistics.median(row["paused"]), statistics.median(row["running"])
        rss = statistics.median((v["rss_running_kib"] - v["rss_idle_kib"]) / n for v in row["vmid"])
        idle = statistics.median(100 * v["idle_cpu_s"] / v["idle_s"] for v in row["vmid"])
        lines.append(
            f"{n:5d} {up:7.2f}s {paused:7.2f}s {up / paused:5.2f}x {running:7.2f}s "
            f"{up / running:5.2f}x {1000 * median(row, 'cpu_launch_s') / n:10.1f} "
            f"{1000 * median(row, 'loop_cpu_launch_s') / n:6.1f} "
            f"{rss:11.0f} {idle:8.2f}% {median(row, 'all_gone_s'):6.2f}s"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/scale.json")
    args = parser.parse_args()
    hostlike.own_mounts()
    prefix: tuple[str, ...] = ("unshare", "--net", "--")
    if args.profile is not None:
        prefix += (sys.executable, str(ROOT / "bench/profiled.py"), str(args.profile.resolve()))
    with tempfile.TemporaryDirectory(prefix="vmid-scale-") as tmp, hostlike.tmpfs_run(Path(tmp)):
        root = Path(tmp)
        with running_daemon(root, "accelerator: tcg\n", prefix=prefix) as daemon:
            rows = curve(daemon, args.vms, args.runs, args.idle)
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(table(rows)))
    print(f"\nraw figures: {args.json}")


if __name__ == "__main__":
    main()
