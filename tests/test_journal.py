"""The daemon's records to journald in its native protocol, each with its VMI as a field.

A datagram socket stands in for journald's /run/systemd/journal/socket; under a real journald
(systemd-nspawn) tests/test_nspawn*.py selects one VM's lines with `journalctl VMID_VMI=`.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmid.host import journal
from vmid.host.journal import JournalHandler, for_vmi


def decode(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol (systemd's journald-native.c)."""
    fields = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            data = rest
        else:
            key, (size,) = line, struct.unpack("<Q", rest[:8])
            value, data = rest[8 : 8 + size], rest[9 + size :]
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[socket.socket, logging.Logger]]:
    """A bound datagram socket, and a logger whose records go to it."""
    address = tmp_path / "journal.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(5)
        handler = JournalHandler(address)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger = logging.getLogger("vmid.test_journal")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            yield sock, logger
        finally:
            logger.removeHandler(handler)
            handler.close()


def received(sock: socket.socket) -> dict[str, str]:
    return decode(sock.recv(1 << 20))


def test_a_vmis_record_carries_it_as_a_field(
    journald: tuple[socket.socket, logging.Logger],
) -> None:
    sock, logger = journald
    for_vmi(logger, "default/x").info("running")
    fields = received(sock)
    assert fields["VMID_VMI"] == "default/x"
    assert fields["MESSAGE"] == "vmid.test_journal.default/x: running"
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "vmid"
    assert fields["CODE_FUNC"] == "test_a_vmis_record_carries_it_as_a_field"


def test_supervisor_lines_name_their_vmi_first(
    journald: tuple[socket.socket, logging.Logger],
) -> None:
    sock, logger = journald
    logger.warning("%s: its manifest was removed while vmid was not running", "prod/db.main")
    fields = received(sock)
    assert fields["VMID_VMI"] == "prod/db.main"
    assert fields["PRIORITY"] == "4"
    # A path is not a VMI; nor is a line about none.
    logger.error("%s: cannot write this status: %s", "/run/vmid/x/status.json", "ENOSPC")
    assert "VMID_VMI" not in received(sock)
    logger.info("vmid ready: %s", "1 running")
    assert "VMID_VMI" not in received(sock)


def test_a_traceback_is_one_record(journald: tuple[socket.socket, logging.Logger]) -> None:
    sock, logger = journald
    try:
        raise ValueError("boom")
    except ValueError:
        for_vmi(logger, "default/x").exception("internal error")
    fields = received(sock)
    assert fields["MESSAGE"].startswith("vmid.test_journal.default/x: internal error\nTraceback")
    assert fields["MESSAGE"].endswith("ValueError: boom")
    assert fields["PRIORITY"] == "3"


def test_a_record_larger_than_a_datagram_goes_in_a_sealed_memfd(
    journald: tuple[socket.socket, logging.Logger],
) -> None:
    sock, logger = journald
    big = "x" * (1 << 20)
    for_vmi(logger, "default/x").info("%s", big)
    data, ancillary, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(4))
    assert data == b""
    ((level, kind, payload),) = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fd = array.array("i", payload[:4])[0]
    try:
        fields = decode(os.pread(fd, os.fstat(fd).st_size, 0))  # as journald maps it
    finally:
        os.close(fd)
    assert fields["MESSAGE"] == f"vmid.test_journal.default/x: {big}"
    assert fields["VMID_VMI"] == "default/x"


def test_journald_gone_the_line_goes_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    handler = JournalHandler(tmp_path / "nothing.sock")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger("vmid.gone")  # not registered: nothing else sees its records
    logger.addHandler(handler)
    try:
        logger.error("still said")
    finally:
        handler.close()
    assert capfd.readouterr().err == "<3>still said\n"


def test_stderr_is_the_journal_only_when_journal_stream_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat = os.fstat(sys.stderr.fileno())
    ours = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", tmp_path / "socket")
    assert not journal.stderr_is_journal(ours)  # no journald socket
    (tmp_path / "socket").touch()
    assert journal.stderr_is_journal(ours)
    # Inherited from a parent whose stderr was the journal: not this process's stream.
    assert not journal.stderr_is_journal({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"})
    assert not journal.stderr_is_journal({})
