"""The `vmid` command's edge: one exit code per outcome for every verb, a message and never a
traceback, and a wrong --root or user told so instead of an empty answer.

Exit codes: 0 done, 1 failed (a bad file or name, no state, the daemon or a VM, an I/O error),
2 a usage error (argparse's own), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import trio

from tests.daemon import Daemon, fake_config, manifest, running_daemon, traversable
from vmid import control
from vmid.cli import main
from vmid.errors import VmidError
from vmid.host import unixsock
from vmid.runtime import daemon as daemon_module

#: Every verb that reads a VMI by name, with what else it needs.
BY_NAME = [
    ["describe", "vm"],
    ["qmp", "vm", "query-status"],
    ["pause", "vm"],
    ["unpause", "vm"],
    ["reset", "vm"],
    ["soft-reboot", "vm"],
    ["console", "vm"],
    ["vnc", "vm"],
    ["screenshot", "vm", "shot.png"],
]
READERS = [["get"], ["get", "vm"], ["get", "-o", "json"], ["get", "-w"], *BY_NAME]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def run(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    status = main([*argv, "--root", str(root)])
    out, err = capsys.readouterr()
    return status, out, err


def state(root: Path) -> Path:
    """The directories a daemon makes at start, as it makes them; no VMI yet."""
    for directory in ("run/vmid", "var/log/vmid", "var/lib/vmid"):
        (root / directory).mkdir(parents=True)
        (root / directory).chmod(0o711)
    return root


@pytest.mark.parametrize("argv", [*READERS, ["logs", "vm"]], ids=" ".join)
def test_a_root_without_vmid_state_is_an_error_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, err = run(capsys, tmp_path, *argv)
    where = tmp_path / ("var/log/vmid" if argv[0] == "logs" else "run/vmid")
    assert (status, out) == (1, "")
    assert err == f"vmid: no vmid state at {where}: is the daemon running with this --root?\n"


def test_an_empty_state_has_no_resources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = state(tmp_path)
    assert run(capsys, root, "get") == (0, "", "No resources found in default namespace.\n")
    status, out, err = run(capsys, root, "get", "-o", "json")
    assert (status, json.loads(out)["items"], err) == (0, [], "")


@pytest.mark.parametrize("argv", [["get", "vmi", "vm"], *BY_NAME], ids=" ".join)
def test_an_unknown_name_exits_1_from_every_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, err = run(capsys, state(tmp_path), *argv)
    assert (status, out) == (1, "")
    assert err == "vmid: virtualmachineinstance 'vm' not found in namespace 'default'\n"


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["logs", "vm"], 1, "vmid: no console log for 'vm'"),
        (["validate", "/no/such.yaml"], 1, "/no/such.yaml:1:1: cannot read the file"),
        (["render", "/no/such.yaml"], 1, "/no/such.yaml:1:1: cannot read the file"),
        (["image", "import", "demo/img:1", "/no/such.img"], 1, "vmid: /no/such.img: No such"),
        (["validate", "x.yaml", "--config", "/no/vmid.yaml"], 1, "vmid: /no/vmid.yaml"),
        (["image", "list"], 0, ""),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_exit_codes_of_the_other_verbs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], status: int, message: str
) -> None:
    got, _, err = run(capsys, state(tmp_path), *argv)
    assert got == status
    assert err.startswith(message)


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-verb"],
        ["get", "--no-such-flag"],
        ["get", "-o", "xml"],
        ["describe"],
        ["qmp", "vm", "query-status", "[1]"],
        ["qmp", "vm", "query-status", "{"],
        ["vnc", "vm", "--port", "99999"],
        ["vnc", "vm", "--port", "-1"],
        ["screenshot", "vm"],
        ["image"],
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--root", str(tmp_path)])
    assert exited.value.code == 2
    assert "usage: vmid" in capsys.readouterr().err


def test_an_error_inside_the_daemons_tasks_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def serve(*args: object) -> None:
        async def fail() -> None:
            raise VmidError("the spool cannot be watched: inotify limit reached")

        async with trio.open_nursery() as nursery:  # errors come out of it in a group
            nursery.start_soon(fail)

    monkeypatch.setattr(daemon_module, "serve", serve)
    status, _, err = run(capsys, tmp_path, "daemon")
    assert (status, err) == (1, "vmid: the spool cannot be watched: inotify limit reached\n")


# --- as a user who may not read vmid's state


def as_nobody(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NOBODY, sys.executable, "-m", "vmid", *argv, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )


def private_state(root: Path) -> Path:
    """A VMI's status and log, with the modes the daemon gives them (tests/test_daemon.py
    test_status_files_and_logs_are_private): directories others may pass, files root's."""
    instance = root / "run/vmid/namespaces/default/vm-a"
    logs = root / "var/log/vmid/namespaces/default/vm-a"
    instance.mkdir(parents=True)
    logs.mkdir(parents=True)
    (instance / "status.json").write_text('{"metadata": {"name": "vm-a"}}')
    (instance / "status.json").chmod(0o600)
    (logs / "console.log").write_text("login:\n")
    logs.chmod(0o700)
    traversable(root)
    for directory in ("run", "run/vmid", "run/vmid/namespaces", "run/vmid/namespaces/default"):
        (root / directory).chmod(0o711)
    return root


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("argv", "unreadable"),
    [
        (["get"], "run/vmid/namespaces"),
        (["get", "-o", "yaml"], "run/vmid/namespaces"),
        (["describe", "vm-a"], "run/vmid/namespaces"),
        (["console", "vm-a"], "run/vmid/namespaces"),
        (["pause", "vm-a"], "run/vmid/namespaces"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_a_user_who_cannot_read_the_state_is_told_to_run_as_root(
    tmp_path: Path, argv: list[str], unreadable: str
) -> None:
    result = as_nobody(private_state(tmp_path), *argv)
    assert (result.returncode, result.stdout) == (1, "")
    assert (
        result.stderr == f"vmid: permission denied reading {tmp_path / unreadable}: run as root\n"
    )


@pytest.mark.timeout(60)
def test_a_user_who_cannot_read_a_status_file_is_told_to_run_as_root(tmp_path: Path) -> None:
    private_state(tmp_path)
    for directory in ("namespaces", "namespaces/default"):
        (tmp_path / "run/vmid" / directory).chmod(0o755)  # listable, its files still root's
    result = as_nobody(tmp_path, "get")
    status = tmp_path / "run/vmid/namespaces/default/vm-a/status.json"
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"vmid: permission denied reading {status}: run as root\n"


# --- with a daemon and a running (fake) VM


def attach(daemon: Daemon, name: str) -> subprocess.Popen[bytes]:
    """`vmid console NAME` on pipes, once it says it is connected."""
    console = subprocess.Popen(
        [sys.executable, "-m", "vmid", "console", name, "--root", str(daemon.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert console.stderr is not None
    line = console.stderr.readline()
    assert line.startswith(f"Successfully connected to {name} console".encode()), line
    return console


def attached(daemon: Daemon, name: str) -> bool:
    """Whether QEMU says a client holds the console (query-chardev)."""
    result = daemon.vmid("qmp", name, "query-chardev")
    return not json.loads(result.stdout)[0]["filename"].startswith("disconnected:")


@pytest.mark.timeout(120)
def test_a_second_console_is_refused_while_one_is_attached(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        first = attach(daemon, "vm-a")
        assert first.stdin is not None
        assert first.stdout is not None
        first.stdin.write(b"hello\n")
        first.stdin.flush()
        assert first.stdout.read(6) == b"hello\n"  # the fake's console echoes what it gets
        second = daemon.vmid("console", "vm-a")
        assert (second.returncode, second.stdout) == (1, "")
        assert second.stderr == (
            "vmid: vm-a: its console is already attached (another vmid console is connected)\n"
        )
        first.communicate(b"\x1d", timeout=30)  # Ctrl+]
        assert first.returncode == 0
        # Another program on the socket (socat): QEMU's own word.
        status = daemon.status("vm-a")
        assert status is not None
        path = status["status"]["qemu"]["consoleSocket"]
        with unixsock.connect(Path(path)):  # (a path too long for connect() itself)
            daemon.wait_for("QEMU to accept it", lambda: attached(daemon, "vm-a"))
            third = daemon.vmid("console", "vm-a")
            assert (third.returncode, third.stdout) == (1, "")
            assert third.stderr == (
                f"vmid: vm-a: its console is already attached (another client is connected "
                f"to {path})\n"
            )
        daemon.wait_for("QEMU to see it leave", lambda: not attached(daemon, "vm-a"))
        again = attach(daemon, "vm-a")
        _, errors = again.communicate(b"\x1d", timeout=30)
        assert again.returncode == 0, errors


@pytest.mark.timeout(120)
def test_a_running_vms_verbs_fail_with_messages_and_ctrl_c_is_130(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        shot = daemon.vmid("screenshot", "vm-a", "/no/such/dir/x.png")
        assert (shot.returncode, shot.stdout) == (1, "")
        assert shot.stderr == "vmid: /no/such/dir/x.png: No such file or directory\n"
        saved = daemon.vmid("screenshot", "vm-a", str(tmp_path / "x.png"))
        assert saved.returncode == 0, saved.stderr
        assert (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
        assert daemon.vmid("pause", "nope").returncode == 1
        assert daemon.vmid("unpause", "vm-a").returncode == 1  # not paused: KubeVirt refuses
        busy = socket.create_server(("127.0.0.1", 0))
        with busy:
            port = busy.getsockname()[1]
            vnc = daemon.vmid("vnc", "vm-a", "--port", str(port))
        assert vnc.returncode == 1
        assert "Traceback" not in vnc.stderr
        # The fake's qmp.sock never sends SHUTDOWN: soft-reboot waits for the guest to power off.
        reboot = subprocess.Popen(
            [sys.executable, "-m", "vmid", "soft-reboot", "vm-a", "--root", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)  # well into its wait
        reboot.send_signal(signal.SIGINT)
        _, errors = reboot.communicate(timeout=30)
        assert reboot.returncode == 130
        assert "Traceback" not in errors


@pytest.mark.timeout(60)
def test_real_qemu_shows_whether_its_console_is_attached(tmp_path: Path) -> None:
    """What `vmid console` relies on, from QEMU itself (the fake above mirrors it): a second
    client's connect() succeeds but is not accepted, and query-chardev says `disconnected:`
    only while no client holds the socket."""
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
         "-chardev", "socket,id=charserial0,path=console.sock,server=on,wait=off",
         "-qmp", "unix:qmp.sock,server=on,wait=off"],
        cwd=tmp_path, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        qmp = tmp_path / "qmp.sock"
        deadline = time.monotonic() + 30
        while not _listening(qmp) and time.monotonic() < deadline:
            time.sleep(0.05)  # QEMU binds its socket (the file appears) before it listens
        assert not control.console_attached(qmp)
        with unixsock.connect(tmp_path / "console.sock") as first:
            deadline = time.monotonic() + 10
            while not control.console_attached(qmp) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert control.console_attached(qmp)
            with unixsock.connect(tmp_path / "console.sock") as second:
                second.sendall(b"queued\n")  # nobody reads it: QEMU has not accepted it
                first.close()
                time.sleep(0.3)
                assert control.console_attached(qmp)  # now the second's
        deadline = time.monotonic() + 10
        while control.console_attached(qmp) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not control.console_attached(qmp)
    finally:
        qemu.kill()
        qemu.wait()


def _listening(path: Path) -> bool:
    try:
        unixsock.connect(path).close()
    except OSError:
        return False
    return True


@pytest.mark.timeout(120)
def test_a_console_ended_by_sigterm_gives_the_terminal_back(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        primary, secondary = pty.openpty()
        cooked = termios.tcgetattr(secondary)
        console = subprocess.Popen(
            [sys.executable, "-m", "vmid", "console", "vm-a", "--root", str(tmp_path)],
            stdin=secondary,
            stdout=secondary,
            stderr=subprocess.PIPE,
        )
        try:
            assert console.stderr is not None
            assert console.stderr.readline().startswith(b"Successfully connected")
            daemon.wait_for("raw mode", lambda: termios.tcgetattr(secondary) != cooked)
            console.send_signal(signal.SIGTERM)
            assert console.wait(timeout=30) == 130
            assert b"Traceback" not in console.stderr.read()
            assert termios.tcgetattr(secondary) == cooked
        finally:
            console.stderr.close()  # type: ignore[union-attr]
            os.close(primary)
            os.close(secondary)
