"""The benchmarks' roots laid out as on a host: ROOT/run on a tmpfs, as systemd mounts /run.

vmid keeps its statuses and QEMU its sockets there (the bare floors' working directories are
there too, so both sides create their sockets alike). On this machine's disk a file's creation
costs ~90 us of CPU, on a tmpfs a few: a root wholly on disk charged vmid for a layout no host
has. State (uid records, firmware UUIDs, events, images) and logs stay on disk, as on a host.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

#: Set in the benchmark re-run in a mount namespace of its own.
OWN_MOUNTS = "VMID_BENCH_OWN_MOUNTS"


def own_mounts() -> None:
    """Run this benchmark again in a mount namespace of its own (a private one: its tmpfs
    mounts never reach the host's), unless it runs in one already."""
    if os.environ.get(OWN_MOUNTS) == "1":
        return
    argv = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, *sys.argv]
    os.execvpe("unshare", argv, {**os.environ, OWN_MOUNTS: "1"})


@contextlib.contextmanager
def tmpfs_run(root: Path) -> Iterator[Path]:
    """ROOT/run on a tmpfs while inside; unmounted after (so that ROOT can be removed)."""
    if os.environ.get(OWN_MOUNTS) != "1":
        raise RuntimeError("call hostlike.own_mounts() first: the mount must stay private")
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0755,size=2g", "vmid-bench-run", str(run)], check=True
    )
    try:
        yield run
    finally:
        subprocess.run(["umount", "--lazy", str(run)], check=False)
