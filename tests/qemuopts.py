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


def parse_cpu(text: str) -> tuple[str, dict[str, str]]:
    """(model, {feature: value}) for a -cpu value, split as QEMU 7.2 really splits it.

    The model ends at the first comma (`g_strsplit(cpu_option, ",", 2)`); the features are
    `strtok`ed on every comma (so `,,` is an empty item, skipped, never an escape) and each ends
    its name at its first '=' (x86_cpu_parse_featurestr); a bare `name`, `+name` or `-name`
    is a flag turned on or off.
    """
    model, _, rest = text.partition(",")
    features: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        if "=" in item:
            name, value = item.split("=", 1)
        elif item[0] in "+-":
            name, value = item[1:], "on" if item[0] == "+" else "off"
        else:
            name, value = item, "on"
        features[name] = value
    return model, features


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
