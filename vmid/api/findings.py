"""Field paths and the unlocated findings that `load`, `validate` and `plan` report."""

from __future__ import annotations

import re

import attrs

#: A path into a manifest: map keys and list indexes, from the document's root.
FieldPath = tuple[str | int, ...]


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def render_path(path: FieldPath) -> str:
    """`("spec", "volumes", 0, "name")` -> `spec.volumes[0].name`, as kubectl prints paths.

    Keys that are not plain words (`kubevirt.io/x`) are bracketed, as in `labels[kubevirt.io/x]`.
    """
    text = ""
    for part in path:
        if isinstance(part, int) or not _PLAIN_KEY.fullmatch(part):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@attrs.frozen
class Finding:
    """A problem at a field path, before it is located at a line and column of a file."""

    path: FieldPath
    message: str


def quote(value: object) -> str:
    """A value as Kubernetes messages show it: strings in double quotes, the rest as written."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
