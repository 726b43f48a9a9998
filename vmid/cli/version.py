"""`vmid version` (and `vmid --version`): the version of vmid installed."""

from __future__ import annotations

import argparse
import importlib.metadata

from vmid.cli import common
from vmid.cli.common import EXIT_OK, Commands


def version() -> str:
    try:
        return importlib.metadata.version("vmid")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "version",
        parents=[common.flags_for(flags)],  # accepted, meaning nothing here: not offered
        help="print vmid's version",
        description="Print the version of vmid.",
    )
    parser.set_defaults(run=_version)


def _version(args: argparse.Namespace) -> int:
    print(f"vmid version {version()}")
    return EXIT_OK
