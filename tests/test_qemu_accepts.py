"""Real QEMU (TCG) starts every golden plan: the argv is not only stable but correct.

Host-specific parts are swapped for test doubles: disk files become small scratch images and
taps become user-mode netdevs. QEMU must reach its QMP monitor, paused (-S) and ready.
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
from vmid.plan.model import CONTROL_FD

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed (make setup)"
)


def _scratch_images(argv: list[str], tmp: Path) -> list[str]:
    """Point every file node at a fresh scratch image of the format its format node expects."""
    formats = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-blockdev":
            _, pairs = parse(value)
            if "file" in pairs:
                formats[pairs["file"]] = pairs["driver"]
    result = []
    for index, arg in enumerate(argv):
        previous = argv[index - 1] if index else ""
        if previous == "-blockdev":
            head, pairs = parse(arg)
            if pairs.get("node-name") == "pflash1":
                image = tmp / "vars.fd"
                image.write_bytes(b"\0" * 540672)
                pairs["filename"] = str(image)
            elif pairs.get("driver") == "file" and not Path(pairs["filename"]).is_file():
                image = tmp / f"{pairs['node-name']}.img"
                fmt = formats.get(pairs["node-name"], "raw")
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", fmt, str(image), "64M"],
                    check=True,
                    timeout=30,
                )
                pairs["filename"] = str(image)
            arg = unparse(head, pairs)
        elif previous == "-netdev":
            _, pairs = parse(arg)
            arg = unparse("user", {"id": pairs["id"], "restrict": "on"})
        elif previous == "-chardev":
            head, pairs = parse(arg)
            if "logfile" in pairs:
                pairs["logfile"] = str(tmp / "console.log")
            arg = unparse(head, pairs)
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
    argv = _scratch_images(list(plan.argv), tmp_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "control.sock"))
    listener.listen(1)
    fd = listener.fileno()
    # The listener becomes fd 3 in the child only; this process may use fd 3 for itself.
    qemu = subprocess.Popen(
        argv,
        cwd=tmp_path,
        pass_fds=(CONTROL_FD,),
        preexec_fn=lambda: os.dup2(fd, CONTROL_FD),
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
    assert status == "prelaunch", stderr
    assert qemu.returncode == 0, stderr
