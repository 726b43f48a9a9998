"""kubectl's JSONPath templates (`-o jsonpath=...`, `-o custom-columns=...`): text and `{...}`
expressions: `.field`, `['field']`, `[N]`, `[*]`, `[A:B]`, `[?(@.f=="v")]`, `{range ...}{end}`,
`{"\\n"}`, `{@}`. A missing field prints nothing, as kubectl's default
(--allow-missing-template-keys)."""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from vmid.errors import JSONPathError

Step = Callable[[Any], Iterator[Any]]


class _Expr(NamedTuple):
    steps: tuple[Step, ...]


class _Range(NamedTuple):
    steps: tuple[Step, ...]
    body: tuple[_Node, ...]


_Node = str | _Expr | _Range


class Template:
    """A parsed template; `render(data)` is its text for `data`."""

    def __init__(self, text: str) -> None:
        self._nodes = _parse(text)

    def __repr__(self) -> str:
        return f"<Template nodes={len(self._nodes)}>"

    def render(self, data: Any) -> str:
        return "".join(_render(self._nodes, data))

    def values(self, data: Any) -> list[Any]:
        """The values its expressions select in `data` (for custom columns)."""
        found = []
        for node in self._nodes:
            if isinstance(node, _Expr):
                found += list(_select(node.steps, data))
        return found


def _render(nodes: tuple[_Node, ...], data: Any) -> Iterator[str]:
    for node in nodes:
        if isinstance(node, str):
            yield node
        elif isinstance(node, _Expr):
            yield " ".join(text(v) for v in _select(node.steps, data))
        else:
            for item in _select(node.steps, data):
                yield from _render(node.body, item)


def text(value: Any) -> str:
    """A value as kubectl prints it: strings bare, maps and lists as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _select(steps: tuple[Step, ...], data: Any) -> Iterator[Any]:
    values = [data]
    for step in steps:
        values = [found for value in values for found in step(value)]
    yield from values


_BRACES = re.compile(r"\{((?:[^{}\"']|\"(?:\\.|[^\"\\])*\"|'[^']*')*)\}")


def _parse(template: str) -> tuple[_Node, ...]:
    stack: list[tuple[tuple[Step, ...], list[_Node]]] = [((), [])]
    position = 0
    for match in _BRACES.finditer(template):
        if match.start() > position:
            stack[-1][1].append(template[position : match.start()])
        position = match.end()
        inner = match.group(1).strip()
        if inner == "end":
            if len(stack) == 1:
                raise JSONPathError(f"{template!r}: {{end}} without {{range}}")
            steps, body = stack.pop()
            stack[-1][1].append(_Range(steps, tuple(body)))
        elif inner.startswith("range "):
            stack.append((_steps(inner.removeprefix("range ").strip()), []))
        elif inner[:1] in ('"', "'"):
            stack[-1][1].append(_literal(inner))
        else:
            stack[-1][1].append(_Expr(_steps(inner)))
    if template[position:]:
        stack[-1][1].append(template[position:])
    if len(stack) != 1:
        raise JSONPathError(f"{template!r}: {{range}} without {{end}}")
    return tuple(stack[0][1])


def _literal(inner: str) -> str:
    try:
        value = json.loads(inner, strict=False) if inner.startswith('"') else inner[1:-1]
    except ValueError as exc:
        raise JSONPathError(f"bad string {inner}: {exc}") from exc
    return str(value)


_NAME = re.compile(r"((?:\\.|[^.\[\\])+)")


def _steps(path: str) -> tuple[Step, ...]:
    """`.a.b[*]['c'][0][?(@.x=="y")]` (a leading `$` or `@` is the current object)."""
    rest = path.removeprefix("$").removeprefix("@")
    steps: list[Step] = []
    while rest:
        if rest.startswith(".."):
            raise JSONPathError(f"{path!r}: recursive descent (..) is not supported")
        if rest.startswith("."):
            match = _NAME.match(rest, 1)
            if match is None:
                rest = rest[1:]
                continue
            steps.append(_field(match.group(1).replace("\\.", ".")))
            rest = rest[match.end() :]
        elif rest.startswith("["):
            end = _closing(path, rest)
            steps.append(_bracket(path, rest[1:end]))
            rest = rest[end + 1 :]
        else:
            raise JSONPathError(f"{path!r}: unexpected {rest[0]!r} at {rest!r}")
    return tuple(steps)


def _closing(path: str, rest: str) -> int:
    depth = 0
    for index, char in enumerate(rest):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth == 0:
            return index
    raise JSONPathError(f"{path!r}: unclosed [")


def _field(name: str) -> Step:
    def step(value: Any) -> Iterator[Any]:
        if isinstance(value, dict) and name in value:
            yield value[name]

    return step


def _bracket(path: str, inner: str) -> Step:
    inner = inner.strip()
    if inner == "*":
        return _every
    if inner[:1] in ('"', "'"):
        return _field(_literal(inner))
    if inner.startswith("?(") and inner.endswith(")"):
        return _filter(path, inner[2:-1])
    try:
        if ":" in inner:
            start, _, stop = inner.partition(":")
            return _slice(slice(int(start) if start else None, int(stop) if stop else None))
        return _index(int(inner))
    except ValueError:
        raise JSONPathError(f"{path!r}: cannot read [{inner}]") from None


def _every(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        yield from value
    elif isinstance(value, dict):
        yield from value.values()


def _index(number: int) -> Step:
    def step(value: Any) -> Iterator[Any]:
        if isinstance(value, list) and -len(value) <= number < len(value):
            yield value[number]

    return step


def _slice(part: slice) -> Step:
    def step(value: Any) -> Iterator[Any]:
        if isinstance(value, list):
            yield from value[part]

    return step


_COMPARE = re.compile(r"^(@[^=!<>]*?)\s*(==|!=|<=|>=|<|>)\s*(.+)$")
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


def _filter(path: str, condition: str) -> Step:
    """`[?(@.type=="Ready")]`, `[?(@.size>3)]`, `[?(@.name)]` (has it)."""
    match = _COMPARE.match(condition.strip())
    if match is None:
        steps = _steps(condition.strip())
        return lambda value: (i for i in _items(value) if any(True for _ in _select(steps, i)))
    left, sign, right = match.groups()
    steps, compare = _steps(left.strip()), _OPERATORS[sign]
    try:
        wanted = json.loads(right) if right[:1] != "'" else right.strip()[1:-1]
    except ValueError:
        raise JSONPathError(f"{path!r}: cannot read the value {right!r}") from None

    def holds(item: Any) -> bool:
        for found in _select(steps, item):
            try:
                if compare(found, wanted):
                    return True
            except TypeError:
                continue
        return False

    return lambda value: (i for i in _items(value) if holds(i))


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def columns(spec: str, items: list[Any]) -> list[list[str]]:
    """kubectl's custom columns over objects' data: `HEADER:PATH,...`, a header row first, a
    cell `<none>` where PATH selects nothing."""
    parsed = []
    for part in spec.split(","):
        header, sep, path = part.partition(":")
        if not sep or not header or not path:
            raise JSONPathError(f"custom-columns: {part!r} is not HEADER:PATH")
        parsed.append((header, Template(path if path.startswith("{") else "{" + path + "}")))
    rows = [[header for header, _ in parsed]]
    for item in items:
        cells = [[text(v) for v in template.values(item)] for _, template in parsed]
        rows.append([",".join(c) if c else "<none>" for c in cells])
    return rows
