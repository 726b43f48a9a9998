"""Golden tests: each tests/golden/NAME.yaml renders exactly tests/golden/NAME.args.

Regenerate after an intended change with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from vmid.cli.render import render_argv
from vmid.config import Accelerator, Paths, load_config
from vmid.manifests import Planned, plan_file

GOLDEN = Path(__file__).parent / "golden"
CONFIG = GOLDEN / "vmid.yaml"
MANIFESTS = sorted(p for p in GOLDEN.glob("*.yaml") if p != CONFIG)


def plan_golden(manifest: Path) -> Planned:
    """Plan a golden manifest as a real host would see it (root /, TCG)."""
    config = load_config(CONFIG, required=True)
    planned, problems = plan_file(manifest, config, Paths(Path("/")), Accelerator.TCG)
    assert not problems, "\n".join(map(str, problems))
    (only,) = planned
    return only


def test_there_are_enough_goldens() -> None:
    assert len(MANIFESTS) >= 15


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_golden_args(manifest: Path) -> None:
    rendered = render_argv(plan_golden(manifest).plan.argv) + "\n"
    expected = manifest.with_suffix(".args")
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(rendered)
    assert rendered == expected.read_text()


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_qemu_opens_no_file_by_name(manifest: Path) -> None:
    """Every file node is an fd vmid passes; every qcow2 says which node backs it (or null):
    QEMU never opens a path, nor a file an image header names."""
    plan = plan_golden(manifest).plan
    nodes = {}
    for flag, value in itertools.pairwise(plan.argv):
        if flag == "-blockdev":
            node = json.loads(value)
            nodes[node["node-name"]] = node
    passed = {f"/dev/fdset/{f.fdset}" for f in plan.files}
    for node in nodes.values():
        if node["driver"] == "file":
            assert node["filename"] in passed, node
        if node["driver"] == "qcow2":
            assert "backing" in node, node
            backing = node["backing"]
            assert backing is None or nodes[backing]["driver"] == "raw", node
