"""Label selectors as kubectl's `-l`: `app=web`, `tier!=db`, `env in (a,b)`, `env notin (c)`,
`app` (has the label), `!app` (has not), joined by commas (all must hold)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from vmid.errors import SelectorError

Requirement = Callable[[Mapping[str, str]], bool]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQUAL = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def parse(text: str) -> Requirement:
    """A function telling whether a labels map matches `text`; SelectorError if it is bad."""
    requirements = [_requirement(part) for part in _parts(text)]
    return lambda labels: all(r(labels) for r in requirements)


def _parts(text: str) -> list[str]:
    """Split at commas outside parentheses (`env in (a,b),app`)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current] if text.strip() else []


def _requirement(part: str) -> Requirement:
    if match := _SET.match(part):
        key, operator, values = match.groups()
        members = {v.strip() for v in values.split(",") if v.strip()}
        if operator == "in":
            return lambda labels: labels.get(key) in members
        return lambda labels: labels.get(key) not in members
    if match := _EQUAL.match(part):
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(part):
        negated, key = match.groups()
        return lambda labels: (key in labels) != bool(negated)
    raise SelectorError(
        f"unable to parse requirement: {part.strip()!r} (e.g. app=web, env in (a,b))"
    )
