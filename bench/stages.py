"""Where one launch's time goes: wall-clock spans of the launch path's stages in the daemon.

    .venv/bin/python bench/stages.py [--shape a|b|c] [--runs N] [--skip K]

Starts a daemon (TCG, a network namespace of its own, as `make bench`) whose chosen functions
are wrapped to record when each call began and ended (`time.monotonic()`, the clock the
driver's own marks use), then launches `--runs` VMIs one after the other: (a) minimal, (b) the
seed shape, (c) with a pod NIC (one pod VM kept running, as `make bench` does). For each stage
it prints, as medians over the runs (the first `--skip` left out: caches warming), when it
began after the manifest was renamed into the spool, how long it took in all, how many calls,
and the CPU of the thread that ran it (for functions that are not async). bench/README.md's
per-stage tables come from it.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import inspect
import json
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: module:qualified.name of each function timed, in the order of a launch.
STAGES = [
    "vmid.runtime.spool:Spool.rescan",
    "vmid.runtime.spool:Spool._read",
    "vmid.runtime.supervisor:Supervisor.apply",
    "vmid.runtime.events:EventStore.record",
    "vmid.runtime.supervisor:Supervisor._instance",
    "vmid.runtime.supervisor:Supervisor._stored",
    "vmid.host.identity:running_ids",
    "vmid.host.identity:allocate",
    "vmid.runtime.instance:Instance._start",
    "vmid.runtime.instance:Instance._check_alone",
    "vmid.runtime.status:Status.write",
    "vmid.runtime.status:Status.event",
    "vmid.host.firmwareid:kept",
    "vmid.runtime.instance:Instance._prepare",
    "vmid.runtime.pull:Puller.image",
    "vmid.host.storage:prepare",
    "vmid.runtime.instance:Instance._attach",
    "vmid.host.network:ensure_tap",
    "vmid.runtime.network:Network._sync",
    "vmid.runtime.instance:Instance._hand_over",
    "vmid.runtime.instance:Instance._launch",
    "vmid.runtime.logs:VmLogs.open",
    "trio.lowlevel:open_process",
    "vmid.runtime.qmp:Monitor.connect",
    "vmid.runtime.network:Network.serving",
    "vmid.runtime.instance:Instance._boot",
    "vmid.runtime.qmp:Monitor.execute",
]

Span = tuple[str, float, float, float | None]


def _timed(name: str, function: Any, spans: list[Span]) -> Any:
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            try:
                return await function(*args, **kwargs)
            finally:
                spans.append((name, began, time.monotonic(), None))

        return timed_async

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began, cpu = time.monotonic(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spans.append((name, began, time.monotonic(), time.thread_time() - cpu))

    return timed


def wrapped_daemon(out: str, argv: list[str]) -> None:
    """Run `python -m vmid ...` (`argv`) with STAGES timed; write the spans to `out` at exit."""
    spans: list[Span] = []
    for stage in STAGES:
        module_name, qualified = stage.split(":")
        owner: Any = importlib.import_module(module_name)
        *path, attribute = qualified.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        if not hasattr(owner, attribute):  # an older vmid (measured before and after a change)
            continue
        setattr(owner, attribute, _timed(qualified, getattr(owner, attribute), spans))
    try:
        sys.argv = argv[2:]  # ["vmid", "daemon", ...] after "-m", "vmid"
        runpy.run_module("vmid", run_name="__main__", alter_sys=True)
    finally:
        Path(out).write_text(json.dumps(spans))


def launches(shape: str, runs: int, out: Path) -> list[tuple[float, float]]:
    """(renamed, Running) monotonic times of `runs` launches of `shape`, one at a time."""
    from bench import hostlike
    from bench.latency import MANIFEST, WITH_NIC
    from bench.run import IMAGE, SEED_SHAPE
    from tests.daemon import running_daemon

    seed = SEED_SHAPE.replace("{image}", IMAGE).replace("{grace}", "1")
    text = {"a": MANIFEST, "b": seed.replace("{memory}", "64Mi"), "c": WITH_NIC}[shape]
    marks = []
    with tempfile.TemporaryDirectory(prefix="vmid-stages-") as tmp, hostlike.tmpfs_run(Path(tmp)):
        root = Path(tmp)
        prefix = ("unshare", "--net", "--", sys.executable, __file__, "--wrap", str(out))
        with running_daemon(root, "accelerator: tcg\n", prefix=prefix) as daemon:
            blank = root / "blank.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True
            )
            assert daemon.vmid("image", "import", IMAGE, str(blank)).returncode == 0
            if shape == "c":
                daemon.drop("keep.yaml", WITH_NIC.format(name="keep"))
                daemon.wait_phase("keep", "Running", timeout=60)
            for index in range(runs):
                name = f"stage-{index}"
                staging = daemon.spool / f".{name}.tmp"
                staging.write_text(text.format(name=name))
                began = time.monotonic()
                staging.rename(daemon.spool / f"{name}.yaml")
                while daemon.phase(name) != "Running":
                    time.sleep(0.0005)
                marks.append((began, time.monotonic()))
                (daemon.spool / f"{name}.yaml").unlink()
                daemon.wait_phase(name, None)
                time.sleep(0.2)
    return marks


def table(spans: list[Span], marks: list[tuple[float, float]]) -> list[str]:
    """Per stage, medians over the launches: began (ms after the rename), total ms, calls, CPU."""
    rows: dict[str, list[tuple[float, float, int, float]]] = collections.defaultdict(list)
    for began, running in marks:
        seen: dict[str, list[float]] = {}
        for name, start, end, cpu in spans:
            if began - 0.001 <= start <= running:
                first, total, calls, used = seen.get(name, [(start - began) * 1000, 0, 0, 0])
                seen[name] = [
                    first,
                    total + (end - start) * 1000,
                    calls + 1,
                    used + (cpu or 0) * 1000,
                ]
        for name, (first, total, calls, used) in seen.items():
            rows[name].append((first, total, int(calls), used))
    order = sorted(rows, key=lambda n: statistics.median(r[0] for r in rows[n]))
    lines = [f"{'stage':38} {'began':>8} {'took':>8} {'calls':>5} {'cpu':>7}"]
    for name in order:
        column = list(zip(*rows[name], strict=True))
        began, took, calls, cpu = (statistics.median(c) for c in column)
        lines.append(f"{name:38} {began:6.2f}ms {took:6.2f}ms {calls:5.1f} {cpu:5.2f}ms")
    totals = [(running - began) * 1000 for began, running in marks]
    lines.append(
        f"{'renamed -> Running (the whole launch)':38} {'':8} {statistics.median(totals):6.2f}ms"
    )
    return lines


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--wrap":
        wrapped_daemon(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices="abc", default="a")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2)
    args = parser.parse_args()
    from bench import hostlike

    hostlike.own_mounts()
    with tempfile.TemporaryDirectory(prefix="vmid-stages-out-") as tmp:
        out = Path(tmp) / "spans.json"
        marks = launches(args.shape, args.runs, out)
        spans = json.loads(out.read_text())
    print("\n".join(table(spans, marks[args.skip :])))


if __name__ == "__main__":
    main()
