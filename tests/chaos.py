"""Randomised fault injection against a real daemon (fake QEMU): never two QEMUs, never an orphan.

A seeded run writes, edits (spec, labels, broken YAML or values) and removes manifests, in
bursts too, while killing (-9), stopping (SIGTERM) and reloading (SIGHUP) the daemon at random
instants, changing the spool while it is down, and killing or freezing QEMUs. At settle points
it checks what a user relies on:

- never two QEMUs of one VMI at once (sampled all the time, not only at settle points);
- a QEMU for every VMI whose status says Running, with the status's pid and the manifest's spec;
- none for a removed manifest, and no status left for it;
- after a final graceful stop, no QEMU, and no state but that of the manifests left.

`python -m tests.chaos --seconds 600 --seed 7` (or `make chaos SECONDS=600`) runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import attrs

from tests.daemon import Daemon, fake_config, manifest, start_daemon

NAMES = tuple(f"vm-{i}" for i in range(4))
MODES = ("obey", "obey", "delay-1", "ignore", "second")
MEMORY = ("64Mi", "96Mi")
GRACE = 2
SETTLE_SECONDS = 60.0
#: A uid range no other vmid on this host uses (the default one is the nspawn tests' and a
#: host install's; tests/daemon.py own_uids gives tests 90200-97699): a process of another root
#: running as one of its VMIs' uids is rightly taken for a QEMU of that VMI vmid lost.
UIDS = "qemuUids: {first: 98000, count: 500}\n"


@attrs.define
class Manifest:
    """What the spool holds for one name."""

    memory: str
    mode: str
    label: int
    #: "" for a valid manifest, else how it is broken: a bad "value" or bad "yaml".
    broken: str = ""

    @property
    def valid(self) -> bool:
        return not self.broken

    def text(self, name: str) -> str:
        text = manifest(name, mode=self.mode, grace=GRACE, memory=self.memory)
        labels = f"  name: {name}\n  labels: {{v: '{self.label}'}}\n"
        text = text.replace(f"  name: {name}\n", labels)
        if self.broken == "value":
            return text.replace(self.memory, "1x")
        return text + "  : [\n" if self.broken == "yaml" else text


@attrs.define
class Report:
    """What a run did and found."""

    seed: int
    actions: Counter[str] = attrs.field(factory=Counter)
    violations: list[str] = attrs.field(factory=list)

    def __str__(self) -> str:
        done = ", ".join(f"{k} {v}" for k, v in sorted(self.actions.items()))
        found = "\n  ".join(self.violations) or "nothing"
        return f"seed {self.seed}: {done}\nfound: {found}"


def qemus(root: Path) -> dict[str, list[int]]:
    """The QEMU processes of `root`'s VMIs, by VMI name (from their working directory)."""
    base = str(root / "run/vmid/namespaces/default") + "/"
    found: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            # A QEMU whose directory was deleted under it is an orphan the daemon can no
            # longer reach: counted all the same (the kernel marks its cwd " (deleted)").
            cwd = os.readlink(f"/proc/{entry}/cwd").removesuffix(" (deleted)")
            state, parent = _stat(int(entry))
            if cwd.startswith(base) and cwd.endswith("/qemu") and state != "Z":
                found[int(entry)] = (cwd[len(base) : -len("/qemu")], parent)
    by_name: dict[str, list[int]] = {}
    for pid, (name, parent) in sorted(found.items()):
        # Children of one are its launcher's helpers (a python3 shim's), not a second QEMU.
        if parent not in found:
            by_name.setdefault(name, []).append(pid)
    return by_name


def _stat(pid: int) -> tuple[str, int]:
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _describe(pid: int) -> str:
    with contextlib.suppress(OSError):
        status = dict(
            line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]
        return f"pid {pid} (parent {status['PPid']}, {b' '.join(argv).decode()})"
    return f"pid {pid} (gone)"


def _memory(pid: int) -> str | None:
    with contextlib.suppress(OSError, ValueError):  # gone, or not exec'd yet
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        return argv[argv.index("-m") + 1]
    return None


class Chaos:
    """One seeded run against one root directory."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.spool: dict[str, Manifest] = {}
        self.daemon: Daemon | None = None
        self.keep = False
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def run(self, seconds: float) -> Report:
        (self.root / "etc/vmid/instances").mkdir(parents=True, exist_ok=True)
        self._start()
        self._sampler.start()
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not self.report.violations:
                for _ in range(self.rng.randint(1, 6)):
                    self._act()
                self._settle()
            self._final_stop()
        finally:
            self._sampling = False
            self._sampler.join()
            self._kill_everything()
        return self.report

    # Section: actions

    def _note(self, what: str) -> None:
        """Keep what was done when, beside the daemon's log, for a post-mortem."""
        stamp = time.strftime("%H:%M:%S") + f",{int(time.time() * 1000) % 1000:03d}"
        with (self.root / "actions.log").open("a") as log:
            log.write(f"{stamp} {what}\n")

    def _act(self) -> None:
        weights: list[tuple[Callable[[], None], int]] = [
            (self._write, 10),
            (self._remove, 4),
            (self._burst, 2),
            (self._restart_daemon, 3),
            (self._reload, 2),
            (self._kill_qemu, 2),
            (self._freeze_qemu, 1),
        ]
        actions, counts = zip(*weights, strict=True)
        self.rng.choices(actions, counts)[0]()

    def _write(self, name: str | None = None) -> None:
        name = name or self.rng.choice(NAMES)
        old = self.spool.get(name)
        if old is not None and self.rng.random() < 0.3:
            new = attrs.evolve(old, label=old.label + 1, broken="")  # metadata only
            self.report.actions["label edit"] += 1
        else:
            broken = self.rng.choice(("value", "yaml")) if self.rng.random() < 0.15 else ""
            new = Manifest(self.rng.choice(MEMORY), self.rng.choice(MODES), 0, broken)
            self.report.actions[f"invalid write ({broken})" if broken else "write"] += 1
        self.spool[name] = new
        self._note(f"write {name} {new}")
        staging = self.root / f"etc/vmid/instances/.{name}.tmp"
        staging.write_text(new.text(name))
        staging.rename(self.root / f"etc/vmid/instances/{name}.yaml")

    def _remove(self) -> None:
        if self.spool:
            name = self.rng.choice(sorted(self.spool))
            del self.spool[name]
            self._note(f"remove {name}")
            (self.root / f"etc/vmid/instances/{name}.yaml").unlink()
            self.report.actions["remove"] += 1

    def _burst(self) -> None:
        for _ in range(self.rng.randint(5, 20)):
            self._remove() if self.rng.random() < 0.2 else self._write()
            time.sleep(self.rng.random() * 0.05)
        self.report.actions["burst"] += 1

    def _restart_daemon(self) -> None:
        daemon = self.daemon
        assert daemon is not None
        time.sleep(self.rng.random() * 0.5)  # at a random instant of what is going on
        self._note("daemon stop")
        if self.rng.random() < 0.6:
            daemon.process.kill()
            self.report.actions["daemon kill -9"] += 1
        else:
            daemon.process.send_signal(signal.SIGTERM)
            self.report.actions["daemon SIGTERM" + (" (keep)" if self.keep else "")] += 1
        try:
            daemon.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.report.violations.append("the daemon did not stop within 60 s of SIGTERM")
            daemon.process.kill()
            daemon.process.wait()
        for _ in range(self.rng.randint(0, 3)):  # changes while it is down
            self._write() if self.rng.random() < 0.7 else self._remove()
            self.report.actions["change while down"] += 1
        self._start()

    def _reload(self) -> None:
        assert self.daemon is not None
        self.keep = self.rng.random() < 0.5
        self._write_config()
        self.daemon.process.send_signal(signal.SIGHUP)
        self.report.actions["SIGHUP"] += 1

    def _kill_qemu(self) -> None:
        self._signal_qemu(signal.SIGKILL, "QEMU kill -9")

    def _freeze_qemu(self) -> None:
        self._signal_qemu(signal.SIGSTOP, "QEMU SIGSTOP")

    def _signal_qemu(self, signum: signal.Signals, action: str) -> None:
        """Send `signum` to one of the running QEMUs, chosen by the seed."""
        found = qemus(self.root)
        if found:
            pid = self.rng.choice(sorted(found.items()))[1][0]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            self._note(f"{action} {pid}")
            self.report.actions[action] += 1

    # Section: the daemon

    def _write_config(self) -> None:
        keep = "onDaemonStop: keep\n" if self.keep else ""
        (self.root / "etc/vmid/vmid.yaml").write_text(fake_config(keep + UIDS))

    def _start(self) -> None:
        self._write_config()
        log = self.root / "daemon.log"
        if log.exists():  # each daemon's log, kept in order for a post-mortem
            with (self.root / "daemons.log").open("ab") as history:
                history.write(log.read_bytes())
        self.daemon = start_daemon(self.root)  # in a network namespace of its own
        daemon = self.daemon
        daemon.wait_for("the daemon to be ready", lambda: "vmid ready" in daemon.log_text(), 90)

    def _final_stop(self) -> None:
        self.keep = False
        self._write_config()
        assert self.daemon is not None
        self.daemon.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        for pid in (p for pids in qemus(self.root).values() for p in pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.daemon.process.send_signal(signal.SIGTERM)
        try:
            self.daemon.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.report.violations.append("the final stop took longer than 60 s")
            return
        left = qemus(self.root)
        if left:
            self.report.violations.append(f"QEMUs left after the final stop: {left}")
        # A VMI's state outlives a daemon stop while its manifest is there; no other does.
        states = {p.name for p in (self.root / "var/lib/vmid/namespaces/default").glob("*")}
        if states - set(self.spool) and not self.report.violations:
            names = sorted(states - set(self.spool))
            self.report.violations.append(f"state of removed VMIs left after the stop: {names}")

    def _kill_everything(self) -> None:
        if self.daemon is not None and self.daemon.process.poll() is None:
            self.daemon.process.kill()
            self.daemon.process.wait()
        for pid in (p for pids in qemus(self.root).values() for p in pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # Section: invariants

    def _sample(self) -> None:
        while self._sampling:
            for name, pids in qemus(self.root).items():
                if len(pids) > 1:
                    who = "; ".join(_describe(pid) for pid in pids)
                    self.report.violations.append(f"{name}: two QEMUs at once: {who}")
                    return
            time.sleep(0.02)

    def _settle(self) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        problems = self._problems()
        while problems and time.monotonic() < deadline:
            time.sleep(0.2)
            problems = self._problems()
        for problem in problems:
            name = problem.split(":", 1)[0]
            assert self.daemon is not None
            lines = [ln for ln in self.daemon.log_text().splitlines() if f"{name}" in ln]
            self.report.violations.append("\n      ".join([problem, *lines[-25:]]))
        self.report.actions["settle"] += 1

    def _problems(self) -> list[str]:
        assert self.daemon is not None
        if self.daemon.process.poll() is not None:
            return [f"the daemon died:\n{self.daemon.log_text()[-3000:]}"]
        found = qemus(self.root)
        problems = []
        for name in NAMES:
            problems += self._check(name, found.get(name, []))
        return problems

    def _check(self, name: str, pids: list[int]) -> list[str]:
        assert self.daemon is not None
        status = self.daemon.status(name)
        wanted = self.spool.get(name)
        if wanted is None:
            return [f"{name}: removed, but {what} left"] if (what := _left(pids, status)) else []
        if status is None:
            if wanted.broken == "yaml" and not pids:
                return []  # a file that does not parse names no VMI: nothing to show
            return [f"{name}: its manifest is in the spool, but it has no status"]
        phase, pid = status["status"]["phase"], status["status"].get("qemu", {}).get("pid")
        if not pids:
            return [] if phase in ("Succeeded", "Failed") else [f"{name}: {phase} with no QEMU"]
        if pid != pids[0] or phase != "Running":
            return [f"{name}: QEMU {pids[0]} runs, the status says {phase} with pid {pid}"]
        memory = _memory(pids[0])
        if wanted.valid and memory != str(int(wanted.memory.removesuffix("Mi"))):
            return [f"{name}: QEMU runs with -m {memory}, the manifest says {wanted.memory}"]
        return []


def _left(pids: list[int], status: object) -> str:
    if pids:
        return f"QEMU {pids}"
    return "its status" if status is not None else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, action="append")
    args = parser.parse_args(argv)
    seeds = args.seed or [random.randrange(1 << 30)]
    deadline = time.monotonic() + args.seconds
    failed = False
    for index, seed in enumerate(seeds):
        left = (deadline - time.monotonic()) / (len(seeds) - index)
        root = Path(tempfile.mkdtemp(prefix="vmid-chaos-"))
        root.chmod(0o711)
        report = Chaos(root, seed).run(left)
        print(report, flush=True)
        if report.violations:  # kept for a post-mortem: daemon.log, status files, logs
            print(f"kept {root}", flush=True)
            failed = True
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
