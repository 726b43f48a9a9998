"""A reader for QEMU's `head,key=value,...` syntax, as QEMU's own parser splits it (tests only).

A value that is a JSON object (as -blockdev takes it) is read into the same flat shape:
nested keys dotted, booleans on/off, null as "null".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any


def split(text: str) -> list[str]:
    """Split on single commas; `,,` is a literal comma."""
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    return parts


def parse(text: str) -> tuple[str | None, dict[str, str]]:
    """(head or None, {key: value}) for an option string."""
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            return None, _flat(json.loads(text))
    parts = split(text)
    head = None
    # As QEMU's QemuOpts: the first item is the implied value (a type, a backend) when the
    # raw text reaches a comma (even of an escaped ",,") or its end before any "=".
    cut = min((i for i in (text.find(","), text.find("=")) if i >= 0), default=len(text))
    if parts and (cut == len(text) or text[cut] == ","):
        head = parts.pop(0)
    pairs = dict(part.split("=", 1) for part in parts)
    return head, pairs


def unparse(head: str | None, pairs: dict[str, str]) -> str:
    """The inverse of `parse`."""
    items = [] if head is None else [head.replace(",", ",,")]
    items += [f"{k}={v.replace(',', ',,')}" for k, v in pairs.items()]
    return ",".join(items)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    pairs: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            pairs.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, bool):
            pairs[prefix + key] = "on" if value else "off"
        else:
            pairs[prefix + key] = "null" if value is None else str(value)
    return pairs


def fdsets(argv: Sequence[str]) -> dict[str, str]:
    """`/dev/fdset/N` -> the path vmid passes in set N (its -add-fd `opaque`)."""
    sets = [parse(argv[i + 1])[1] for i, arg in enumerate(argv) if arg == "-add-fd"]
    return {f"/dev/fdset/{pairs['set']}": pairs["opaque"] for pairs in sets}
