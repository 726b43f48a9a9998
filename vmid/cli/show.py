"""How the CLI shows things: kubectl's aligned columns and ages, JSON or YAML documents, a VMI's
name and phase as `get` prints them, and text from guests with its control characters escaped."""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

from vmid.api.vmistatus import FILE_ANNOTATION, VMIObject


def print_data(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    from ruamel.yaml import YAML  # here: only `-o yaml` pays for ruamel's import

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(data, sys.stdout)


def aligned(rows: list[list[str]]) -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def parse_time(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    then = parse_time(stamp)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


#: What a guest's output may not send to the admin's terminal: control characters (C0, DEL,
#: C1) but newline, tab and the carriage return of a CRLF, and bytes that are not UTF-8.
UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\udc80-\udcff]|\r(?!\n)")


def printable(text: str) -> str:
    """One line, control characters escaped: a message quotes QEMU, which quotes files."""
    return UNSAFE.sub(escape_char, text.replace("\n", " "))


def escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00 if code >= 0xDC80 else code:02x}"


def phase(obj: VMIObject) -> str:
    """The phase, or `Terminating` while vmid stops its QEMU (as kubectl shows a pod)."""
    current = obj.status.phase
    ending = obj.terminating and (current is None or not current.final)
    return "Terminating" if ending else str(current or "")


def name(obj: VMIObject) -> str:
    """The VMI's name; `<FILE>` for a spool file whose problems no VMI shows (it has no name
    that can be trusted)."""
    if obj.metadata.name:
        return obj.metadata.name
    file = obj.metadata.annotations.get(FILE_ANNOTATION, "?")
    return f"<{Path(file).name}>"
