"""Plain YAML data -> the frozen wire model, with strict types and every problem reported.

The cattrs converter here is strict where Kubernetes' structural schema is: no unknown keys, no
string where an integer belongs, no map where a list belongs. Keys a class lists as IGNORED are
dropped; keys it lists as UNSUPPORTED are refused with vmid's reason.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from vmid.api import types as t
from vmid.api.findings import FieldPath, Finding, quote
from vmid.api.quantity import Quantity, QuantityError

T = TypeVar("T")
INT64_MAX = 2**63 - 1


class InvalidValue(ValueError):
    """A value of the wrong type or outside its closed set; the message is shown as is."""


class FieldProblem(ValueError):
    """A problem with one key of a mapping, reported at that key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _mismatch(value: object, expected: str) -> InvalidValue:
    shown = quote(value) if isinstance(value, str | int | float) else _type_name(value)
    return InvalidValue(f"Invalid value: {shown}: must be of type {expected}")


def _structure_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise _mismatch(value, "string")
    return value


def _structure_int(value: object, _: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _mismatch(value, "integer")
    if abs(value) > INT64_MAX:
        raise InvalidValue(f"Invalid value: {value}: must fit in a 64-bit integer")
    return value


def _structure_bool(value: object, _: object) -> bool:
    if not isinstance(value, bool):
        raise _mismatch(value, "boolean")
    return value


def _structure_quantity(value: object, _: object) -> Quantity:
    try:
        return Quantity.parse(value)
    except QuantityError as exc:
        raise InvalidValue(f"Invalid value: {quote(value)}: {exc}") from None


def _structure_enum(value: object, cls: type[t.Enum]) -> t.Enum | None:
    if value == "" and cls in t.EMPTY_MEANS_UNSET:
        return None
    if isinstance(value, str) and value in cls.__members__.values():
        return cls(value)
    allowed = ", ".join(quote(m.value) for m in sorted(cls, key=lambda m: m.value))
    raise InvalidValue(f"Unsupported value: {quote(value)}: supported values: {allowed}")


def _is_tuple(cls: Any) -> bool:
    return typing.get_origin(cls) is tuple


def _tuple_hook(
    converter: cattrs.Converter, cls: Any
) -> Callable[[object, object], tuple[Any, ...]]:
    (item_type, _) = typing.get_args(cls)
    item_structure = converter.get_structure_hook(item_type)

    def structure(value: object, _: object) -> tuple[Any, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise _mismatch(value, "array")
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(item_structure(item, item_type))
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote("item", index, item_type),
                ]
                errors.append(exc)
        if errors:
            raise IterableValidationError("invalid items", errors, cls)
        return tuple(items)

    return structure


def _is_dict(cls: Any) -> bool:
    return typing.get_origin(cls) is dict


def _dict_hook(converter: cattrs.Converter, cls: Any) -> Callable[[object, object], dict[str, Any]]:
    (_, value_type) = typing.get_args(cls)
    value_structure = converter.get_structure_hook(value_type)

    def structure(value: object, _: object) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _mismatch(value, "object")
        result, errors = {}, []
        for key, item in value.items():
            try:
                result[str(key)] = value_structure(item, value_type)
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    AttributeValidationNote("entry", str(key), value_type),
                ]
                errors.append(exc)
        if errors:
            raise IterableValidationError("invalid entries", errors, cls)
        return result

    return structure


def _is_model(cls: Any) -> bool:
    return attrs.has(cls)


def _model_hook(converter: cattrs.Converter, cls: Any) -> Callable[[object, object], Any]:
    inner = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)
    ignored: frozenset[str] = getattr(cls, "IGNORED", frozenset())
    unsupported: Mapping[str, str] = getattr(cls, "UNSUPPORTED", {})
    known = [a.name for a in attrs.fields(cls)]

    def structure(value: object, _: object) -> Any:
        if not isinstance(value, Mapping):
            raise _mismatch(value, "object")
        errors: list[Exception] = [
            FieldProblem(str(k), f"{k} is not supported by vmid: {unsupported[k]}")
            for k in value
            if k in unsupported
        ]
        extra = [
            str(k) for k in value if k not in known and k not in ignored and k not in unsupported
        ]
        errors += [FieldProblem(k, _unknown_field(k, known)) for k in extra]
        data = {k: v for k, v in value.items() if k in known}
        try:
            result = inner(data, cls)
        except ClassValidationError as exc:
            errors += exc.exceptions
        if errors:
            raise ClassValidationError(f"invalid {cls.__name__}", errors, cls)
        return result

    return structure


def _unknown_field(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {quote(close[0])}?)" if close else ""
    return f"unknown field {quote(key)}{hint}"


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    # cattrs would otherwise call str(), int() and bool() on anything: "5" would be an integer.
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(Quantity, _structure_quantity)
    # vmid's enums subclass str; the dispatch picks the most specific registered class.
    converter.register_structure_hook(t.Enum, _structure_enum)
    converter.register_structure_hook_factory(_is_tuple, lambda c: _tuple_hook(converter, c))
    converter.register_structure_hook_factory(_is_dict, lambda c: _dict_hook(converter, c))
    converter.register_structure_hook_factory(_is_model, lambda c: _model_hook(converter, c))
    return converter


CONVERTER = _converter()


def structure(data: object, cls: type[T], root: FieldPath = ()) -> tuple[T | None, list[Finding]]:
    """Build `cls` from plain data; on failure return None and every finding, in file order."""
    try:
        return CONVERTER.structure(data, cls), []
    except Exception as exc:
        return None, list(_findings(exc, root))


def _findings(exc: BaseException, path: FieldPath) -> Iterator[Finding]:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            yield from _findings(sub, path + _step(sub))
    elif isinstance(exc, FieldProblem):
        yield Finding((*path, exc.key), str(exc))
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield Finding((*path, key), f"unknown field {quote(key)}")
    elif isinstance(exc, KeyError):
        yield Finding(path, "Required value")
    elif isinstance(exc, InvalidValue):
        yield Finding(path, str(exc))
    else:
        yield Finding(path, f"Invalid value: {exc}")


def _step(exc: BaseException) -> FieldPath:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return (note.name,)
        if isinstance(note, IterableValidationNote):
            return (note.index,)
    return ()


__all__ = ["CONVERTER", "InvalidValue", "structure"]
