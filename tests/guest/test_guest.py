"""The test guest (tests/guest/build.sh) under real QEMU (TCG): it boots, reads its cidata
disk, prints its markers, and obeys or ignores the ACPI power button as its user-data says.

Each test boots the image with its own NoCloud ISO (pycdlib, as vmid writes it), watches the
serial console (a chardev file) for `VMID-GUEST: ` markers and drives QEMU over QMP.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest

GUEST = Path(__file__).resolve().parent
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 120.0  # seconds to `VMID-GUEST: ready` under TCG (about 5 s on an idle machine)
POWEROFF_TIMEOUT = 10.0  # seconds from system_powerdown to QEMU's exit
INSTANCE_ID = "6a1f5c3e-2b7d-4c1e-9a0b-0123456789ab"
HOSTNAME = "guest-under-test"
META_DATA = json.dumps(
    {"instance-id": INSTANCE_ID, "local-hostname": HOSTNAME}, separators=(",", ":")
)

pytestmark = pytest.mark.skipif(shutil.which(QEMU) is None, reason="QEMU is not installed")


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guest image, built by build.sh (whose own cache keeps a rebuild to about a second)."""
    image = tmp_path_factory.mktemp("guest") / "guest.qcow2"
    subprocess.run(["bash", str(GUEST / "build.sh"), str(image)], check=True, timeout=900)
    return image


def cidata_iso(path: Path, user_data: str, meta_data: str = META_DATA) -> Path:
    """A NoCloud ISO labelled `cidata` (ISO 9660 + Joliet + Rock Ridge), laid out as vmid's."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, text) in enumerate((("meta-data", meta_data), ("user-data", user_data))):
        content = text.encode()
        iso.add_fp(
            io.BytesIO(content),
            len(content),
            f"/F{index}.;1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    iso.write(str(path))
    iso.close()
    return path


class Qmp:
    """A minimal synchronous QMP client: commands, and the events that arrive in between."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise
                time.sleep(0.05)
        greeting = self._read(timeout)
        assert greeting is not None, "QMP closed before its greeting"
        assert "QMP" in greeting, greeting
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self.sock.close()

    def _read(self, timeout: float) -> dict[str, Any] | None:
        """The next message; None when QEMU hung up; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, timeout: float = 30.0) -> Any:
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            message = self._read(timeout)
            assert message is not None, f"QMP closed before answering {command}"
            if "event" in message:
                self.events.append(message)
                continue
            assert "error" not in message, message
            return message["return"]

    def event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The first event `name` (already received or arriving within `timeout`), else None."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    return event
            try:
                message = self._read(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return None
            if message is None:
                return None
            if "event" in message:
                self.events.append(message)


class Guest:
    """One QEMU process running the guest: its serial console and its QMP monitor."""

    def __init__(self, process: subprocess.Popen[bytes], console: Path, qmp: Qmp) -> None:
        self.process = process
        self.console = console
        self.qmp = qmp
        self.started = time.monotonic()

    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def markers(self) -> list[str]:
        """The `VMID-GUEST: ` lines so far, without the prefix."""
        prefix = "VMID-GUEST: "
        return [line.split(prefix, 1)[1] for line in self.text().splitlines() if prefix in line]

    def wait_for(self, marker: str, timeout: float) -> float:
        """Wait until the console has the line `VMID-GUEST: <marker>`; seconds since start."""
        deadline = time.monotonic() + timeout
        while marker not in self.markers():
            assert self.process.poll() is None, f"QEMU exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {marker!r} in {timeout} s:\n{self.text()}"
            time.sleep(0.05)
        return time.monotonic() - self.started


@contextlib.contextmanager
def boot(image: Path, *devices: str) -> Iterator[Guest]:
    """Start QEMU on `image` (a virtio disk) plus `devices` (QEMU options); quit it at the end."""
    with tempfile.TemporaryDirectory(prefix="vmid-guest-") as scratch:
        tmp = Path(scratch)
        argv = [
            QEMU, "-machine", "q35", "-accel", "tcg", "-m", "256", "-nodefaults",
            "-display", "none", "-no-user-config",
            "-chardev", f"file,id=serial0,path={tmp / 'console.log'}",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{tmp / 'qmp.sock'},server=on,wait=off",
            "-blockdev", f"driver=file,filename={image},node-name=boot-file,read-only=on",
            "-blockdev", "driver=qcow2,file=boot-file,node-name=boot,read-only=on",
            "-device", "virtio-blk-pci,drive=boot,bootindex=1",
            *devices,
        ]  # fmt: skip
        with (tmp / "qemu.log").open("wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            qmp = Qmp(tmp / "qmp.sock", timeout=30)
            try:
                yield Guest(process, tmp / "console.log", qmp)
            finally:
                if process.poll() is None:
                    with contextlib.suppress(OSError, AssertionError, TimeoutError):
                        qmp.execute("quit", timeout=5)
                qmp.close()
        finally:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            print((tmp / "qemu.log").read_text(errors="replace"), end="")


def virtio_cidata(iso: Path) -> list[str]:
    return [
        "-blockdev", f"driver=file,filename={iso},node-name=cidata-file,read-only=on",
        "-blockdev", "driver=raw,file=cidata-file,node-name=cidata,read-only=on",
        "-device", "virtio-blk-pci,drive=cidata",
    ]  # fmt: skip


def sata_cidata(iso: Path) -> list[str]:
    """The ISO as a cdrom on the first port of q35's built-in AHCI controller."""
    return [
        "-blockdev", f"driver=file,filename={iso},node-name=cidata-file,read-only=on",
        "-blockdev", "driver=raw,file=cidata-file,node-name=cidata,read-only=on",
        "-device", "ide-cd,drive=cidata,bus=ide.0",
    ]  # fmt: skip


USER_NET = ["-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0"]
USER_DATA = "#cloud-config\nruncmd:\n  - echo 'a line with  spaces, \"quotes\" & $signs'\n"


def assert_powers_off(guest: Guest) -> None:
    """system_powerdown: the guest powers off, QEMU reports it and exits by itself."""
    sent = time.monotonic()
    guest.qmp.execute("system_powerdown")
    shutdown = guest.qmp.event("SHUTDOWN", timeout=POWEROFF_TIMEOUT)
    assert shutdown is not None, f"no SHUTDOWN event:\n{guest.text()}"
    assert shutdown["data"]["guest"] is True, shutdown
    assert guest.process.wait(timeout=POWEROFF_TIMEOUT) == 0
    assert time.monotonic() - sent < POWEROFF_TIMEOUT
    assert "powering off" in guest.markers()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bus", ["virtio", "sata"])
def test_reads_cidata_and_powers_off(guest_image: Path, tmp_path: Path, bus: str) -> None:
    iso = cidata_iso(tmp_path / "cidata.iso", USER_DATA)
    devices = virtio_cidata(iso) + USER_NET if bus == "virtio" else sata_cidata(iso)
    with boot(guest_image, *devices) as guest:
        seconds = guest.wait_for("ready", BOOT_TIMEOUT)
        print(f"ready after {seconds:.1f} s (TCG)")
        if bus == "virtio":
            guest.wait_for("ip=10.0.2.15", 60)
        markers = guest.markers()
        assert markers[0] == "booted", guest.text()
        device = "vdb" if bus == "virtio" else "sr0"
        user_lines = [f"user-data: {line}" for line in USER_DATA.splitlines()]
        expected = [
            "booted",
            f"cidata={device}",
            f"instance-id={INSTANCE_ID}",
            f"hostname={HOSTNAME}",
            *user_lines,
            "ready",
        ]
        assert [m for m in markers if not m.startswith("ip=")] == expected, guest.text()
        assert_powers_off(guest)


@pytest.mark.timeout(180)
def test_without_cidata(guest_image: Path) -> None:
    with boot(guest_image) as guest:
        guest.wait_for("ready", BOOT_TIMEOUT)
        assert guest.markers() == ["booted", "no cidata", "ready"], guest.text()
        assert_powers_off(guest)


@pytest.mark.timeout(180)
def test_ignore_acpi(guest_image: Path, tmp_path: Path) -> None:
    iso = cidata_iso(tmp_path / "cidata.iso", "#cloud-config\nvmid-test: ignore-acpi\n")
    with boot(guest_image, *virtio_cidata(iso)) as guest:
        guest.wait_for("ready", BOOT_TIMEOUT)
        assert "ignore-acpi" in guest.markers()
        guest.qmp.execute("system_powerdown")
        guest.wait_for("power button ignored", 10)  # the press did reach the guest
        assert guest.qmp.event("SHUTDOWN", timeout=5) is None, guest.text()
        assert guest.process.poll() is None
        assert "powering off" not in guest.markers()
        guest.qmp.execute("quit")
        shutdown = guest.qmp.event("SHUTDOWN", timeout=10)
        assert shutdown is not None
        assert shutdown["data"]["guest"] is False


@pytest.mark.timeout(180)
def test_panic(guest_image: Path, tmp_path: Path) -> None:
    iso = cidata_iso(tmp_path / "cidata.iso", "#cloud-config\n# vmid-test: panic\n")
    devices = [*virtio_cidata(iso), "-device", "pvpanic", "-action", "panic=pause"]
    with boot(guest_image, *devices) as guest:
        panicked = guest.qmp.event("GUEST_PANICKED", timeout=BOOT_TIMEOUT)
        assert panicked is not None, guest.text()
        assert "panicking" in guest.markers()
        assert "ready" not in guest.markers()
        assert "Kernel panic" in guest.text()
