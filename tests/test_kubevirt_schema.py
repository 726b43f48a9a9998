"""vmid against KubeVirt itself: its OpenAPI schema and its example manifests (../shared)."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import EXAMPLES, SHARED
from vmid.api import types as t
from vmid.config import Accelerator, Config, Paths, PodNetwork, PortRange
from vmid.manifests import plan_file

SWAGGER = SHARED / "kubevirt-api" / "swagger.json"
ROOT_DEFINITION = "v1.VirtualMachineInstance"


def _nested_model(annotation: Any) -> type | None:
    """The attrs class inside `X | None` or `tuple[X, ...]`, if any."""
    if attrs.has(annotation) and annotation.__module__ == t.__name__:
        return typing.cast(type, annotation)
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _ref(prop: dict[str, Any]) -> str | None:
    ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _walk() -> list[tuple[type, str, dict[str, Any]]]:
    """(class, swagger definition name, definition) for every modelled class, from the root."""
    definitions = json.loads(SWAGGER.read_text())["definitions"]
    seen: dict[type, str] = {}
    queue: list[tuple[type, str]] = [(t.VirtualMachineInstance, ROOT_DEFINITION)]
    found = []
    while queue:
        cls, name = queue.pop()
        if cls in seen:
            continue
        seen[cls] = name
        definition = definitions[name]
        found.append((cls, name, definition))
        hints = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            nested = _nested_model(hints[field.name])
            prop = definition.get("properties", {}).get(field.name, {})
            if nested is not None and _ref(prop):
                queue.append((nested, typing.cast(str, _ref(prop))))
    return found


@pytest.fixture(scope="module")
def schema() -> list[tuple[type, str, dict[str, Any]]]:
    if not SWAGGER.exists():
        pytest.skip(f"{SWAGGER} is not there (../shared is missing)")
    return _walk()


def test_every_kubevirt_field_is_implemented_ignored_or_refused(
    schema: list[tuple[type, str, dict[str, Any]]],
) -> None:
    unaccounted = []
    for cls, name, definition in schema:
        handled = {f.name for f in attrs.fields(cls)}
        handled |= getattr(cls, "IGNORED", frozenset()) | set(getattr(cls, "UNSUPPORTED", {}))
        unaccounted += [f"{name}.{p}" for p in definition.get("properties", {}) if p not in handled]
    assert unaccounted == []


def test_vmid_invents_no_field(schema: list[tuple[type, str, dict[str, Any]]]) -> None:
    invented = []
    for cls, name, definition in schema:
        properties = definition.get("properties", {})
        invented += [f"{name}.{f.name}" for f in attrs.fields(cls) if f.name not in properties]
    assert invented == []


def test_the_schema_walk_reaches_the_whole_model(
    schema: list[tuple[type, str, dict[str, Any]]],
) -> None:
    reached = {cls for cls, _, _ in schema}
    models = {
        obj
        for obj in vars(t).values()
        if isinstance(obj, type) and attrs.has(obj) and obj.__module__ == t.__name__
    }
    assert models - reached == set()


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml")) if EXAMPLES.exists() else []


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_each_kubevirt_example_is_accepted_or_refused_as_unsupported(
    example: Path, tmp_path: Path
) -> None:
    # Host policy the examples need: hostDisk roots, and the privileged port vmi-masquerade
    # forwards (vmid's default range starts at 1024).
    pod = PodNetwork(publishPorts=PortRange(min=1))
    config = Config(accelerator=Accelerator.TCG, hostDiskRoots=("/var/data",), podNetwork=pod)
    planned, problems = plan_file(example, config, Paths(tmp_path), Accelerator.TCG)
    if problems:
        assert all("is not supported by vmid" in p.message for p in problems), problems
    else:
        assert planned


def test_the_seed_example_renders_as_the_issue_says(tmp_path: Path) -> None:
    seed = EXAMPLES / "seed-testvmi-nocloud.yaml"
    if not seed.exists():
        pytest.skip("../shared is missing")
    (planned,), problems = plan_file(seed, Config(), Paths(tmp_path), Accelerator.TCG)
    argv = planned.plan.argv
    assert problems == []
    assert argv[argv.index("-m") + 1] == "977"
    assert sum(a.startswith("virtio-blk-pci") for a in argv) == 3
    labels = [getattr(p, "label", None) for p in planned.plan.prepare]
    assert labels.count("cidata") == 1
