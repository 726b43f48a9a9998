"""`vmid get`: VMIs as kubectl's table (or their objects as JSON/YAML), and `get -w`, which
prints each change as it is written."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from vmid.api import names
from vmid.api.vmistatus import VMIObject, VMIStatus
from vmid.cli import common, jsonpath, selector, show, vm
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.errors import RequestError
from vmid.paths import Paths
from vmid.runtime import status

if TYPE_CHECKING:
    from vmid.runtime import statuswatch

#: kubectl's names of the VMI kind, one of which may come first (`vmid get vmi web`).
KINDS = ("vmi", "vmis", "virtualmachineinstance", "virtualmachineinstances")
#: How `-o name` names a VMI, as kubectl names an object of a custom resource.
RESOURCE = "virtualmachineinstance.kubevirt.io"

EXAMPLES = """examples:
  vmid get                                    # the VMIs of namespace default
  vmid get vmi web db -o wide                 # two of them, with PAUSED and PID
  vmid get -A -l app=web                      # every namespace's VMIs labelled app=web
  vmid get web -o yaml                        # its object: the spec with defaults, the status
  vmid get -o name                            # virtualmachineinstance.kubevirt.io/web ...
  vmid get -o jsonpath='{.items[*].status.interfaces[0].ipAddress}'
  vmid get -o custom-columns=NAME:.metadata.name,PID:.status.qemu.pid
  vmid get web db -w -l tier=front            # changes to those of them labelled tier=front
  vmid get -w                                 # then every change, until Ctrl+C
  vmid get vm -w                              # the VirtualMachines: NAME AGE STATUS READY
"""


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    get = commands.add_parser(
        "get",
        parents=[flags],
        help="list VMIs, like kubectl get vmi",
        description="List VMIs as kubectl get vmi does: NAME AGE PHASE IP NODENAME READY. A "
        "spool file vmid refuses is a Failed row named <FILE>; the problems of refused "
        "manifests follow the table on stderr. No VMI: `No resources found` on stderr.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument(
        "names",
        nargs="*",
        metavar="[vmi|vm|dv] NAME",
        help="only these VMIs (vm: VMs instead, dv: their DataVolumes)",
    )
    get.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="list the VMIs of every namespace (a NAMESPACE column)",
    )
    get.add_argument(
        "-l",
        "--selector",
        metavar="SELECTOR",
        help="only VMIs whose labels match, as kubectl's: app=web, tier!=db, "
        "'env in (a,b)', app (has it), !app",
    )
    get.add_argument(
        "-o",
        "--output",
        type=_output,
        metavar="FORMAT",
        help="wide (PAUSED, PID), yaml, json, name, jsonpath=TEMPLATE, "
        "custom-columns=HEADER:PATH,...",
    )
    get.add_argument("--no-headers", action="store_true", help="no header line in tables")
    get.add_argument("--show-labels", action="store_true", help="a LABELS column last")
    get.add_argument("-w", "--watch", action="store_true", help="print changes as they happen")
    get.set_defaults(run=_get)


def _output(text: str) -> str:
    kind = text.partition("=")[0]
    if text in ("wide", "yaml", "json", "name") or kind in ("jsonpath", "custom-columns"):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected wide, yaml, json, name, jsonpath=... or custom-columns=..."
    )


def _get(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    if args.names and args.names[0].lower() in (*vm.VM_WORDS, *vm.DV_WORDS):
        _refuse_what_vms_lack(args)
        args.name = args.names[1] if len(args.names) == 2 else None  # one object, not a List
        args.vm_names = args.names[1:]
        return vm.get(args) if args.names[0].lower() in vm.VM_WORDS else vm.get_data_volumes(args)
    wanted_names = _names(args)
    if args.all_namespaces and wanted_names:
        print("vmid: a VMI cannot be retrieved by name across all namespaces", file=sys.stderr)
        return EXIT_ERROR
    selected = _selection(args, wanted_names)
    if args.watch:
        return _watch_command(paths, args, wanted_names, selected)
    objects = [o for o in status.read_objects(paths) if selected(o)]
    missing = _missing(args, wanted_names, objects)
    if missing and not objects:
        return EXIT_ERROR
    printed = _print(args, objects, single=len(wanted_names) == 1)
    return EXIT_ERROR if missing else printed


def _refuse_what_vms_lack(args: argparse.Namespace) -> None:
    """`get vm -w` prints rows or documents: say so rather than ignore other formats."""
    if args.watch and args.output not in (None, "yaml", "json"):
        raise RequestError(f"vmid get {args.names[0]} -w does not take -o {args.output}")


def _selection(args: argparse.Namespace, wanted_names: list[str]) -> Callable[[VMIObject], bool]:
    """Whether a VMI is one `vmid get` shows: in the namespace asked for (or any, -A), one of
    the NAMEs (if any) and matching the selector (-l, if any)."""
    matches = selector.parse(args.selector) if args.selector else None
    return lambda o: (
        common.wanted(args, o)
        and (not wanted_names or show.name(o) in wanted_names)
        and (matches is None or matches(o.metadata.labels))
    )


def _missing(args: argparse.Namespace, wanted_names: list[str], found: list[VMIObject]) -> bool:
    """Say which NAMEs asked for are not among `found`; whether any is not."""
    there = {show.name(o) for o in found}
    missing = [n for n in wanted_names if n not in there]
    for name in missing:
        asked = argparse.Namespace(**{**vars(args), "name": name})
        print(f"vmid: {common.not_found(asked)}", file=sys.stderr)
    return bool(missing)


def _names(args: argparse.Namespace) -> list[str]:
    """The NAMEs asked for, without kubectl's resource type before them (`vmid get vmi a`)."""
    words = list(args.names)
    if words and words[0].lower() in KINDS:
        words.pop(0)
    args.name = words[0] if len(words) == 1 else None  # what a single NAME's verbs read
    return words


def _watch_command(
    paths: Paths,
    args: argparse.Namespace,
    wanted_names: list[str],
    selected: Callable[[VMIObject], bool],
) -> int:
    if args.output not in (None, "wide", "yaml", "json"):
        print("vmid: get -w takes -o wide, yaml or json only", file=sys.stderr)
        return EXIT_ERROR
    return _watch(paths, args, wanted_names, selected)


def _print(args: argparse.Namespace, objects: list[VMIObject], single: bool) -> int:
    """Print `objects` as `-o` says; `single`: one NAME was asked for (its object, not a
    List, for yaml, json and jsonpath)."""
    output: str = args.output or ""
    items = [o.data for o in objects]
    data = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
    if output in ("yaml", "json"):
        show.print_data(data, output)
        return EXIT_OK
    if output.startswith("jsonpath="):
        print(jsonpath.Template(output.removeprefix("jsonpath=")).render(data), end="")
        return EXIT_OK
    if not objects:  # as kubectl: the daemon runs and has no VMI there
        where = "" if args.all_namespaces else f" in {common.namespace_of(args)} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return EXIT_OK
    if output == "name":
        print("\n".join(f"{RESOURCE}/{o.metadata.name}" for o in objects if o.metadata.name))
        return EXIT_OK
    if output.startswith("custom-columns="):
        rows = jsonpath.columns(output.removeprefix("custom-columns="), items)
        print(show.aligned(rows[1:] if args.no_headers else rows))
        return EXIT_OK
    columns = Columns.of(args)
    table = _table(objects, columns)
    print("\n".join(table.splitlines()[1:]) if args.no_headers else table)
    for obj in objects:  # a manifest refused (a VMI's, or a spool file's): its problems
        synchronized = obj.status.condition("Synchronized")
        if synchronized is not None and synchronized.status == "False":
            print(f"{show.name(obj)}: {synchronized.message}", file=sys.stderr)
    return EXIT_OK


class Columns(NamedTuple):
    """Which columns `vmid get` prints: -o wide adds PAUSED and PID, -A a NAMESPACE first,
    --show-labels LABELS last."""

    wide: bool
    namespaces: bool
    labels: bool = False

    @classmethod
    def of(cls, args: argparse.Namespace) -> Columns:
        return cls(
            args.output == "wide",
            bool(getattr(args, "all_namespaces", False)),
            bool(getattr(args, "show_labels", False)),
        )

    @property
    def header(self) -> list[str]:
        header = ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
        header += ["PAUSED", "PID"] if self.wide else []
        header += ["LABELS"] if self.labels else []
        return ["NAMESPACE", *header] if self.namespaces else header

    def identity(self, obj: VMIObject) -> list[str]:
        """The cells naming the VMI: its namespace (-A) and name."""
        namespace = obj.metadata.namespace or names.DEFAULT_NAMESPACE
        return [namespace if obj.metadata.name else "", show.name(obj)]

    def partial(self, obj: VMIObject, *cells: str) -> list[str]:
        """A row of the VMI's identity and `cells`, the other columns empty."""
        identity = self.identity(obj)[0 if self.namespaces else 1 :]
        row = [*identity, *cells]
        return row + [""] * (len(self.header) - len(row))

    def sans_age(self, row: list[str] | None) -> list[str] | None:
        age = self.header.index("AGE")
        return None if row is None else row[:age] + row[age + 1 :]


#: The NODENAME column: the host's name, as kubectl shows the node a VMI runs on.
NODE_NAME = os.uname().nodename  # socket.gethostname(), without importing socket


def _table(objects: list[VMIObject], columns: Columns) -> str:
    return show.aligned([columns.header] + [_row(o, columns) for o in objects])


def _row(obj: VMIObject, columns: Columns) -> list[str]:
    st = obj.status
    row = [
        show.age(obj.metadata.creationTimestamp),
        show.phase(obj),
        st.interfaces[0].ipAddress if st.interfaces else "",
        NODE_NAME if st.qemu is not None else "",  # scheduled: on this host
        _condition(st, "Ready"),
    ]
    if columns.wide:
        pid = st.qemu.pid if st.qemu is not None else None
        row += [_condition(st, "Paused"), str(pid or "")]
    if columns.labels:
        labels = obj.metadata.labels
        row.append(",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>")
    return columns.partial(obj, *row)


def _condition(st: VMIStatus, type_: str) -> str:
    """A condition's status as kubectl's column shows it (absent: False)."""
    found = st.condition(type_)
    return "False" if found is None else found.status


def _watch(
    paths: Paths,
    args: argparse.Namespace,
    wanted_names: list[str],
    selected: Callable[[VMIObject], bool],
) -> int:
    """Like `kubectl get -w`: the list, then every status as it is written (a table row, or a
    document with `-o json|yaml`), until the daemon stops: said on stderr, exit 0. The NAMEs
    (all must be there, as kubectl's) and the selector choose the VMIs; one that stops matching
    the selector (a new manifest's labels) leaves as a deleted one does, as kubectl's watch."""
    from vmid.runtime import statuswatch  # here: a plain `get` needs no inotify

    watch = statuswatch.vmis(paths)
    try:
        found = [c for c in watch.current() if c.obj is not None and selected(c.obj)]
        if _missing(args, wanted_names, [c.obj for c in found if c.obj is not None]):
            return EXIT_ERROR
        printer = WatchPrinter(args.output, Columns.of(args), found)
        if not watch.daemon_running():
            print("vmid: the daemon is not running: nothing will change", file=sys.stderr)
            return EXIT_OK
        for change in watch.changes():
            if change.obj is not None and not selected(change.obj):
                change = statuswatch.Change(change.path, None)  # gone from the selection
            if change.obj is not None or printer.last(change.path) is not None:
                printer.change(change)
        print("vmid: the daemon stopped", file=sys.stderr)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        watch.close()


class WatchPrinter:
    """Prints a watch: rows as kubectl's table does, or one JSON/YAML document per change."""

    def __init__(
        self, output: str | None, columns: Columns, found: list[statuswatch.Change[VMIObject]]
    ) -> None:
        self._output = output
        self._columns = columns
        self._documents = 0
        #: The object last printed for each status file.
        self._shown = {c.path: c.obj for c in found if c.obj is not None}
        if output in ("json", "yaml"):
            for obj in self._shown.values():
                self._document(obj)
        else:
            print(_table(list(self._shown.values()), columns), flush=True)

    def __repr__(self) -> str:
        return f"<WatchPrinter output={self._output} shown={len(self._shown)}>"

    def last(self, path: Path) -> VMIObject | None:
        return self._shown.get(path)

    def change(self, change: statuswatch.Change[VMIObject]) -> None:
        last = self._shown.pop(change.path, None)
        obj = change.obj or last
        if obj is None:
            return
        columns = self._columns
        if self._output in ("json", "yaml"):
            self._document(obj)  # a VMI gone: its last object, as kubectl prints it
        elif change.obj is None:
            self._rows([columns.partial(obj, "", "Deleted")])
        else:
            row = _row(obj, columns)
            missed = [_passed(obj, phase, columns) for phase in _missed(last, obj)]
            before = None if last is None else columns.sans_age(_row(last, columns))
            if missed or before != columns.sans_age(row):
                self._rows([*missed, row])
        if change.obj is not None:
            self._shown[change.path] = change.obj

    def _rows(self, rows: list[list[str]]) -> None:
        print("\n".join(show.aligned([self._columns.header, *rows]).splitlines()[1:]), flush=True)

    def _document(self, obj: VMIObject) -> None:
        if self._output == "yaml" and self._documents:
            print("---")
        show.print_data(obj.data, self._output or "json")
        sys.stdout.flush()
        self._documents += 1


def _missed(last: VMIObject | None, obj: VMIObject) -> list[str]:
    """The phases `obj` passed through since `last` (None: not seen before) that no read saw:
    each lasted less than it took to read it (a 100 ms `Running`). A new object's first phase
    (`Pending`, where every VMI starts, a refused one too) is not one of them."""
    now = obj.status.phaseTransitionTimestamps
    seen = last.status.phaseTransitionTimestamps if last is not None else now[:1]
    if now[: len(seen)] != seen:
        seen = now[:1]  # a new VMI of that name
    return [str(t.phase) for t in now[len(seen) : -1]]


def _passed(obj: VMIObject, phase: str, columns: Columns) -> list[str]:
    """The row of a phase no read saw: what else it showed then is not known."""
    return columns.partial(obj, show.age(obj.metadata.creationTimestamp), phase)
