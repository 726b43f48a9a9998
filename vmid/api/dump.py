"""The wire model back to plain data as KubeVirt prints objects: unset, empty fields left out."""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn

from vmid.api.quantity import Quantity
from vmid.api.types import VirtualMachineInstance


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_unstructure_hook(Quantity, str)
    converter.register_unstructure_hook_factory(
        lambda cls: attrs.has(cls) and cls is not Quantity,
        lambda cls: make_dict_unstructure_fn(cls, converter, _cattrs_omit_if_default=True),
    )
    return converter


_CONVERTER = _converter()


def to_data(vmi: VirtualMachineInstance) -> dict[str, Any]:
    """`apiVersion`, `kind`, `metadata` and `spec` as plain JSON-ready data."""
    data: dict[str, Any] = _CONVERTER.unstructure(vmi)
    return data


def object_data(obj: object) -> dict[str, Any]:
    """Any object of the wire model (a VirtualMachine) as plain JSON-ready data."""
    data: dict[str, Any] = _CONVERTER.unstructure(obj)
    return data
