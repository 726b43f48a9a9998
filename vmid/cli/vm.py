"""The VirtualMachine verbs: start, stop and restart with virtctl's semantics and refusals
(pkg/virt-api/rest/lifecycle.go), `get vm` as kubectl's table and `describe vm`.

vmid never writes the user's manifest: a request goes to the daemon's queue
(vmid/runtime/vmstate.py), which keeps the requested state across its restarts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmid.api import names
from vmid.api.vmistatus import FILE_ANNOTATION, Phase, VMIObject
from vmid.cli import common, show
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.errors import RequestError
from vmid.host import pidlock
from vmid.paths import Paths
from vmid.runtime import status

VM_WORDS = ("vm", "vms", "virtualmachine", "virtualmachines")
VMI_WORDS = ("vmi", "vmis", "virtualmachineinstance", "virtualmachineinstances")
DV_WORDS = ("dv", "dvs", "datavolume", "datavolumes")


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    for action, text in (
        ("start", "start a VirtualMachine"),
        ("stop", "stop a VirtualMachine"),
    ):  # `restart`, a verb of VMIs too, is vmid/cli/restart.py's: it calls `request` for a VM
        verb = commands.add_parser(action, parents=[flags], help=text)
        verb.add_argument("name", metavar="NAME", help="the VM's name (in the namespace -n names)")
        common.explain(
            verb,
            f"{text[0].upper()}{text[1:]}, as virtctl {action} does, with its refusals (a VM "
            "whose run strategy does not allow it). The request is kept until the daemon "
            "carries it out.",
            f"vmid {action} web"
            + ("\nvmid stop web --force --grace-period=0" if action == "stop" else "")
            + ("\nvmid start --paused web" if action == "start" else ""),
        )
        if action == "start":
            verb.add_argument(
                "--paused",
                action="store_true",
                help="start its VMI with the guest paused (vmid unpause vm NAME resumes it)",
            )
        else:
            verb.add_argument(
                "--grace-period",
                type=_seconds,
                metavar="SECONDS",
                help="the guest's time to power off, instead of its terminationGracePeriodSeconds",
            )
            verb.add_argument(
                "--force", action="store_true", help="with --grace-period=0: kill QEMU at once"
            )
        verb.set_defaults(run=request, action=action)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def kind_of(args: argparse.Namespace, listing: bool) -> str:
    """`get`/`describe` [KIND] [NAME]: "vm" or "vmi" (the default), with `args.name` the name.

    A kind word alone is a kind only to a verb that lists (`get vm`); `describe vm` is as
    before: the VMI named `vm`.
    """
    words, extra = args.name, getattr(args, "kind_name", None)
    if (words in VM_WORDS or words in VMI_WORDS) and (listing or extra is not None):
        args.name = extra
        return "vm" if words in VM_WORDS else "vmi"
    if extra is not None:
        raise RequestError(f"unknown kind {words!r}: use vm or vmi (or a VMI's name alone)")
    return "vmi"


def find(paths: Paths, key: str) -> dict[str, Any] | None:
    """The status object of VM `key`, if the daemon shows one."""
    from vmid.runtime import vmstate  # here: `vmid get` and `describe` of VMIs do without it

    return next((vm for vm in vmstate.read_vms(paths) if _key(vm) == key), None)


def exists(args: argparse.Namespace) -> bool:
    """Whether a VM named `args.name` exists in the namespace: `restart` then means it, not the
    VMI of that name (which it owns)."""
    paths = Paths(args.root or Path("/"))
    return find(paths, names.key(common.namespace_of(args), args.name)) is not None


def _key(vm: dict[str, Any]) -> str:
    metadata = vm.get("metadata", {})
    return names.key(metadata.get("namespace"), str(metadata.get("name")))


def request(args: argparse.Namespace) -> int:
    """`vmid start|stop|restart NAME` of a VM: refused as virtctl refuses, else handed to the
    daemon (which acts when it starts, if it is not running)."""
    paths = Paths(args.root or Path("/"))
    key = names.key(common.namespace_of(args), args.name)
    vm = find(paths, key)
    if vm is None:
        raise RequestError(not_found(args))
    grace = getattr(args, "grace_period", None)
    if getattr(args, "force", False) and grace != 0:
        raise RequestError(f"--force {args.action}s at once: it needs --grace-period=0")
    _refuse(args.action, str(vm["status"]["runStrategy"]), _vmi_phase(paths, key))
    from vmid.runtime import vmstate  # here: as in `find`

    paused = getattr(args, "paused", False)
    vmstate.send(paths, vmstate.Request(key, args.action, grace, paused))
    print(f"VM {args.name} was scheduled to {args.action}")
    if not pidlock.running(paths.daemon_pid):
        print("vmid: the daemon is not running: it acts when it starts", file=sys.stderr)
    return EXIT_OK


def _vmi_phase(paths: Paths, key: str) -> Phase | None:
    obj = next((o for o in status.read_objects(paths) if o.key == key), None)
    return obj.status.phase if obj is not None else None


def _refuse(action: str, strategy: str, phase: Phase | None) -> None:
    """KubeVirt's refusals (rest/lifecycle.go), on the VM's run strategy and its VMI's phase."""
    running = phase is not None and not phase.final
    if action == "start":
        if running:
            raise RequestError("VM is already running")
        if strategy in ("Always", "Once"):
            raise RequestError(f"{strategy} does not support manual start requests")
        if strategy == "RerunOnFailure" and phase is Phase.FAILED:
            raise RequestError("RerunOnFailure does not support starting VM from failed state")
    elif action == "stop":
        if not running and strategy in ("Halted", "RerunOnFailure", "Manual"):
            raise RequestError("VM is not running")
    elif strategy == "Halted":
        raise RequestError("Halted does not support manual restart requests")
    elif not running:
        raise RequestError("VM is not running")


def not_found(args: argparse.Namespace) -> str:
    return f"virtualmachine {args.name!r} not found in namespace {common.namespace_of(args)!r}"


# Section: get vm, describe vm


def get(args: argparse.Namespace) -> int:
    """`vmid get vm [NAME]`: NAME AGE STATUS READY, as `kubectl get vm`."""
    from vmid.runtime import vmstate  # here: as in `find`

    paths = Paths(args.root or Path("/"))
    status.read_objects(paths)  # no vmid state there: an error saying so, as `get` says it
    if args.watch:
        return _watch(paths, args)
    found = [vm for vm in vmstate.read_vms(paths) if _selected(args, vm)]
    missing = _missing(args, found, "virtualmachine")
    if missing and not found:
        return EXIT_ERROR
    _print_objects(args, found, ["NAME", "AGE", "STATUS", "READY"], _row, "virtualmachine")
    for vm in found if args.output is None else ():  # a changed manifest refused: runs on as it was
        for condition in vm["status"]["conditions"]:
            if condition["type"] == "Synchronized" and condition["status"] == "False":
                print(f"{vm['metadata']['name']}: {condition['message']}", file=sys.stderr)
    return EXIT_ERROR if missing else EXIT_OK


def _selected(args: argparse.Namespace, obj: dict[str, Any]) -> bool:
    """Whether `vmid get vm|dv` shows `obj`: its namespace (or -A), one of the NAMEs asked for
    (if any), its labels matching -l (if any)."""
    from vmid.cli import selector

    names = getattr(args, "vm_names", None) or ([args.name] if args.name else [])
    matches = selector.parse(args.selector) if getattr(args, "selector", None) else None
    metadata = obj["metadata"]
    return (
        (getattr(args, "all_namespaces", False) or _in(args, obj))
        and (not names or metadata["name"] in names)
        and (matches is None or matches(metadata.get("labels") or {}))
    )


def _missing(args: argparse.Namespace, found: list[dict[str, Any]], kind: str) -> bool:
    """Say which NAMEs asked for are not among `found`, as kubectl does; whether any is not."""
    names = getattr(args, "vm_names", None) or ([args.name] if args.name else [])
    there = {obj["metadata"]["name"] for obj in found}
    where = common.namespace_of(args)
    for name in names:
        if name not in there:
            print(f"vmid: {kind} {name!r} not found in namespace {where!r}", file=sys.stderr)
    return any(name not in there for name in names)


def _watch(paths: Paths, args: argparse.Namespace) -> int:
    """`vmid get vm -w`: the table, then a row for each VM whose row changed (or one document
    per change with -o json|yaml), until the daemon stops: said on stderr, exit 0. A VM that
    stops matching -l shows once more, as a deleted one."""
    from vmid.runtime import statuswatch  # here: a plain `get vm` needs no inotify

    every = getattr(args, "all_namespaces", False)

    def wanted(vm: dict[str, Any]) -> bool:
        return _selected(args, vm)

    watch = statuswatch.vms(paths)
    try:
        found = {c.path: c.obj for c in watch.current() if c.obj is not None and wanted(c.obj)}
        if _missing(args, list(found.values()), "virtualmachine"):
            return EXIT_ERROR
        printer = _WatchPrinter(args.output, every, found)
        if not watch.daemon_running():
            print("vmid: the daemon is not running: nothing will change", file=sys.stderr)
            return EXIT_OK
        for change in watch.changes():
            # One no longer selected (its labels edited) leaves as a deleted one does, as in
            # kubectl's watch and `vmid get -w` of VMIs.
            obj = change.obj if change.obj is not None and wanted(change.obj) else None
            printer.change(change.path, obj)
        print("vmid: the daemon stopped", file=sys.stderr)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        watch.close()


class _WatchPrinter:
    """Prints a watch of VMs: a row each time a VM's row changes (AGE aside), as kubectl's
    table does, or one JSON/YAML document per change."""

    def __init__(self, output: str | None, every: bool, found: dict[Path, dict[str, Any]]) -> None:
        self._output, self._every, self._documents = output, every, 0
        #: The object last seen, and the row last printed (without AGE), by status file.
        self._objects = dict(found)
        self._shown = {path: self._sans_age(vm) for path, vm in found.items()}
        if output is None:
            rows = [self._row(vm) for vm in found.values()]
            print(show.aligned([self._header(), *rows]), flush=True)
        else:
            for vm in found.values():
                self._document(vm)

    def __repr__(self) -> str:
        return f"<_WatchPrinter output={self._output} shown={len(self._objects)}>"

    def change(self, path: Path, vm: dict[str, Any] | None) -> None:
        """Status file `path` now holds `vm` (None: the VM is gone, or no longer selected)."""
        if vm is None:
            gone = self._objects.pop(path, None)
            self._shown.pop(path, None)
            if gone is not None and self._output is not None:
                self._document(gone)  # its last object, as kubectl prints a deleted one
            elif gone is not None:
                self._rows([[*self._row(gone)[:-3], "", "Deleted", ""]])
            return
        self._objects[path] = vm
        if self._output is not None:
            self._document(vm)
        elif self._shown.get(path) != self._sans_age(vm):
            self._shown[path] = self._sans_age(vm)
            self._rows([self._row(vm)])

    def _header(self) -> list[str]:
        return ["NAMESPACE"] * self._every + ["NAME", "AGE", "STATUS", "READY"]

    def _row(self, vm: dict[str, Any]) -> list[str]:
        return [vm["metadata"]["namespace"]] * self._every + _row(vm)

    def _sans_age(self, vm: dict[str, Any]) -> list[str]:
        row = self._row(vm)
        return row[:-3] + row[-2:]

    def _rows(self, rows: list[list[str]]) -> None:
        print("\n".join(show.aligned([self._header(), *rows]).splitlines()[1:]), flush=True)

    def _document(self, vm: dict[str, Any]) -> None:
        if self._output == "yaml" and self._documents:
            print("---")
        show.print_data(vm, self._output or "json")
        sys.stdout.flush()
        self._documents += 1


def _in(args: argparse.Namespace, vm: dict[str, Any]) -> bool:
    return bool(vm["metadata"]["namespace"] == common.namespace_of(args))


def _row(vm: dict[str, Any]) -> list[str]:
    st = vm["status"]
    return [
        vm["metadata"]["name"],
        show.age(vm["metadata"].get("creationTimestamp")),
        st["printableStatus"],
        "True" if st.get("ready") else "False",
    ]


def get_data_volumes(args: argparse.Namespace) -> int:
    """`vmid get dv [NAME]`: the VMs' DataVolumes as `kubectl get dv` shows CDI's: NAME PHASE
    PROGRESS RESTARTS AGE."""
    from vmid.runtime import vmstate  # here: as in `find`

    paths = Paths(args.root or Path("/"))
    if args.watch:
        raise RequestError("vmid get dv -w is not supported: watch the VMs (vmid get vm -w)")
    status.read_objects(paths)  # no vmid state there: an error saying so, as `get` says it
    found = [dv for dv in vmstate.read_data_volumes(paths) if _selected(args, dv)]
    missing = _missing(args, found, "datavolume")
    if missing and not found:
        return EXIT_ERROR
    _print_objects(
        args, found, ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"], _dv_row, "datavolume"
    )
    return EXIT_ERROR if missing else EXIT_OK


def _print_objects(
    args: argparse.Namespace,
    found: list[dict[str, Any]],
    header: list[str],
    row: Callable[[dict[str, Any]], list[str]],
    kind: str,
) -> None:
    """VMs or DataVolumes as `kubectl get` prints them, with -o as for VMIs: one object (a NAME
    asked for) or a List with -o yaml|json|jsonpath, names, custom columns, or a table (a
    NAMESPACE column first with -A, LABELS last with --show-labels)."""
    from vmid.cli import jsonpath

    output: str = args.output or ""
    data = found[0] if args.name and found else {"apiVersion": "v1", "kind": "List", "items": found}
    if output in ("yaml", "json"):
        show.print_data(data, output)
    elif output.startswith("jsonpath="):
        print(jsonpath.Template(output.removeprefix("jsonpath=")).render(data), end="")
    elif not found:
        every = getattr(args, "all_namespaces", False)
        where = "" if every else f" in {common.namespace_of(args)} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
    elif output == "name":
        print("\n".join(f"{kind}.{_GROUPS[kind]}/{o['metadata']['name']}" for o in found))
    else:
        rows = (
            jsonpath.columns(output.removeprefix("custom-columns="), found)
            if output.startswith("custom-columns=")
            else _table(args, found, header, row)
        )
        print(show.aligned(rows[1:] if args.no_headers else rows))


#: The API group of each kind `-o name` prints.
_GROUPS = {"virtualmachine": "kubevirt.io", "datavolume": "cdi.kubevirt.io"}


def _table(
    args: argparse.Namespace,
    found: list[dict[str, Any]],
    header: list[str],
    row: Callable[[dict[str, Any]], list[str]],
) -> list[list[str]]:
    """The header and a row per object, -A's NAMESPACE first, --show-labels' LABELS last."""
    rows = [row(obj) for obj in found]
    if getattr(args, "all_namespaces", False):
        header = ["NAMESPACE", *header]
        rows = [[o["metadata"]["namespace"], *r] for o, r in zip(found, rows, strict=True)]
    if args.show_labels:
        header = [*header, "LABELS"]
        rows = [[*r, _labels(o)] for o, r in zip(found, rows, strict=True)]
    return [header, *rows]


def _labels(obj: dict[str, Any]) -> str:
    labels = obj["metadata"].get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def _dv_row(dv: dict[str, Any]) -> list[str]:
    st = dv["status"]
    return [
        dv["metadata"]["name"],
        st["phase"],
        st["progress"],
        str(st.get("restartCount", 0)),
        show.age(dv["metadata"].get("creationTimestamp")),
    ]


def describe(args: argparse.Namespace) -> int:
    """`vmid describe vm NAME`: the VM's status, run strategy, conditions, its VMI."""
    from vmid.runtime import vmstate  # here: as in `find`

    paths = Paths(args.root or Path("/"))
    key = names.key(common.namespace_of(args), args.name)
    vm = find(paths, key)
    if vm is None:
        print(f"vmid: {not_found(args)}", file=sys.stderr)
        return EXIT_ERROR
    st, metadata = vm["status"], vm["metadata"]
    vmi = next((o for o in status.read_objects(paths) if o.key == key), None)
    fields = [
        ("Name", metadata["name"]),
        ("Namespace", metadata["namespace"]),
        ("Manifest", metadata.get("annotations", {}).get(FILE_ANNOTATION, "")),
        ("Created", metadata.get("creationTimestamp", "")),
        ("Status", st["printableStatus"]),
        ("Ready", "True" if st.get("ready") else "False"),
        ("Strategy", st["runStrategy"]),
        ("VMI", _vmi_line(vmi)),
    ]
    failure = st.get("startFailure")
    if failure:
        retry = failure["retryAfterTimestamp"]
        fields.append(("Failures", f"{failure['consecutiveFailCount']} (next start {retry})"))
    for label, value in fields:
        print(f"{label + ':':<12}{value}")
    rows = [
        [c["type"], c["status"], c.get("reason", ""), c.get("message", "")]
        for c in st["conditions"]
    ]
    print("Conditions:")
    body = show.aligned([["TYPE", "STATUS", "REASON", "MESSAGE"], *rows])
    print("\n".join(f"  {line}" for line in body.splitlines()))
    owned = [dv for dv in vmstate.read_data_volumes(paths) if _owned_by(dv, metadata)]
    if owned:
        print("DataVolumes:")
        rows = [[*_dv_row(dv)[:3], _dv_error(dv)] for dv in owned]
        body = show.aligned([["NAME", "PHASE", "PROGRESS", "MESSAGE"], *rows])
        print("\n".join(f"  {line}" for line in body.splitlines()))
    return EXIT_OK


def _owned_by(dv: dict[str, Any], vm: dict[str, Any]) -> bool:
    owners = dv["metadata"].get("ownerReferences", [])
    same = dv["metadata"].get("namespace") == vm.get("namespace")
    return same and any(o.get("name") == vm.get("name") for o in owners)


def _dv_error(dv: dict[str, Any]) -> str:
    running = [c for c in dv["status"].get("conditions", []) if c.get("type") == "Running"]
    return str(running[0].get("message", "")) if running else ""


def _vmi_line(vmi: VMIObject | None) -> str:
    if vmi is None:
        return "<none>"
    pid = vmi.status.qemu.pid if vmi.status.qemu is not None else None
    return f"{vmi.metadata.name} ({vmi.status.phase}" + (f", pid {pid})" if pid else ")")
