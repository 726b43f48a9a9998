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
    """How long ago `stamp` was, as kubectl's AGE column says it (`95s`, `3m20s`, `2d5h`)."""
    if not stamp:
        return "<unknown>"
    then = parse_time(stamp)
    return human_duration(int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))


def human_duration(seconds: int) -> str:
    """kubectl's duration.HumanDuration: two units while the first is small, then one."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return _two(minutes, "m", seconds % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return _two(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _two(days, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return _two(days // 365, "y", days % 365, "d")
    return f"{days // 365}y"


def _two(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit}{small}{small_unit}" if small else f"{big}{big_unit}"


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
