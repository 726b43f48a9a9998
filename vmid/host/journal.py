"""The daemon's log records to journald in its native protocol, each with its VMI as a field.

Under systemd (JOURNAL_STREAM names stderr) every record is one datagram on journald's socket:
MESSAGE, PRIORITY, the code location and, for a record about one VMI, `VMID_VMI=namespace/name`,
so `journalctl -u vmid VMID_VMI=default/web` selects one VM's lines (systemd.journal-fields(7)).
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

#: Where journald takes native messages (sd_journal_sendv(3)).
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "vmid"
#: The structured field naming the VMI a record is about.
VMI_FIELD = "VMID_VMI"
#: syslog priorities, as sd-daemon(3) numbers them.
PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
#: A VMI key, `namespace/name` (a DNS label, a DNS subdomain: never a path).
_KEY = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def stderr_is_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether stderr is journald's stream for this service (JOURNAL_STREAM is its `dev:inode`)
    and journald's native socket is there."""
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    ours = environ.get("JOURNAL_STREAM") == f"{stat.st_dev}:{stat.st_ino}"
    return ours and JOURNAL_SOCKET.exists()


def vmi_of(record: logging.LogRecord) -> str | None:
    """The VMI a record is about: the `vmi` a VMI's logger adds (`for_vmi`), else the key a
    `"%s: ..."` line names first, as the supervisor's lines do."""
    vmi = getattr(record, "vmi", None)
    if isinstance(vmi, str):
        return vmi
    args = record.args
    if isinstance(record.msg, str) and record.msg.startswith("%s: ") and isinstance(args, tuple):
        first = args[0] if args else None
        if isinstance(first, str) and _KEY.fullmatch(first):
            return first
    return None


class VmiLog(logging.LoggerAdapter[logging.Logger]):
    """A VMI's logger: each of its records carries `vmi`, whatever else the call passes."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **(self.extra or {})}
        return msg, kwargs


def for_vmi(parent: logging.Logger, key: str) -> VmiLog:
    """The logger of VMI `key` below `parent` (its name ends with the key, as before)."""
    return VmiLog(parent.getChild(key), {"vmi": key})


def encode(fields: Mapping[str, str]) -> bytes:
    """journald's native format: `KEY=value\\n`, or, for a value with newlines, the key, a
    newline, its length as 64-bit little-endian and the value."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode(errors="replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald; a record it cannot send goes to stderr instead."""

    def __init__(self, address: Path = JOURNAL_SOCKET, identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self._address = str(address)
        self._identifier = identifier
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __repr__(self) -> str:
        return f"<JournalHandler {self._address}>"

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        """What journald gets for `record`."""
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(PRIORITY.get(record.levelname, 6)),
            "SYSLOG_IDENTIFIER": self._identifier,
            "CODE_FILE": record.pathname or "",
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName or "",
            "LOGGER": record.name,
        }
        vmi = vmi_of(record)
        if vmi is not None:
            fields[VMI_FIELD] = vmi
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = self.fields(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(encode(fields))
        except OSError:
            # journald gone (restarting): the line still reaches stderr, which is journald's
            # stream or the terminal; never an exception into the daemon.
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"<{fields['PRIORITY']}>{fields['MESSAGE']}\n")

    def close(self) -> None:
        self._socket.close()
        super().close()

    def _send(self, data: bytes) -> None:
        try:
            self._socket.sendto(data, self._address)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_sealed(data)

    def _send_sealed(self, data: bytes) -> None:
        """A record larger than a datagram: in a sealed memfd, as sd_journal_sendv does."""
        fd = os.memfd_create("journal-message", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            self._socket.sendmsg([], rights, 0, self._address)
        finally:
            os.close(fd)
