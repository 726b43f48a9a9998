"""Read manifest files and carry them through api and plan; shared by the CLI and the spool."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from vmid.api.load import MAX_BYTES, Manifest, load_text
from vmid.config import Accelerator, Config, Paths
from vmid.errors import Problem
from vmid.plan.build import build
from vmid.plan.model import LaunchPlan


@attrs.frozen
class Planned:
    """A valid manifest and the plan for it."""

    manifest: Manifest
    plan: LaunchPlan


def read_file(file: Path, shown: str | None = None) -> bytes | Problem:
    """The first MAX_BYTES + 1 bytes of a file (enough to tell it is too large), or why not."""
    try:
        with file.open("rb") as stream:
            return stream.read(MAX_BYTES + 1)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return Problem(shown or str(file), 1, 1, "", f"cannot read the file: {reason}")


def plan_file(
    file: Path, config: Config, paths: Paths, accelerator: Accelerator, shown: str | None = None
) -> tuple[list[Planned], list[Problem]]:
    """Every VMI of one file, loaded, defaulted, validated and planned; or every problem."""
    name = shown or str(file)
    data = read_file(file, name)
    if isinstance(data, Problem):
        return [], [data]
    manifests, problems = load_text(name, data)
    planned: list[Planned] = []
    for manifest in manifests:
        plan, findings = build(manifest.vmi, config, paths, accelerator)
        problems += [manifest.locator.problem(f) for f in findings]
        if plan is not None:
            planned.append(Planned(manifest, plan))
    return planned, problems
