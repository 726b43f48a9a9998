"""Read manifest files and carry them through api and plan; shared by the CLI and the spool."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from vmid.api import vm as vms
from vmid.api.load import KIND, MAX_BYTES, Manifest, load_documents
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


@attrs.frozen
class Entry:
    """One VMI document of a spool file: planned, or refused with its problems."""

    file: str
    #: namespace/name (vmid/api/names.py); None for a document that names no VMI plausibly.
    key: str | None
    planned: Planned | None
    problems: tuple[Problem, ...]
    #: The document's kind: VirtualMachineInstance or VirtualMachine.
    kind: str = KIND
    #: A VMI a VirtualMachine made: its owner reference (the VMI's status shows it).
    owner: dict[str, Any] | None = None


def plan_documents(
    file: Path, config: Config, paths: Paths, accelerator: Accelerator, shown: str | None = None
) -> list[Entry]:
    """Every document of one file, loaded, defaulted, validated and planned, or refused."""
    name = shown or str(file)
    return plan_data(name, read_file(file, name), config, paths, accelerator)


def plan_data(
    name: str, data: bytes | Problem, config: Config, paths: Paths, accelerator: Accelerator
) -> list[Entry]:
    """Every document of a file's contents `data` (or why it could not be read), as entries."""
    if isinstance(data, Problem):
        return [Entry(name, None, None, (data,))]
    entries = []
    for document in load_documents(name, data):
        planned, problems = None, document.problems
        if document.manifest is not None:
            plan, findings = build(document.manifest.vmi, config, paths, accelerator)
            if document.manifest.vm is not None:  # the template's fields, in the VM's document
                findings = [vms.located(f) for f in findings]
            problems += tuple(document.manifest.locator.problem(f) for f in findings)
            planned = Planned(document.manifest, plan) if plan is not None else None
        entries.append(Entry(name, document.key, planned, problems, document.kind))
    return entries


def plan_file(
    file: Path, config: Config, paths: Paths, accelerator: Accelerator, shown: str | None = None
) -> tuple[list[Planned], list[Problem]]:
    """Every VMI of one file, loaded, defaulted, validated and planned; or every problem."""
    entries = plan_documents(file, config, paths, accelerator, shown)
    planned = [e.planned for e in entries if e.planned is not None]
    return planned, [p for e in entries for p in e.problems]
