"""Every file vmid replaces goes through one atomic write: never through a planted symlink,
never half-written, its mode exact, and durable where a crash must find it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from vmid.host import dnsmasq, ipam, safefile, storage
from vmid.host.cloudinit import write_iso
from vmid.plan.model import CloudInitIso, EfiVars, IsoFile

VICTIM = b"a file root must not overwrite\n"


def _write_leases(target: Path) -> None:
    dnsmasq.write_conf(target, "dhcp-host=02:00:00:00:00:01,10.0.2.2\n")


def _save_registry(target: Path) -> None:
    ipam.Registry(target).save()


def _write_iso(target: Path) -> None:
    write_iso(
        CloudInitIso(path=str(target), label="cidata", files=(IsoFile(name="a", content=b"x"),))
    )


def _copy_efi_vars(target: Path) -> None:
    template = target.with_name("template.fd")
    template.write_bytes(b"\0" * 4096)
    storage._efi_vars(EfiVars(path=str(target), template=str(template)))


#: Each writer, and the fixed staging name the writes before this helper used beside the target.
WRITERS: list[tuple[Callable[[Path], None], str]] = [
    (_write_leases, ".{}.tmp"),
    (_save_registry, ".{}.tmp"),
    (_write_iso, "{}.staging"),
    (_copy_efi_vars, "{}.staging"),
]


@pytest.mark.parametrize(("write", "staging"), WRITERS)
def test_a_symlink_planted_at_a_staging_name_is_never_written_through(
    tmp_path: Path, write: Callable[[Path], None], staging: str
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    target = tmp_path / "state" / "file"
    target.parent.mkdir()
    (target.parent / staging.format(target.name)).symlink_to(victim)
    write(target)
    assert victim.read_bytes() == VICTIM
    assert not target.is_symlink()
    assert target.is_file()
    assert target.stat().st_size > 0


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_bytes(b"old\n")

    def fail(stream: BinaryIO) -> None:
        stream.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        safefile.write_atomically(target, fail)
    assert target.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["status.json"]


def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the daemon's
    try:
        safefile.write_atomically(tmp_path / "hosts", b"x\n", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "hosts").stat().st_mode & 0o777 == 0o644  # dnsmasq reads it as nobody


def test_the_address_registry_is_durable_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its intent must survive a crash (taps exist only once it is written): the file is
    fsynced, and so is its directory after the rename (no power cut here: the fsyncs are seen)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "network" / "attachments.json"
    ipam.Registry(path).save()
    assert synced[-1] == str(path.parent)
    assert any(p.startswith(str(path.parent / ".attachments.json.")) for p in synced)


def _nest(top: Path, depth: int) -> None:
    """`depth` directories, one in the next, with a file at the bottom (as a guest's QEMU can
    make in its working directory)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)


def test_a_tree_nested_deeper_than_pythons_recursion_is_removed(tmp_path: Path) -> None:
    top = tmp_path / "qemu"
    top.mkdir()
    _nest(top, 3000)
    (top / "sock").write_text("")
    safefile.remove_tree(top)
    assert not top.exists()


def test_removing_a_tree_never_follows_a_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept").write_text("")
    top = tmp_path / "qemu"
    (top / "a/b").mkdir(parents=True)
    (top / "a/b/link").symlink_to(outside)
    (top / "link").symlink_to(outside)
    safefile.remove_tree(top)
    assert not top.exists()
    assert (outside / "kept").exists()
    safefile.remove_tree(tmp_path / "absent")  # nothing there: nothing to do
