"""`vmid apply -f FILE|DIR|-`: manifests validated as the daemon would, then installed in the
spool, one file per object, as kubectl apply creates or configures objects."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmid.api import names
from vmid.cli import common, spoolfiles
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.cli.spoolfiles import Piece
from vmid.errors import ApplyError, Problem, SpoolError

STDIN = "<stdin>"

EXAMPLES = """examples:
  vmid apply -f web.yaml             # create VMI web, or change it (a new spec restarts it)
  vmid apply -f manifests/           # every .yaml, .yml and .json file of a directory
  cat web.yaml | vmid apply -f -     # from standard input
  vmid apply -f web.yaml -n staging  # into namespace staging (unless the file names one)
"""


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    apply = commands.add_parser(
        "apply",
        parents=[flags],
        help="install manifests in the spool, as kubectl apply",
        description="Validate every document of every FILE first (nothing is installed if one "
        "is invalid), then install each object in the spool as a file of its own "
        "(NAMESPACE_NAME.yaml, root's, mode 0644; a file holding several objects is split), or "
        "replace it where the spool already holds it. Prints kubectl's "
        "`virtualmachineinstance/NAME created|configured|unchanged`.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="a manifest file, a directory of them (not recursive), or - for standard input; "
        "may be repeated",
    )
    apply.set_defaults(run=_apply)


def inputs(sources: list[str]) -> list[tuple[str, bytes | Problem]]:
    """(name shown, contents or why not) of every file `-f` names, directories expanded."""
    from vmid.manifests import read_file  # here: the planner is apply's, not every verb's

    found: list[tuple[str, bytes | Problem]] = []
    for source in sources:
        if source == "-":
            found.append((STDIN, sys.stdin.buffer.read()))
            continue
        path = Path(source)
        if not path.is_dir():
            found.append((source, read_file(path, source)))
            continue
        files = sorted(p for p in path.iterdir() if spoolfiles.manifest_name(p.name))
        found += [(str(f), read_file(f)) for f in files]
        if not files:
            message = "a directory without a .yaml, .yml or .json file"
            found.append((source, Problem(source, 1, 1, "", message)))
    return found


def validated(args: argparse.Namespace) -> list[Piece]:
    """Every object of the files `-f` names, or ApplyError listing every problem of them all."""
    from vmid.host import accel
    from vmid.manifests import plan_data

    config, paths = common.setup(args)
    accelerator = accel.resolve(config.accelerator)
    problems: list[Problem] = []
    pieces: list[Piece] = []
    for shown, data in inputs(args.filename):
        entries = plan_data(shown, data, config, paths, accelerator)
        problems += [p for e in entries for p in e.problems]
        if isinstance(data, Problem) or any(e.problems for e in entries):
            continue
        found = spoolfiles.split(data.decode(errors="replace"), args.namespace)
        if not found:
            problems.append(Problem(shown, 1, 1, "", "no object in this file"))
        problems += [p for piece in found if (p := _namespace_problem(shown, piece, args))]
        pieces += found
    problems += _duplicates(pieces)
    if problems:
        raise ApplyError("\n".join(str(p) for p in problems) + "\nnothing was applied")
    return pieces


def _namespace_problem(shown: str, piece: Piece, args: argparse.Namespace) -> Problem | None:
    namespace = names.split(piece.key)[0]
    if args.namespace is None or namespace == args.namespace:
        return None
    return Problem(
        shown,
        1,
        1,
        "metadata.namespace",
        f"the namespace from the provided object {namespace!r} does not match the namespace "
        f"{args.namespace!r}; pass -n {namespace} to apply it",
    )


def _duplicates(pieces: list[Piece]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    problems = []
    for piece in pieces:
        if (piece.kind, piece.key) in seen:
            message = f"{piece.resource} ({piece.key}) is given twice"
            problems.append(Problem("", 1, 1, "metadata.name", message))
        seen.add((piece.kind, piece.key))
    return problems


def _apply(args: argparse.Namespace) -> int:
    pieces = validated(args)
    _, paths = common.setup(args)
    spool = paths.spool
    status = EXIT_OK
    for piece in pieces:
        located = spoolfiles.index(spool).get((piece.kind, piece.key))
        try:
            print(f"{piece.resource} {_install(spool, piece, located)}", flush=True)
        except SpoolError as exc:
            print(f"vmid: {exc}", file=sys.stderr)
            status = EXIT_ERROR
    return status


def _install(spool: Path, piece: Piece, located: spoolfiles.Located | None) -> str:
    """Install one object; what kubectl says of it: created, configured or unchanged."""
    if located is not None and located.piece.data == piece.data:
        return "unchanged"
    if located is not None and len(located.pieces) == 1:
        spoolfiles.install(located.file, piece.text)  # one rename: the VMI is never absent
        return "configured"
    target = spoolfiles.own_file(spool, piece)
    if located is None and target.exists():
        raise SpoolError(
            f"{target} holds other objects; {piece.resource} was not applied: move them out"
        )
    spoolfiles.install(target, piece.text)
    if located is None:
        return "created"
    # Out of a file holding others, after it is in its own: the daemon never sees it absent
    # (two files claiming it for a moment: the first by name wins, as ever).
    spoolfiles.remove(located)
    print(f"vmid: {piece.resource} moved from {located.file} to {target}", file=sys.stderr)
    return "configured"
