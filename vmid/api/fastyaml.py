"""Manifest text -> plain data through ruamel.yaml's C parser (ruamel.yaml.clib), 7x faster
than the round-trip loader; None for anything the two might read differently, or on any doubt.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.events import DocumentStartEvent, NodeEvent, ScalarEvent
from ruamel.yaml.resolver import VersionedResolver

#: The C parser composes nodes recursively in C, without Python's recursion limit: a deeply
#: nested text crashes the process (100 000 levels in 200 KiB), so only texts whose nesting
#: is bounded below this reach it (the round-trip loader refuses more than 64 levels anyway).
MAX_NESTING = 200
#: What may start nested block nodes on one line: indentation and the indicators `- ? :`.
_LEADING = re.compile(r"^[ ?:-]*", re.MULTILINE)
#: Text the two scanners read differently: libyaml takes tabs as blanks inside plain scalars
#: and NEL, LS, PS as line breaks (YAML 1.1), a BOM past the start; ruamel refuses a comment
#: right after a block scalar's header ("|#") and, after one, a first empty line of spaces
#: followed by a more indented one; libyaml takes a document end marker ("...") after another,
#: and ends an anchor's name at ":", "?", "%", "@" or "`", where ruamel goes on.
_SCANNED_OTHERWISE = re.compile(
    r"[\t\x85\u2028\u2029\ufeff]"
    r"|[&*][0-9A-Za-z_-]+[?:%@`]"
    r"|[|>][-+0-9]*#"
    r"|[|>][-+0-9]* *(?:#[^\r\n]*)?(?:\r\n?|\n) +(?:\r\n?|\n)"
    r"|^\.\.\."
    # A quoted key or an alias, then ":" with no space after it (`["name":root]`, `[*a :b]`):
    # libyaml takes a pair, ruamel refuses it in a sequence.
    r"|[\"'] *:(?=[^\s,\[\]{}])"
    r"|\*[0-9A-Za-z_-]+ +:(?=[^\s,\[\]{}])",
    re.MULTILINE,
)
#: libyaml refuses a colon inside a plain scalar in braces or brackets (`{image: cirros:1}`),
#: which YAML 1.2 allows: no use trying, unless a block scalar may hold that as text.
_COLON_IN_FLOW = re.compile(r"""[\[{](?:[^\n'"#:\[{]|:(?=[\s,\]}]))*:(?=[^\s,\[\]{}'"])""")
_BLOCK_SCALAR = re.compile(r"[|>][-+0-9]* *(?:#[^\r\n]*)?\r?$", re.MULTILINE)
_PLAIN = (str, int, float, bool, type(None))


@functools.cache
def _loader() -> Any:
    """ruamel's safe loader on the C parser (YAML(typ="safe") builds the same class on every
    call), or None when ruamel.yaml.clib is not installed."""
    try:
        from _ruamel_yaml import CParser
    except ImportError:
        return None

    class Loader(CParser, SafeConstructor, VersionedResolver):  # type: ignore[misc]
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            self._parser = self._composer = self
            SafeConstructor.__init__(self, loader=self)
            self.allow_duplicate_keys = False
            VersionedResolver.__init__(self, loadumper=self)

    return Loader


def available() -> bool:
    """Whether ruamel.yaml.clib's C parser can be used here."""
    return _loader() is not None


def load(text: str, max_nodes: int, max_depth: int) -> list[dict[str, Any]] | None:
    """The non-empty documents of `text` as plain dicts, lists and scalars, as the round-trip
    loader would give them; None when that is not certain (the caller then uses it), or when
    a document is not a mapping (no manifest: the round-trip loader says what is wrong)."""
    loader_class = _loader()
    if loader_class is None:
        return None
    try:
        if _unusual(text):
            return None
        loader = loader_class(text)
        try:
            documents = []
            while loader.check_data():
                document = loader.get_data()
                if type(document) is dict:
                    documents.append(_copy(document, max_nodes, max_depth))
                elif document is not None:
                    return None
            return documents
        finally:
            loader.dispose()
    # Whatever goes wrong (a YAML error, an alias bomb, a type the round-trip loader would keep
    # as something else), the round-trip loader gives the answer and says where.
    except Exception:
        return None


def _unusual(text: str) -> bool:
    """Whether the two loaders may read `text` differently, or the C parser may crash on it."""
    if _SCANNED_OTHERWISE.search(text):
        return True
    nesting = text.count("[") + text.count("{") + max(map(len, _LEADING.findall(text)))
    if nesting > MAX_NESTING:
        return True
    if _COLON_IN_FLOW.search(text) and not _BLOCK_SCALAR.search(text):
        return True
    # Tags need a "!", directives a "%", merge keys "<<": cheap to rule out, otherwise a look at
    # the events (a "#!/bin/sh" in cloud-init data is common).
    if "!" in text or "%" in text or "<<" in text:
        return _has_unusual_events(text)
    return False


def _has_unusual_events(text: str) -> bool:
    """Explicit tags (the round-trip loader keeps even `!!str x` as a tagged scalar), %YAML and
    %TAG directives (the C loader ignores `%YAML 1.1`), merge keys (merged in another order)."""
    from _ruamel_yaml import CParser

    parser = CParser(text)
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, NodeEvent) and getattr(event, "tag", None) is not None:
                return True
            if isinstance(event, DocumentStartEvent) and (event.version or event.tags):
                return True
            if isinstance(event, ScalarEvent) and event.value == "<<":
                return True
        return False
    finally:
        parser.dispose()


class _Unusual(Exception):
    """A value the fast path does not hand on: the round-trip loader decides."""


def _copy(document: Any, max_nodes: int, max_depth: int) -> Any:
    """A copy of the safe loader's `document` of exactly dict, list and plain scalars, within
    the round-trip path's budget: the safe loader shares aliased values (and builds recursive
    ones), the copy expands them as the round-trip path does and stops where it stops."""
    budget = max_nodes

    def copy(value: Any, depth: int) -> Any:
        nonlocal budget
        budget -= 1
        if budget < 0 or depth > max_depth:
            raise _Unusual
        kind = type(value)
        if kind is dict:
            if not all(type(k) is str for k in value):
                raise _Unusual
            return {k: copy(v, depth + 1) for k, v in value.items()}
        if kind is list:
            return [copy(v, depth + 1) for v in value]
        if kind not in _PLAIN:
            raise _Unusual
        return value

    return copy(document, 0)
