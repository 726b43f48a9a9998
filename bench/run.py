"""`make bench`: vmid side by side with bare QEMU, in one run, as ratios; raw figures to JSON.

    .venv/bin/python bench/run.py [--runs N] [--guest-runs N] [--vms N] [--idle S] [--json F]

Everything under TCG, the daemon in a network namespace of its own (as the tests). Each
comparison interleaves vmid and bare QEMU (vmid, bare, vmid, ...) and reports medians with
min-max: these machines are noisy, a single absolute time means little. bench/README.md
explains each figure and keeps the latest results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hostlike, pull
from bench.latency import (
    MANIFEST,
    WITH_NIC,
    bare_launch,
    by_path,
    control_listener,
    own_tap,
    vmid_launch,
)
from bench.scale import SCALE, bare_batch, curve, table, wait_all
from tests.daemon import FAKE_QEMU, Daemon, running_daemon
from vmid.api import imageref
from vmid.api.load import load_text
from vmid.config import Accelerator, Paths, load_config
from vmid.host.storage import SOURCE_COPY, ImageStore, prepare
from vmid.plan.build import build
from vmid.plan.model import ImageOverlay

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "example/bench:1"
GUEST_IMAGE = "kubevirt/fedora-cloud-container-disk-demo:latest"
#: The seed example's shape (conf/instances/testvmi.yaml: a containerDisk, an emptyDisk,
#: cloud-init), in block style as it is written.
SEED_SHAPE = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: {grace}
  domain:
    memory:
      guest: {memory}
    devices:
      autoattachPodInterface: false
      disks:
      - name: root
        disk:
          bus: virtio
      - name: scratch
        disk:
          bus: virtio
      - name: ci
        disk:
          bus: virtio
  volumes:
  - name: root
    containerDisk:
      image: {image}
  - name: scratch
    emptyDisk:
      capacity: 1Gi
  - name: ci
    cloudInitNoCloud:
      userData: |-
        #cloud-config
        hostname: {name}
"""
IGNORING = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: {grace}
  domain:
    memory: {{guest: 64Mi}}
    firmware: {{serial: ignore}}
    devices: {{autoattachPodInterface: false}}
"""


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def shown(values: list[float], unit: str = "ms") -> str:
    scale = 1000 if unit == "ms" else 1
    s = stats(values)
    return f"{s['median'] * scale:8.1f} {unit} ({s['min'] * scale:.1f}-{s['max'] * scale:.1f})"


class Bench:
    """One root, one daemon (real QEMU), the raw figures."""

    def __init__(self, root: Path, daemon: Daemon, runs: int) -> None:
        self.root = root
        self.daemon = daemon
        self.runs = runs
        self.results: dict[str, Any] = {}
        self.config = load_config(root / "etc/vmid/vmid.yaml", required=True)
        self.paths = Paths(root / "bare-root")

    def bare_argv(self, text: str, name: str) -> list[str]:
        """The argv vmid plans for `text`, its files prepared once (not part of the floor)."""
        (manifest,), problems = load_text("bench.yaml", text.format(name=name).encode())
        assert not problems, problems
        plan, findings = build(manifest.vmi, self.config, self.paths, Accelerator.TCG)
        assert plan is not None, findings
        store = ImageStore(self.root / "var/lib/vmid/images", self.config.qemuImg)

        async def prepare_all() -> None:
            for item in plan.prepare:
                await prepare(item, store, self.config.qemuImg)

        trio.run(prepare_all)
        Path(plan.qemuLog).parent.mkdir(parents=True, exist_ok=True)
        # A containerDisk is planned by its reference; the daemon gives QEMU the file of the
        # digest it resolves to (runtime/instance.py `_use_image`): so does the floor.
        named = ImageStore(self.paths.images, self.config.qemuImg)
        argv = list(plan.argv)
        for item in plan.prepare:
            if isinstance(item, ImageOverlay):
                old, new = str(named.reference_path(item.image)), str(store.lookup(item.image).path)
                argv = [arg.replace(old, new) for arg in argv]
        return by_path(argv)

    def launch(self, key: str, text: str, bare: list[str], libvirt: Libvirt | None = None) -> None:
        vmid_runs, bare_runs, powerdowns, libvirt_runs, virsh_runs = [], [], [], [], []
        workdir = self.root / "run" / f"bare-{key}"  # on the tmpfs, as vmid's QEMU's
        workdir.mkdir(exist_ok=True)
        for index in range(self.runs):
            launch, powerdown = vmid_launch(self.daemon, f"{key}-{index}", text)
            vmid_runs.append(launch)
            powerdowns.append(powerdown)
            bare_runs.append(bare_launch(bare, workdir))
            if libvirt is not None:
                libvirt_runs.append(libvirt.create(f"{key}-{index}"))
                libvirt.virsh("destroy", f"{key}-{index}")
                virsh_runs.append(libvirt.client_only())
        self.results[f"launch_{key}"] = {"vmid": vmid_runs, "bare": bare_runs}
        if libvirt is not None:
            self.results[f"launch_{key}"].update(libvirt=libvirt_runs, virsh_alone=virsh_runs)
        self.results.setdefault("powerdown", []).extend(powerdowns)


#: A containerDisk as a pull leaves it in the store (a digest, not imported: `local` false).
CACHED = "registry.example/bench/cached:1"


def cached_launch(bench: Bench, seed: str) -> dict[str, list[float]]:
    """The seed shape on an image a pull stored earlier (IfNotPresent: no registry asked) vs
    on the same disk imported by hand, interleaved: what the pull path adds to a launch."""
    store = ImageStore(bench.root / "var/lib/vmid/images", bench.config.qemuImg)
    disk = store.lookup(imageref.normalize(IMAGE)).path

    async def store_as_pulled() -> None:  # what `registry.pull` commits, without a registry
        with store.staging() as staging:
            shutil.copyfile(disk, staging / SOURCE_COPY)
            digest = "sha256:" + hashlib.sha256(disk.read_bytes()).hexdigest()
            await store.commit(staging, CACHED, digest)

    trio.run(store_as_pulled)
    pulled = f"image: {CACHED}\n      imagePullPolicy: IfNotPresent"
    cached = seed.replace(f"image: {IMAGE}", pulled)
    assert cached != seed
    found: dict[str, list[float]] = {"imported": [], "cached": []}
    for index in range(bench.runs):
        found["imported"].append(vmid_launch(bench.daemon, f"imported-{index}", seed)[0])
        found["cached"].append(vmid_launch(bench.daemon, f"cached-{index}", cached)[0])
    return found


def scale(bench: Bench, count: int, idle_seconds: float) -> None:
    """`count` VMIs dropped at once -> all Running, vs `count` bare QEMUs started in parallel:
    paused (-S, answering QMP) and running (handshaken and sent `cont`, as vmid does)."""
    daemon = bench.daemon
    pid = daemon.process.pid
    cpu_before = cpu_seconds(pid)
    names = [f"scale-{i}" for i in range(count)]
    for name in names:
        (daemon.spool / f".{name}.tmp").write_text(SCALE.format(name=name))
    began = time.monotonic()
    for name in names:
        (daemon.spool / f".{name}.tmp").rename(daemon.spool / f"{name}.yaml")
    wait_all(names, lambda n: daemon.phase(n) == "Running", 300)
    vmid_up = time.monotonic() - began
    cpu_launch = cpu_seconds(pid) - cpu_before
    idle_before = cpu_seconds(pid)
    time.sleep(idle_seconds)
    idle_cpu = cpu_seconds(pid) - idle_before
    rss = memory_kib(pid)
    began = time.monotonic()
    for name in names:
        (daemon.spool / f"{name}.yaml").unlink()
    wait_all(names, lambda n: daemon.phase(n) is None, 300)
    vmid_down = time.monotonic() - began
    argv = bench.bare_argv(SCALE, "bare-scale")
    bare_up = bare_batch(argv, bench.root / "run/bare-scale", count, run_guest=False)
    bare_running = bare_batch(argv, bench.root / "run/bare-scale-running", count, run_guest=True)
    bench.results["scale"] = {
        "vms": count,
        "vmid_all_running_s": vmid_up,
        "bare_all_answering_s": bare_up,
        "bare_all_running_s": bare_running,
        "vmid_all_gone_s": vmid_down,
        "daemon_cpu_launch_s": cpu_launch,
        "daemon_idle_cpu_s": idle_cpu,
        "idle_seconds": idle_seconds,
        "daemon_rss_kib": rss["VmRSS"],
        "daemon_peak_rss_kib": rss["VmHWM"],
    }


def guest(bench: Bench, runs: int, image: Path) -> None:
    """The test guest: spool -> `ready` on its console, vs bare QEMU with the same argv; and
    the stop: removal -> POWERDOWN on qmp.sock, SHUTDOWN -> status Succeeded."""
    daemon = bench.daemon
    text = (
        SEED_SHAPE.replace("{image}", GUEST_IMAGE)
        .replace("{grace}", "30")
        .replace("{memory}", "256Mi")
    )
    bare = bench.bare_argv(text, "bare-guest")
    vmid_boot, bare_boot, shutdown_to_succeeded = [], [], []
    for index in range(runs):
        name = f"guest-{index}"
        console = daemon.root / "var/log/vmid/namespaces/default" / name / "console.log"
        staging = daemon.spool / f".{name}.tmp"
        staging.write_text(text.format(name=name))
        began = time.monotonic()
        staging.rename(daemon.spool / f"{name}.yaml")
        wait(lambda: console.exists() and b"VMID-GUEST: ready" in console.read_bytes(), 180)  # noqa: B023
        vmid_boot.append(time.monotonic() - began)
        shutdown_to_succeeded.append(stop_guest(daemon, name))
        bare_boot.append(bare_guest(bare, bench.root / "run/bare-guest-run"))
    bench.results["guest_boot"] = {"vmid": vmid_boot, "bare": bare_boot}
    bench.results["shutdown_to_succeeded"] = shutdown_to_succeeded


def stop_guest(daemon: Daemon, name: str) -> float:
    """Remove the manifest; seconds from QEMU's SHUTDOWN event to the status `Succeeded`."""
    status = daemon.status(name)
    assert status is not None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(status["status"]["qemu"]["qmpSocket"])
        stream = sock.makefile("rw")
        json.loads(stream.readline())
        stream.write('{"execute": "qmp_capabilities"}\n')
        stream.flush()
        stream.readline()
        (daemon.spool / f"{name}.yaml").unlink()
        while json.loads(stream.readline()).get("event") != "SHUTDOWN":
            pass
        shutdown = time.monotonic()
    path = daemon.root / "run/vmid/namespaces/default" / name / "status.json"
    while True:
        try:
            if json.loads(path.read_text())["status"]["phase"] == "Succeeded":
                break
        except (OSError, ValueError, KeyError):
            if not path.exists():
                break
        time.sleep(0.0005)
    elapsed = time.monotonic() - shutdown
    wait(lambda: daemon.phase(name) is None, 60)
    return elapsed


def bare_guest(argv: list[str], workdir: Path) -> float:
    """Bare QEMU with vmid's argv for the guest: exec -> `ready` on its console log."""
    console = Path(next(a for a in argv if "logfile=" in a).split("logfile=")[1].split(",")[0])
    console.unlink(missing_ok=True)
    workdir.mkdir(exist_ok=True)
    listener, argv = control_listener(argv, workdir)
    fd, control = listener.fileno(), workdir / "control.sock"
    began = time.monotonic()
    process = subprocess.Popen(argv, cwd=workdir, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with socket.socket(socket.AF_UNIX) as sock:  # -S: it waits for `cont`
            sock.connect(str(control))
            stream = sock.makefile("rw")
            json.loads(stream.readline())
            for command in ("qmp_capabilities", "cont"):
                stream.write(json.dumps({"execute": command}) + "\n")
                stream.flush()
                while "return" not in json.loads(stream.readline()):
                    pass
            wait(lambda: console.exists() and b"VMID-GUEST: ready" in console.read_bytes(), 180)
            return time.monotonic() - began
    finally:
        process.kill()
        process.wait()
        listener.close()


def kill_lateness(root: Path, runs: int, grace: int = 2) -> list[float]:
    """A guest ignoring ACPI: seconds past its grace until vmid reports it killed."""
    late = []
    with running_daemon(root / "fake", f"accelerator: tcg\nqemu: {FAKE_QEMU}\n") as daemon:
        for index in range(runs):
            name = f"deaf-{index}"
            daemon.drop(f"{name}.yaml", IGNORING.format(name=name, grace=grace))
            daemon.wait_phase(name, "Running")
            began = time.monotonic()
            (daemon.spool / f"{name}.yaml").unlink()
            wait(lambda: daemon.phase(name) in ("Failed", None), grace + 30, 0.0005)  # noqa: B023
            late.append(time.monotonic() - began - grace)
    return late


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in (
        "VmRSS", "VmHWM")}  # fmt: skip


def wait(check: Callable[[], bool], timeout: float, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark waited too long")
        time.sleep(interval)


class Libvirt:
    """A throwaway libvirtd (bench/libvirtd-throwaway.sh) and `virsh create` of the minimal VM."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        (workdir / "sock").mkdir(parents=True)
        self.uri = f"qemu+unix:///system?socket={workdir}/sock/libvirt-sock"
        script = ROOT / "bench/libvirtd-throwaway.sh"
        with (workdir / "libvirtd.log").open("wb") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--net", "--", "sh", str(script), str(workdir / "sock")],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait(lambda: self.virsh("version").returncode == 0, 60, 0.1)
        self.create("warm-up")  # the first start probes QEMU's capabilities (seconds)
        self.virsh("destroy", "warm-up")

    def virsh(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, timeout=120)

    def create(self, name: str) -> float:
        """Seconds for `virsh create` (it returns with the domain running)."""
        template = (ROOT / "bench/libvirt-minimal.xml").read_text()
        xml = self.dir / f"{name}.xml"
        xml.write_text(template.replace("DIR", str(self.dir)).replace("NAME", name))
        began = time.monotonic()
        done = self.virsh("create", str(xml))
        elapsed = time.monotonic() - began
        assert done.returncode == 0, done.stderr
        return elapsed

    def client_only(self) -> float:
        """Seconds for `virsh version`: the client's own share of `virsh create`."""
        began = time.monotonic()
        self.virsh("version")
        return time.monotonic() - began

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_libvirt(workdir: Path) -> tuple[Libvirt | None, str]:
    """libvirt is measured only where libvirtd is installed (make bench LIBVIRT=1)."""
    if shutil.which("libvirtd") is None or shutil.which("virsh") is None:
        return None, "not measured: libvirt is not installed (make bench LIBVIRT=1 installs it)"
    try:
        return Libvirt(workdir), "measured: virsh create, throwaway libvirtd (TCG, no cgroups)"
    except (OSError, AssertionError, TimeoutError, subprocess.SubprocessError) as exc:
        return None, f"not measured: the throwaway libvirtd did not start ({exc})"


def report(results: dict[str, Any]) -> list[str]:
    lines = [
        f"machine: {results['machine']['cpus']} CPUs, {results['machine']['kernel']}, TCG; "
        f"{results['runs']} interleaved runs (medians, min-max)",
        "",
        f"{'figure':52} {'vmid':>26} {'bare QEMU':>26} {'ratio':>7}  target",
    ]
    targets = {"minimal": 1.15, "seed": 1.5, "nic": 1.3}  # issue 16's
    for key, label in (("minimal", "(a) minimal VMI"), ("seed", "(b) seed shape: 3 disks"),
                       ("nic", "(c) with a pod NIC")):  # fmt: skip
        runs = results[f"launch_{key}"]
        ratio = statistics.median(runs["vmid"]) / statistics.median(runs["bare"])
        target = targets[key]
        verdict = (
            "" if target is None else f"<= {target}x: {'met' if ratio <= target else 'NOT met'}"
        )
        lines.append(f"launch {label:45} {shown(runs['vmid'])} {shown(runs['bare'])} "
                     f"{ratio:6.2f}x  {verdict}")  # fmt: skip
        if "libvirt" in runs:
            faster = statistics.median(runs["libvirt"]) / statistics.median(runs["vmid"])
            met = "met" if faster >= 5 else "NOT met"
            lines.append(f"  libvirt, virsh create of the same VM:      {shown(runs['libvirt'])} "
                         f"(virsh alone {shown(runs['virsh_alone'])}): vmid {faster:.1f}x faster "
                         f"(target >= 5x: {met})")  # fmt: skip
    if "launch_cached" in results:
        c = results["launch_cached"]
        ratio = statistics.median(c["cached"]) / statistics.median(c["imported"])
        lines.append(f"{'  (b) on a cached pulled image (IfNotPresent)':52} {shown(c['cached'])} "
                     f"{shown(c['imported'])} {ratio:6.2f}x  vs imported, <= 1.05x: "
                     f"{'met' if ratio <= 1.05 else 'NOT met'}")  # fmt: skip
    g = results["guest_boot"]
    ratio = statistics.median(g["vmid"]) / statistics.median(g["bare"])
    lines.append(f"{'guest boot: spool -> ready on the console':52} {shown(g['vmid'], 's')} "
                 f"{shown(g['bare'], 's')} {ratio:6.2f}x  ~1x")  # fmt: skip
    p = results["powerdown"]
    met = "met" if statistics.median(p) < 0.05 else "NOT met"
    lines.append(f"{'stop: manifest removed -> POWERDOWN at QEMU':52} {shown(p)} "
                 f"{'':26} {'':7}  < 50 ms: {met}")  # fmt: skip
    s = results["shutdown_to_succeeded"]
    lines.append(f"{'stop: guest SHUTDOWN -> status Succeeded':52} {shown(s)}")
    k = results["kill_lateness"]
    lines.append(f"{'stop: ACPI ignored -> killed, after the grace':52} {shown(k)} "
                 f"{'':26} {'':7}  < 200 ms: {'met' if max(k) < 0.2 else 'NOT met'}")  # fmt: skip
    sc = results["scale"]
    ratio = sc["vmid_all_running_s"] / sc["bare_all_running_s"]
    paused = sc["vmid_all_running_s"] / sc["bare_all_answering_s"]
    lines += [
        f"{sc['vms']} VMIs at once -> all Running {sc['vmid_all_running_s']:.2f} s; "
        f"{sc['vms']} bare QEMUs in parallel, sent `cont` -> all running "
        f"{sc['bare_all_running_s']:.2f} s: {ratio:.2f}x (target <= 1.3x: "
        f"{'met' if ratio <= 1.3 else 'NOT met'})",
        f"  (the floor kept paused, -S: all answering {sc['bare_all_answering_s']:.2f} s: "
        f"{paused:.2f}x)",
        f"  all removed -> all gone {sc['vmid_all_gone_s']:.2f} s; daemon CPU for the launch "
        f"{sc['daemon_cpu_launch_s']:.2f} s",
        f"  daemon RSS {sc['daemon_rss_kib'] / 1024:.1f} MiB "
        f"(peak {sc['daemon_peak_rss_kib'] / 1024:.1f}) "
        f"(target < 120 MB: {'met' if sc['daemon_peak_rss_kib'] * 1024 < 120e6 else 'NOT met'})",
        f"  idle daemon with {sc['vms']} VMs: {sc['daemon_idle_cpu_s']:.2f} CPU s in "
        f"{sc['idle_seconds']:.0f} s = {100 * sc['daemon_idle_cpu_s'] / sc['idle_seconds']:.2f} % "
        f"of a core (target < 1 %: "
        f"{'met' if sc['daemon_idle_cpu_s'] / sc['idle_seconds'] < 0.01 else 'NOT met'})",
        f"libvirt: {results['libvirt']}",
    ]  # fmt: skip
    if "cold_pull" in results:
        lines += ["", *pull.lines(results["cold_pull"])]
    return [line.rstrip() for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--guest-runs", type=int, default=3)
    parser.add_argument("--vms", type=int, default=50)
    # The scale curve's VMI counts (bench/scale.py); `--curve` alone skips it.
    parser.add_argument("--curve", type=int, nargs="*", default=[10, 50, 100, 200])
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results.json")
    args = parser.parse_args()
    hostlike.own_mounts()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "runs": args.runs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with tempfile.TemporaryDirectory(prefix="vmid-bench-") as tmp, hostlike.tmpfs_run(Path(tmp)):
        root = Path(tmp)
        os.chmod(root, 0o711)
        guest_image = root / "guest.qcow2"
        subprocess.run(["bash", str(ROOT / "tests/guest/build.sh"), str(guest_image)],
                       check=True, env={**os.environ, "VMID_GUEST_QUIET": "1"})  # fmt: skip
        blank = root / "blank.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True)
        with running_daemon(root, "accelerator: tcg\n") as daemon:
            for ref, file in ((IMAGE, blank), (GUEST_IMAGE, guest_image)):
                done = daemon.vmid("image", "import", ref, str(file))
                assert done.returncode == 0, done.stderr
            bench = Bench(root, daemon, args.runs)
            print("launch (a) minimal ...", file=sys.stderr)
            libvirt, results["libvirt"] = start_libvirt(root / "libvirt")
            try:
                bench.launch("minimal", MANIFEST, bench.bare_argv(MANIFEST, "bare-a"), libvirt)
            finally:
                if libvirt is not None:
                    libvirt.close()
            print("launch (b) seed shape ...", file=sys.stderr)
            seed = SEED_SHAPE.replace("{image}", IMAGE).replace("{grace}", "1").replace(
                "{memory}", "64Mi")  # fmt: skip
            bench.launch("seed", seed, bench.bare_argv(seed, "bare-b"))
            print("launch of a cached pulled image ...", file=sys.stderr)
            results["launch_cached"] = cached_launch(bench, seed)
            print("launch (c) pod NIC ...", file=sys.stderr)
            # One VM on the pod network stays up, as on a host in use: the bridge, dnsmasq and
            # the nftables table are there already (the last VM gone, they go too).
            daemon.drop("keeper.yaml", WITH_NIC.format(name="keeper"))
            daemon.wait_phase("keeper", "Running")
            nic = ["nsenter", f"--net=/proc/{daemon.process.pid}/ns/net", "--",
                   *own_tap(bench.bare_argv(WITH_NIC, "bare-c"))]  # fmt: skip
            bench.launch("nic", WITH_NIC, nic)
            (daemon.spool / "keeper.yaml").unlink()
            daemon.wait_phase("keeper", None)
            print(f"guest boot x{args.guest_runs} ...", file=sys.stderr)
            guest(bench, args.guest_runs, guest_image)
            print(f"{args.vms} VMIs at once, then {args.idle:.0f} s idle ...", file=sys.stderr)
            scale(bench, args.vms, args.idle)
            if args.curve:
                print(f"scale curve {args.curve} ...", file=sys.stderr)
                results["curve"] = curve(daemon, args.curve, 1, min(args.idle, 10.0))
            results.update(bench.results)
            daemon.process.send_signal(signal.SIGTERM)
            daemon.process.wait(timeout=120)
        print("kill after the grace ...", file=sys.stderr)
        results["kill_lateness"] = kill_lateness(root, max(3, args.runs // 2))
        print("cold pull ...", file=sys.stderr)
        results["cold_pull"] = pull.measure(args.runs, 100)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(report(results)))
    if results.get("curve"):
        print("\nscale curve: N VMIs at once -> all Running, vs N bare QEMUs kept paused (-S) and")
        print("sent `cont` (running); the daemon's CPU per VMI (its loop thread's), RSS above idle")
        print("\n".join(table(results["curve"])))
    print(f"\nraw figures: {args.json}")


if __name__ == "__main__":
    main()
