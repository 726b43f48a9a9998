"""A cold pull of a containerDisk through vmid against `skopeo copy` of the same image alone.

    .venv/bin/python bench/pull.py [--runs N] [--mib 100]

Debian's docker-registry serves the image on loopback in a network namespace of its own. The
image: one gzip layer holding /disk/disk.img, half random bytes, half zeros (a disk is mostly
zeros). Each run interleaves `skopeo copy docker://... dir:` into a new directory with vmid's
pull into an empty store (inspect, copy, the manifest's digest checked, the disk extracted,
stored): timed in-process (the daemon's case: until the image is stored, skopeo's copy removed
after) and as `vmid image pull` (a new Python each time). Medians with min-max; target <= 1.2x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.registry import HOST, INSECURE_CONF, Registry, containerdisk, registry

IN_PROCESS = """
import functools, shutil, sys, time
from pathlib import Path
import trio
from vmid.config import Images, Paths
from vmid.host import registry
from vmid.host.storage import ImageStore
paths = Paths(Path(sys.argv[1]))
shutil.rmtree(paths.images, ignore_errors=True)
pull = functools.partial(registry.pull, ImageStore(paths.images, "qemu-img"),
                         registry.skopeo_for(paths, Images()), sys.argv[2], max_size=1 << 40)
async def daemon():  # as the daemon pulls: VMIs start once stored, the copy removed meanwhile
    async with trio.open_nursery() as tidy:
        started = time.monotonic()
        await pull(tidy=tidy)
        print(time.monotonic() - started)
trio.run(daemon)
"""


def timed(server: Registry, *argv: str) -> float:
    started = time.monotonic()
    server.run(*argv)
    return time.monotonic() - started


TARGET = 1.2


def summary(name: str, values: list[float], base: list[float]) -> str:
    ratio = statistics.median(values) / statistics.median(base)
    spread = f"{min(values):.2f}-{max(values):.2f}"
    return f"{name:<28} {statistics.median(values):6.2f} s  ({spread})  {ratio:4.2f}x"


def measure(runs: int, mib: int) -> dict[str, list[float]]:
    """Interleaved cold pulls: `skopeo copy` alone, vmid in-process, `vmid image pull`."""
    with tempfile.TemporaryDirectory(prefix="vmid-bench-pull-") as temp:
        work = Path(temp)
        root = work / "root"
        (root / "etc/containers").mkdir(parents=True)
        conf = root / "etc/containers/registries.conf"
        conf.write_text(INSECURE_CONF)
        half = mib << 19
        disk = os.urandom(half) + bytes(half)
        ref = f"{HOST}/bench/disk:1"
        found: dict[str, list[float]] = {"skopeo": [], "vmid": [], "cli": []}
        with registry(work / "registry") as server:
            server.push(containerdisk(work / "layout", [[("disk/disk.img", disk)]]), "bench/disk:1")
            for _ in range(runs):
                shutil.rmtree(work / "copy", ignore_errors=True)
                skopeo = ["skopeo", "--registries-conf", str(conf), "copy", "-q"]
                copy = timed(server, *skopeo, f"docker://{ref}", f"dir:{work / 'copy'}")
                found["skopeo"].append(copy)
                out = server.run(sys.executable, "-c", IN_PROCESS, str(root), ref).stdout
                found["vmid"].append(float(out))
                shutil.rmtree(root / "var", ignore_errors=True)
                vmid = [sys.executable, "-m", "vmid", "image", "pull", ref, "--root", str(root)]
                found["cli"].append(timed(server, *vmid))
    return {"mib": [float(mib)], **found}


def lines(results: dict[str, list[float]]) -> list[str]:
    copies = results["skopeo"]
    ratio = statistics.median(results["vmid"]) / statistics.median(copies)
    verdict = "met" if ratio <= TARGET else "NOT met"
    return [
        f"cold pull of a {results['mib'][0]:.0f} MiB containerDisk (gzip), {len(copies)} runs "
        f"(target <= {TARGET}x in the daemon: {verdict})",
        summary("skopeo copy alone", copies, copies),
        summary("vmid pull (in the daemon)", results["vmid"], copies),
        summary("vmid image pull (CLI)", results["cli"], copies),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    print("\n".join(lines(measure(args.runs, args.mib))))


if __name__ == "__main__":
    main()
