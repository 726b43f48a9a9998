"""Launch and stop latency of vmid against bare QEMU with the same argv, measured side by side.

    .venv/bin/python bench/latency.py [--runs N]

(a) launch: a manifest renamed into the spool -> status `Running`, next to a bare
    qemu-system-x86_64 with the argv vmid renders -> its QMP answering `query-status`;
(b) stop: the manifest removed -> the POWERDOWN event seen on the VM's public qmp.sock;
(c) the same launch with one pod-network interface (masquerade): vmid's per-VM network setup
    (IPAM record, tap, enslave, dnsmasq lease, nftables) is the difference from (a).
Runs are interleaved (vmid, bare, vmid, ...) and reported as medians with min-max: these
machines are noisy, single absolute times mean little. Under TCG, as the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hostlike
from tests.daemon import Daemon, running_daemon

MANIFEST = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1  # no guest OS here: the firmware ignores ACPI
  domain:
    memory: {{guest: 64Mi}}
    devices: {{autoattachPodInterface: false}}
"""
WITH_NIC = MANIFEST.replace(
    "devices: {{autoattachPodInterface: false}}",
    "devices: {{interfaces: [{{name: default, masquerade: {{}}}}]}}\n"
    "  networks: [{{name: default, pod: {{}}}}]",
)


def _qmp(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def _command(stream: TextIO, command: str) -> dict[str, object]:
    stream.write(json.dumps({"execute": command}) + "\n")
    stream.flush()
    while True:
        reply: dict[str, object] = json.loads(stream.readline())
        if "return" in reply or "error" in reply:
            return reply


def vmid_launch(daemon: Daemon, name: str, manifest: str = MANIFEST) -> tuple[float, float]:
    """(launch seconds, powerdown seconds) for one VMI through the spool."""
    spool = daemon.spool
    staging = spool / f".{name}.tmp"
    staging.write_text(manifest.format(name=name))
    began = time.monotonic()
    staging.rename(spool / f"{name}.yaml")
    while (phase := daemon.phase(name)) != "Running":
        if phase == "Failed":
            raise AssertionError(f"{name} failed: {daemon.reason(name)}")
        time.sleep(0.0005)
    launch = time.monotonic() - began
    status = daemon.status(name)
    assert status is not None
    qmp = status["status"]["qemu"]["qmpSocket"]
    with _qmp(qmp) as sock:
        stream = sock.makefile("rw")
        json.loads(stream.readline())
        _command(stream, "qmp_capabilities")
        removed = time.monotonic()
        (spool / f"{name}.yaml").unlink()
        while json.loads(stream.readline()).get("event") != "POWERDOWN":
            pass
        powerdown = time.monotonic() - removed
    while daemon.phase(name) is not None:
        time.sleep(0.005)
    return launch, powerdown


def control_listener(argv: list[str], workdir: Path) -> tuple[socket.socket, list[str]]:
    """A listening control socket in `workdir`, and `argv` with its fd (as vmid does it)."""
    control = workdir / "control.sock"
    control.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(control))
    listener.listen(1)
    fd = listener.fileno()
    argv = [a.replace("fd=3,", f"fd={fd},") if a.startswith("socket,id=vmid-control") else a
            for a in argv]  # fmt: skip
    return listener, argv


def bare_launch(argv: list[str], workdir: Path, began: float | None = None) -> float:
    """Seconds from exec of the same argv (own control socket) to `query-status` answered.

    `began`: count from this monotonic time instead (QEMUs started in parallel).
    """
    listener, argv = control_listener(argv, workdir)
    fd = listener.fileno()
    control = workdir / "control.sock"
    began = time.monotonic() if began is None else began
    process = subprocess.Popen(argv, cwd=workdir, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    with _qmp(str(control)) as sock:
        sock.settimeout(30)
        stream = sock.makefile("rw")
        json.loads(stream.readline())
        _command(stream, "qmp_capabilities")
        _command(stream, "query-status")
        elapsed = time.monotonic() - began
        stream.write(json.dumps({"execute": "quit"}) + "\n")
        stream.flush()
        try:
            while stream.readline():
                pass
        except ConnectionResetError:
            pass
    process.wait(timeout=30)
    listener.close()
    return elapsed


def own_tap(argv: list[str]) -> list[str]:
    """The argv with QEMU creating its tap itself (by name) instead of inheriting vmid's fd."""
    return [
        re.sub(
            r"^tap,id=(net\d+),fd=\d+$", r"tap,id=\1,ifname=vmidbench\1,script=no,downscript=no", a
        )
        for a in argv
    ]


def by_path(argv: list[str]) -> list[str]:
    """vmid's argv as bare QEMU runs it: each file vmid would pass in an fdset (`-add-fd`),
    QEMU opens by its path instead (the floor has no vmid to open files for it)."""
    sets: dict[str, str] = {}
    bare: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "-add-fd":
            continue
        if index and argv[index - 1] == "-add-fd":
            found = re.search(r"set=(\d+),opaque=(.*)$", arg)
            assert found, arg
            sets[f"/dev/fdset/{found.group(1)}"] = found.group(2).replace(",,", ",")
            continue
        bare.append(arg)
    pattern = re.compile(r"/dev/fdset/\d+")
    return [pattern.sub(lambda m: sets[m.group(0)], arg) for arg in bare]


def _rendered_argv(root: Path, text: str = MANIFEST) -> list[str]:
    manifest = root / "render.yaml"
    manifest.write_text(text.format(name="bare"))
    out = subprocess.run(
        [sys.executable, "-m", "vmid.cli", "render", "-o", "json", str(manifest), "--root",
         str(root)], capture_output=True, text=True, check=True,
    )  # fmt: skip
    plan = json.loads(out.stdout)
    Path(plan["consoleLog"]).parent.mkdir(parents=True, exist_ok=True)
    return by_path(plan["argv"])


def summary(values: list[float], unit: str = "ms") -> str:
    """`median 12.3 ms  (min 10.1, max 15.0)`: what every benchmark here prints."""
    scale = 1000 if unit == "ms" else 1
    shown = [v * scale for v in values]
    middle = statistics.median(shown)
    return f"median {middle:7.1f} {unit}  (min {min(shown):.1f}, max {max(shown):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    hostlike.own_mounts()
    with tempfile.TemporaryDirectory(prefix="vmid-bench-") as tmp, hostlike.tmpfs_run(Path(tmp)):
        root = Path(tmp)
        (root / "etc/vmid").mkdir(parents=True)
        (root / "etc/vmid/vmid.yaml").write_text("accelerator: tcg\n")
        argv = _rendered_argv(root)
        # QEMU (root, in the daemon's netns) creates this tap itself: the bare floor with a NIC.
        nic_argv = ["nsenter", "--net=/proc/{pid}/ns/net", "--",
                    *own_tap(_rendered_argv(root, WITH_NIC))]  # fmt: skip
        workdir = root / "run/bare"  # on the tmpfs, as vmid's QEMU's
        workdir.mkdir()
        vmid_runs, bare_runs, powerdowns, nic_runs, bare_nic_runs = [], [], [], [], []
        with running_daemon(root, "accelerator: tcg\n") as daemon:
            nic_argv[1] = nic_argv[1].format(pid=daemon.process.pid)
            # One VM on the pod network stays up, as on a host in use: the bridge, dnsmasq and
            # the nftables table are there already (the last VM gone, they go too).
            daemon.drop("keeper.yaml", WITH_NIC.format(name="keeper"))
            daemon.wait_phase("keeper", "Running")
            for index in range(args.runs):
                launch, powerdown = vmid_launch(daemon, f"bench-{index}")
                vmid_runs.append(launch)
                powerdowns.append(powerdown)
                bare_runs.append(bare_launch(argv, workdir))
                nic_runs.append(vmid_launch(daemon, f"nic-{index}", WITH_NIC)[0])
                bare_nic_runs.append(bare_launch(nic_argv, workdir))
    print(f"machine: {os.cpu_count()} CPUs, TCG, {args.runs} interleaved runs")
    print(f"launch, vmid (spool rename -> Running):      {summary(vmid_runs)}")
    print(f"launch, bare QEMU (exec -> query-status):   {summary(bare_runs)}")
    overhead = statistics.median(vmid_runs) - statistics.median(bare_runs)
    ratio = statistics.median(vmid_runs) / statistics.median(bare_runs)
    print(f"vmid adds {overhead * 1000:.1f} ms to the median ({ratio:.2f}x the bare floor)")
    print(f"stop: manifest removed -> POWERDOWN on qmp.sock: {summary(powerdowns)}")
    print(f"launch, vmid with a pod NIC:                 {summary(nic_runs)}")
    print(f"launch, bare QEMU with that NIC:             {summary(bare_nic_runs)}")
    network = statistics.median(nic_runs) - statistics.median(vmid_runs)
    qemu_nic = statistics.median(bare_nic_runs) - statistics.median(bare_runs)
    print(
        f"a pod NIC adds {network * 1000:.1f} ms to vmid's median launch, "
        f"{qemu_nic * 1000:.1f} ms of it QEMU's own (tap and virtio-net): vmid's network setup "
        f"is {(network - qemu_nic) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
