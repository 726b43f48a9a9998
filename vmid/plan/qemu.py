"""QEMU's option syntax: `driver,key=value,...` with every value escaped."""

from __future__ import annotations

import json
from collections.abc import Mapping

Value = str | int | bool | None


def escape(value: str) -> str:
    """Double the commas: QEMU's only escape, so no value can start another key or option."""
    return value.replace(",", ",,")


def options(head: str | None, pairs: Mapping[str, Value]) -> str:
    """`options("virtio-blk-pci", {"drive": "d0"})` -> `virtio-blk-pci,drive=d0`.

    Keys are QEMU's property names as written in code, never from a manifest. None values are
    left out; booleans become on/off.
    """
    parts = [escape(head)] if head is not None else []
    for key, value in pairs.items():
        if value is None:
            continue
        text = ("on" if value else "off") if isinstance(value, bool) else escape(str(value))
        parts.append(f"{key}={text}")
    return ",".join(parts)


def blockdev(node: Mapping[str, object]) -> str:
    """A -blockdev value in JSON, as libvirt writes it: the syntax that can say `null`."""
    return json.dumps(node, separators=(",", ":"))
