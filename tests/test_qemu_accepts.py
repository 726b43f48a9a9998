"""Real QEMU (TCG) starts every golden plan: the argv is not only stable but correct.

Host-specific parts are swapped for test doubles: the files vmid passes by fd become small
scratch images (opened as vmid opens them) and taps become user-mode netdevs. QEMU must reach
its QMP monitor, paused (-S) and ready.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.qemuopts import parse, unparse
from tests.test_golden import MANIFESTS, plan_golden
from vmid.plan.model import Access, LaunchPlan, fdset_path

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed (make setup)"
)


def _scratch_files(plan: LaunchPlan, tmp: Path) -> dict[int, int]:
    """An fd per fdset, on a fresh scratch image of the format its node expects (the firmware
    code as it is), opened as vmid would open the file."""
    formats = {}  # file node's filename (/dev/fdset/N) -> the driver of the node on it
    files = {}
    for flag, value in itertools.pairwise(plan.argv):
        if flag == "-blockdev":
            _, pairs = parse(value)
            if pairs["driver"] == "file":
                files[pairs["node-name"]] = pairs["filename"]
            elif "file" in pairs:
                formats[files[pairs["file"]]] = pairs["driver"]
    fds = {}
    for file in plan.files:
        if file.access is Access.LOG:  # a pipe, as vmid passes; QEMU at -S writes nothing
            read_end, fds[file.fdset] = os.pipe()
            os.close(read_end)
            continue
        image = Path(file.path)
        if not image.is_file():
            image = tmp / f"set{file.fdset}.img"
            if file.path.endswith("efivars.fd"):
                image.write_bytes(b"\0" * 540672)
            else:
                fmt = formats.get(fdset_path(file.fdset), "raw")
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", fmt, str(image), "64M"],
                    check=True,
                    timeout=30,
                )
        flags = os.O_RDONLY if file.access is Access.READ else os.O_RDWR
        fds[file.fdset] = os.open(image, flags)
    return fds


def _test_doubles(argv: tuple[str, ...]) -> list[str]:
    """Taps become user-mode netdevs."""
    result = []
    for index, arg in enumerate(argv):
        previous = argv[index - 1] if index else ""
        if previous == "-netdev":
            _, pairs = parse(arg)
            arg = unparse("user", {"id": pairs["id"], "restrict": "on"})
        result.append(arg)
    return result


def _query_status(control: socket.socket) -> str:
    stream = control.makefile("rw")
    json.loads(stream.readline())  # greeting
    for command in ("qmp_capabilities", "query-status"):
        stream.write(json.dumps({"execute": command}) + "\n")
        stream.flush()
        while "return" not in (reply := json.loads(stream.readline())):
            assert "error" not in reply, reply
    status: str = reply["return"]["status"]
    stream.write(json.dumps({"execute": "quit"}) + "\n")
    stream.flush()
    # Wait for QEMU to hang up: closing first can make it drop the unread `quit`.
    try:
        while stream.readline():
            pass
    except ConnectionResetError:
        pass
    return status


@pytest.mark.timeout(60)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_qemu_starts_golden_plan(manifest: Path, tmp_path: Path) -> None:
    plan = plan_golden(manifest).plan
    files = _scratch_files(plan, tmp_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "control.sock"))
    listener.listen(1)
    taps = {tap.netdev: -1 for tap in plan.taps}  # user-mode netdevs instead
    argv = _test_doubles(plan.argv_for(listener.fileno(), taps, files))
    qemu = subprocess.Popen(
        argv,
        cwd=tmp_path,
        pass_fds=(listener.fileno(), *files.values()),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **plan.env},
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.settimeout(30)
        try:
            control.connect(str(tmp_path / "control.sock"))
            status = _query_status(control)
        except (OSError, ValueError) as exc:
            qemu.kill()
            pytest.fail(f"QEMU did not start: {exc}\n{qemu.communicate(timeout=10)[1]}")
    _, stderr = qemu.communicate(timeout=30)
    listener.close()
    for fd in files.values():
        os.close(fd)
    assert status == "prelaunch", stderr
    assert qemu.returncode == 0, stderr
