"""Time from a VM's start to its guest's DHCP lease on vmid's pod network, against QEMU's
built-in user networking (slirp) with the same guest, measured side by side.

    .venv/bin/python bench/dhcp.py [--runs N]

vmid: the manifest renamed into the spool -> status `Running` -> the guest prints
`VMID-GUEST: ip=ADDR` (udhcpc bound the lease dnsmasq gave). Bare: qemu-system-x86_64 with the
test guest, a virtio NIC on `-netdev user` -> the same marker. Both under TCG, so the guest's
boot dominates; the point is that vmid's network adds nothing a guest waits for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import summary
from tests.daemon import Daemon, running_daemon

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "kubevirt/fedora-cloud-container-disk-demo:latest"
MANIFEST = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    memory: {{guest: 256Mi}}
    devices:
      disks: [{{name: root, disk: {{bus: virtio}}}}]
      interfaces: [{{name: default, masquerade: {{}}}}]
  networks: [{{name: default, pod: {{}}}}]
  volumes: [{{name: root, containerDisk: {{image: {image}}}}}]
"""
MARKER = b"VMID-GUEST: ip="


def vmid_run(daemon: Daemon, name: str) -> tuple[float, float]:
    """(rename -> Running, rename -> lease bound in the guest) in seconds."""
    staging = daemon.spool / f".{name}.tmp"
    staging.write_text(MANIFEST.format(name=name, image=IMAGE))
    began = time.monotonic()
    staging.rename(daemon.spool / f"{name}.yaml")
    while daemon.phase(name) != "Running":
        time.sleep(0.001)
    running = time.monotonic() - began
    console = daemon.root / "var/log/vmid/namespaces/default" / name / "console.log"
    while not (console.exists() and MARKER in console.read_bytes()):
        time.sleep(0.01)
    leased = time.monotonic() - began
    (daemon.spool / f"{name}.yaml").unlink()
    while daemon.phase(name) is not None:
        time.sleep(0.01)
    return running, leased


def bare_run(image: Path, workdir: Path) -> float:
    """Exec of QEMU with the guest on user networking -> lease bound in the guest, seconds."""
    console = workdir / "console.log"
    console.unlink(missing_ok=True)
    overlay = workdir / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image), str(overlay)],
        check=True,
    )
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "256", "-nodefaults",
            "-display", "none", "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-chardev", f"file,id=s0,path={console}", "-serial", "chardev:s0"]  # fmt: skip
    began = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while not (console.exists() and MARKER in console.read_bytes()):
            time.sleep(0.01)
        return time.monotonic() - began
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmid-bench-") as tmp:
        root = Path(tmp)
        image = root / "guest.qcow2"
        subprocess.run(["bash", str(ROOT / "tests/guest/build.sh"), str(image)], check=True,
                       env={**os.environ, "VMID_GUEST_QUIET": "1"})  # fmt: skip
        workdir = root / "bare"
        workdir.mkdir()
        running, leased, bare = [], [], []
        with running_daemon(root, "accelerator: tcg\n") as daemon:
            imported = daemon.vmid("image", "import", IMAGE, str(image))
            assert imported.returncode == 0, imported.stderr
            for index in range(args.runs):
                up, lease = vmid_run(daemon, f"dhcp-{index}")
                running.append(up)
                leased.append(lease)
                bare.append(bare_run(image, workdir))
    print(f"machine: {os.cpu_count()} CPUs, TCG, {args.runs} interleaved runs, the test guest")
    print(f"vmid: spool rename -> Running:                 {summary(running, 's')}")
    print(f"vmid: spool rename -> guest bound its lease:   {summary(leased, 's')}")
    print(f"bare QEMU, user networking: exec -> lease:     {summary(bare, 's')}")
    ratio = statistics.median(leased) / statistics.median(bare)
    print(f"vmid's pod network / QEMU's slirp, start to lease: {ratio:.2f}x")


if __name__ == "__main__":
    main()
