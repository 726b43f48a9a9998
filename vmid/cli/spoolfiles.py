"""The spool as `vmid apply` and `vmid delete` see it: files split into their objects, which
file holds which object, and the installing, rewriting and removing of those files.

Each object `vmid apply` installs gets a file of its own, `NAMESPACE_NAME.yaml` (neither a
namespace nor a name can hold `_`), root's and 0644 (the daemon refuses a spool file anyone else
may write), written atomically; an object already in the spool is replaced where it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from vmid.api import names
from vmid.host import safefile

#: As the daemon's spool (vmid/runtime/spool.py) and kubectl's -f DIR: what counts as a manifest.
SUFFIXES = (".yaml", ".yml", ".json")
#: A spool file is root's and writable by root only, as the daemon requires.
MODE = 0o644
#: A line that starts a new YAML document (or ends one): no scalar may hold one at column 0.
_MARKER = re.compile(r"^(---|\.\.\.)(\s|$)")


class Piece(NamedTuple):
    """One object of a file: its text (the YAML document as written), kind and key."""

    text: str
    kind: str
    key: str
    data: Any

    @property
    def name(self) -> str:
        return names.split(self.key)[1]

    @property
    def resource(self) -> str:
        """kubectl's `kind/name`: `virtualmachineinstance/web`."""
        return f"{self.kind.lower()}/{self.name}"


def manifest_name(name: str) -> bool:
    """Whether a directory entry is a manifest: dot files and editor leftovers are not."""
    return not name.startswith(".") and name.endswith(SUFFIXES) and not name.endswith("~")


def split(text: str, namespace: str | None = None) -> list[Piece]:
    """The objects of a file's text, one per YAML document (empty documents dropped); an
    object without a namespace is in `namespace` (None: `default`), which is then written in."""
    pieces = []
    for chunk in _chunks(text):
        data = _load(chunk)
        if not isinstance(data, dict):
            continue
        metadata = data.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(name, str):
            continue
        own = metadata.get("namespace")  # type: ignore[union-attr]
        if namespace is not None and not own:
            chunk, data = _with_namespace(chunk, namespace)
        key = names.key(own if isinstance(own, str) else namespace, name)
        pieces.append(Piece(chunk, str(data.get("kind", "")), key, data))
    return pieces


def _chunks(text: str) -> Iterator[str]:
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line) and lines:
            yield "".join(lines)
            lines = []
        if not line.startswith("..."):
            lines.append(line)
    if lines:
        yield "".join(lines)


def _load(chunk: str) -> Any:
    from ruamel.yaml import YAML  # here: `vmid get` imports this module, not YAML's parser
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(chunk)
    except (YAMLError, ValueError):
        return None


def _with_namespace(chunk: str, namespace: str) -> tuple[str, Any]:
    """The document with `metadata.namespace` written in, comments kept (ruamel round-trip)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML()
    # JSON (flow style) is written back as YAML's block style: a file people read and edit.
    document = yaml.load(chunk) if not chunk.lstrip().startswith("{") else _load(chunk)
    if isinstance(document, CommentedMap):
        document["metadata"].insert(1, "namespace", namespace)
    else:
        document["metadata"] = {**document["metadata"], "namespace": namespace}
    lines: list[str] = []
    yaml.dump(document, _Lines(lines))
    text = "".join(lines)
    return text, _load(text)


class _Lines:
    """A stream ruamel can dump into, collecting the text."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str | bytes) -> None:
        self.lines.append(text.decode() if isinstance(text, bytes) else text)


class Located(NamedTuple):
    """Where the spool holds an object: its file and all the objects of that file."""

    file: Path
    pieces: tuple[Piece, ...]
    piece: Piece


def index(spool: Path) -> dict[tuple[str, str], Located]:
    """Every object in the spool by (kind, key); a key two files claim: the first file's, as
    the daemon decides. Unreadable files are left out (the daemon shows them)."""
    from vmid.api.load import MAX_BYTES  # here: the reading verbs import this module

    found: dict[tuple[str, str], Located] = {}
    try:
        entries = sorted(e for e in os.listdir(spool) if manifest_name(e))
    except FileNotFoundError:
        return found
    for entry in entries:
        try:
            data = safefile.read_regular(spool / entry, MAX_BYTES + 1)
        except OSError:
            continue
        pieces = tuple(split(data.decode(errors="replace")))
        for piece in pieces:
            found.setdefault((piece.kind, piece.key), Located(spool / entry, pieces, piece))
    return found


def own_file(spool: Path, piece: Piece) -> Path:
    """The file `vmid apply` installs a new object in: `NAMESPACE_NAME.yaml`."""
    namespace, name = names.split(piece.key)
    return spool / f"{namespace}_{name}.yaml"


def install(path: Path, text: str) -> None:
    """Write a spool file atomically: a reader (the daemon) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safefile.write_atomically(path, text.encode(), mode=MODE, durable=True)


def remove(located: Located) -> None:
    """Take an object out of the spool: its file goes, or, when that file holds other objects
    too, is rewritten without it (the others' text unchanged)."""
    rest = [p.text for p in located.pieces if p is not located.piece]
    if not rest:
        located.file.unlink()
        return
    install(located.file, "".join(_separated(rest)))


def _separated(texts: list[str]) -> Iterator[str]:
    for number, text in enumerate(texts):
        if number and not _MARKER.match(text):
            yield "---\n"
        yield text if text.endswith("\n") else text + "\n"
