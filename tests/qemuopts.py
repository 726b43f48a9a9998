"""A reader for QEMU's `head,key=value,...` syntax, as QEMU's own parser splits it (tests only)."""

from __future__ import annotations


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
    parts = split(text)
    head = None
    if parts and "=" not in parts[0]:
        head = parts.pop(0)
    pairs = dict(part.split("=", 1) for part in parts)
    return head, pairs


def unparse(head: str | None, pairs: dict[str, str]) -> str:
    """The inverse of `parse`."""
    items = [] if head is None else [head.replace(",", ",,")]
    items += [f"{k}={v.replace(',', ',,')}" for k, v in pairs.items()]
    return ",".join(items)
