"""The `vmid` command: argument parsing and output. The only module that prints.

Global flags (`--root`, `--config`) work before or after the subcommand, as kubectl's do.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import stat
import string
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import cattrs
from ruamel.yaml import YAML

from vmid import agentcli, control
from vmid.__main__ import HELD_SIGNALS
from vmid.api import names
from vmid.config import Accelerator, Config, Paths, load_config
from vmid.errors import VmidError
from vmid.host import accel, firmwareid, logfile, pidlock, unixsock
from vmid.manifests import Planned, plan_file
from vmid.plan.build import build
from vmid.plan.model import LaunchPlan
from vmid.runtime import events, status, statuswatch

#: Every command: 0 done, 1 failed (a bad file or name, the daemon or a VM, an I/O error),
#: 2 a usage error (argparse's own: a bad flag or argument), 130 interrupted by Ctrl+C.
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run one vmid command; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.run is not _daemon:  # only the daemon answers them itself (vmid.__main__)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)  # a Ctrl+C held comes now
        result: int = args.run(args)
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        _silence_stdout()
        return EXIT_ERROR
    except (VmidError, OSError) as exc:
        _report(exc)
        return EXIT_ERROR
    except ExceptionGroup as group:  # from the daemon's nurseries
        expected, bugs = group.split((VmidError, OSError))
        if bugs is not None or expected is None:
            raise
        for leaf in _leaves(expected):
            _report(leaf)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


def _report(exc: BaseException) -> None:
    """Say what failed and why, never a traceback; a file names itself."""
    if not isinstance(exc, OSError):
        print(f"vmid: {exc}", file=sys.stderr)
        return
    where = f"{exc.filename}: " if exc.filename else ""
    hint = "; run as root" if isinstance(exc, PermissionError) else ""
    print(f"vmid: {where}{exc.strerror or exc}{hint}", file=sys.stderr)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _silence_stdout() -> None:
    # What is still buffered would fail again as the interpreter exits, with a message.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="vmid", description="Run KubeVirt VirtualMachineInstance manifests on this host."
    )
    _global_flags(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate", parents=[common], help="check manifests as KubeVirt would admit them"
    )
    validate.add_argument("files", nargs="+", metavar="FILE", type=Path)
    validate.set_defaults(run=_validate)

    render = commands.add_parser(
        "render",
        parents=[common],
        help="print the QEMU command line vmid would run",
        description="Print the QEMU command line vmid would run for each VMI of FILE. fd=N and "
        "/dev/fdset/N stand for the files and sockets the daemon passes as fds: a running VMI's "
        "real command line is its status.qemu.argv (vmid get NAME -o yaml).",
    )
    render.add_argument("file", metavar="FILE", type=Path)
    render.add_argument("-o", "--output", choices=("args", "json"), default="args")
    render.set_defaults(run=_render)

    daemon = commands.add_parser("daemon", parents=[common], help="run the vmid daemon")
    daemon.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    daemon.set_defaults(run=_daemon)

    get = commands.add_parser("get", parents=[common], help="list VMIs, like kubectl get vmi")
    get.add_argument("name", nargs="?", metavar="NAME")
    get.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="list the VMIs of every namespace (a NAMESPACE column)",
    )
    get.add_argument("-o", "--output", choices=("wide", "yaml", "json"))
    get.add_argument("-w", "--watch", action="store_true", help="print changes as they happen")
    get.set_defaults(run=_get)

    describe = commands.add_parser(
        "describe", parents=[common], help="a VMI's spec, conditions, phase history and events"
    )
    describe.add_argument("name", metavar="NAME")
    describe.set_defaults(run=_describe)

    events_ = commands.add_parser(
        "events", parents=[common], help="VMIs' events, like kubectl get events (kept 1 h after)"
    )
    events_.add_argument("name", nargs="?", metavar="NAME", help="only this VMI's events")
    events_.add_argument("-A", "--all-namespaces", action="store_true")
    events_.add_argument("-o", "--output", choices=("yaml", "json"))
    events_.add_argument("-w", "--watch", action="store_true", help="print events as they come")
    events_.set_defaults(run=_events)

    logs = commands.add_parser("logs", parents=[common], help="print a VMI's serial console log")
    logs.add_argument("name", metavar="NAME")
    logs.set_defaults(run=_logs)

    qmp = commands.add_parser("qmp", parents=[common], help="run a QMP command on a VMI's qmp.sock")
    qmp.add_argument("name", metavar="NAME")
    qmp.add_argument("command", metavar="COMMAND")
    qmp.add_argument("arguments", nargs="?", metavar="JSON-ARGS", type=_json_object)
    qmp.set_defaults(run=_qmp)
    for action, text in (
        ("pause", "pause a running VMI"),
        ("unpause", "resume a paused VMI"),
        ("reset", "hard-reset a VMI, as the reset button does"),
        ("soft-reboot", "reboot the guest cleanly (the ACPI power button, then a reset)"),
    ):
        parser_ = commands.add_parser(action, parents=[common], help=text)
        parser_.add_argument("name", metavar="NAME")
        parser_.set_defaults(run=_lifecycle, action=action)
    for verb, text in agentcli.VERBS:
        parser_ = commands.add_parser(verb, parents=[common], help=text)
        parser_.add_argument("name", metavar="NAME")
        parser_.set_defaults(run=_agent_verb, verb=verb)
    console = commands.add_parser(
        "console", parents=[common], help="attach to a VMI's serial console (Ctrl+] leaves)"
    )
    console.add_argument("name", metavar="NAME")
    console.set_defaults(run=_console)
    vnc = commands.add_parser(
        "vnc",
        parents=[common],
        help="serve a VMI's VNC display on a localhost TCP port, with a one-time password",
    )
    vnc.add_argument("name", metavar="NAME")
    vnc.add_argument("--port", type=_port, default=0, help="TCP port (default: any free one)")
    vnc.set_defaults(run=_vnc)
    screenshot = commands.add_parser(
        "screenshot", parents=[common], help="save the VMI's screen as a PNG file"
    )
    screenshot.add_argument("name", metavar="NAME")
    screenshot.add_argument("file", metavar="FILE.png", type=Path)
    screenshot.set_defaults(run=_screenshot)

    image = commands.add_parser("image", help="the local containerDisk image store")
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    image_import = image_commands.add_parser(
        "import", parents=[common], help="add a raw or qcow2 file as image REF"
    )
    image_import.add_argument("ref", metavar="REF")
    image_import.add_argument("file", metavar="FILE", type=Path)
    image_import.set_defaults(run=_image_import)
    image_list = image_commands.add_parser("list", parents=[common], help="list stored images")
    image_list.set_defaults(run=_image_list)
    return parser


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=default,
        metavar="DIR",
        help="keep every vmid path under DIR instead of / (tests, demos)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="daemon configuration (default: ROOT/etc/vmid/vmid.yaml)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=default,
        metavar="NS",
        help=f"the VMI's namespace (default: {names.DEFAULT_NAMESPACE}), as kubectl's",
    )


def _setup(args: argparse.Namespace) -> tuple[Config, Paths]:
    paths = Paths(args.root or Path("/"))
    config_file = args.config or paths.config_file
    return load_config(config_file, required=args.config is not None), paths


def _plan_files(
    args: argparse.Namespace, files: list[Path]
) -> Iterator[tuple[Path, list[Planned], list[str]]]:
    config, paths = _setup(args)
    accelerator = accel.resolve(config.accelerator)
    for file in files:
        planned, problems = plan_file(file, config, paths, accelerator)
        yield file, planned, [str(p) for p in problems]


def _validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for file, planned, problems in _plan_files(args, args.files):
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            status = EXIT_ERROR
        elif not planned:
            print(f"{file}: no VirtualMachineInstance in this file", file=sys.stderr)
            status = EXIT_ERROR
        else:
            names = ", ".join(p.manifest.name for p in planned)
            print(f"{file}: valid: {names}")
    return status


def _render(args: argparse.Namespace) -> int:
    ((_, planned, problems),) = _plan_files(args, [args.file])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems or not planned:
        return EXIT_ERROR
    config, paths = _setup(args)
    accelerator = accel.resolve(config.accelerator)
    plans = [_as_the_daemon_plans(item, config, paths, accelerator) for item in planned]
    if args.output == "json":
        data = [plan_as_json(p) for p in plans]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return EXIT_OK
    for index, plan in enumerate(plans):
        if len(plans) > 1:
            print(("\n" if index else "") + f"# {plan.name}")
        print(render_argv(plan.argv))
    return EXIT_OK


def _as_the_daemon_plans(
    item: Planned, config: Config, paths: Paths, accelerator: Accelerator
) -> LaunchPlan:
    """The plan with the firmware UUID the daemon uses for this VMI under `paths`, or said to be
    a placeholder when the daemon has not chosen one yet."""
    vmi = item.manifest.vmi
    if not firmwareid.generated(vmi):
        return item.plan
    value = firmwareid.stored(paths.instance_state(item.manifest.key))
    if value is None:
        print(
            f"vmid: {item.manifest.key}: -uuid {item.plan.uuid} is a placeholder: the daemon "
            "gives the VMI a random firmware UUID when it first starts and keeps it until the "
            "VMI is removed (set spec.domain.firmware.uuid to choose one)",
            file=sys.stderr,
        )
        return item.plan
    plan, _ = build(firmwareid.with_uuid(vmi, value), config, paths, accelerator)
    assert plan is not None  # the same VMI but its UUID planned already
    return plan


def render_argv(argv: Sequence[str]) -> str:
    """One option per line with its value, shell-quoted, joined by backslash-newlines."""
    lines: list[str] = []
    for arg in argv:
        if lines and not arg.startswith("-") and _is_flag_only(lines[-1]):
            lines[-1] += " " + shlex.quote(arg)
        else:
            lines.append(shlex.quote(arg))
    return " \\\n    ".join(lines)


def _is_flag_only(line: str) -> bool:
    return line.startswith("-") and " " not in line


def plan_as_json(plan: LaunchPlan) -> Any:
    """The plan as JSON-ready data; file contents as text, or base64 when they are binary."""
    converter = cattrs.Converter()
    converter.register_unstructure_hook(bytes, _bytes_text)
    data = converter.unstructure(plan)
    data["prepare"] = [{"kind": type(p).__name__, **converter.unstructure(p)} for p in plan.prepare]
    return data


def _bytes_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


def _daemon(args: argparse.Namespace) -> int:
    import trio  # here, as the daemon's modules: `vmid get` and the like start faster without

    from vmid.runtime import daemon

    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    paths = Paths(args.root or Path("/"))
    config_file = args.config or paths.config_file
    trio.run(daemon.serve, paths, config_file, args.config is not None)
    return EXIT_OK


def _configure_logging(level: int) -> None:
    """One line per record on stderr; under journald, its priority prefix instead of a time."""
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # pyroute2 logs every netlink message at DEBUG; -v is for vmid's own events.
    logging.getLogger("pyroute2").setLevel(max(level, logging.INFO))


_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}  # sd-daemon(3)


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def _namespace(args: argparse.Namespace) -> str:
    return getattr(args, "namespace", None) or names.DEFAULT_NAMESPACE


def _key(obj: dict[str, Any]) -> str:
    """namespace/name of a VMI object (a status written before namespaces has none: default)."""
    metadata = obj.get("metadata", {})
    return names.key(metadata.get("namespace"), _name(obj))


def _in_scope(args: argparse.Namespace, obj: dict[str, Any]) -> bool:
    """Whether `obj` is in the namespace asked for (-n), or any (-A). A spool file's row (no
    name, so no namespace vmid can trust) is in every one."""
    wanted = None if getattr(args, "all_namespaces", False) else _namespace(args)
    nameless = not obj.get("metadata", {}).get("name")
    return wanted is None or nameless or names.split(_key(obj))[0] == wanted


def _not_found(args: argparse.Namespace) -> str:
    return f"virtualmachineinstance {args.name!r} not found in namespace {_namespace(args)!r}"


def _find(args: argparse.Namespace, paths: Paths) -> dict[str, Any] | None:
    """The object of VMI `args.name` in namespace `args.namespace`, if it exists."""
    wanted = names.key(_namespace(args), args.name)
    return next((o for o in status.read_objects(paths) if _key(o) == wanted), None)


def _wanted(args: argparse.Namespace, obj: dict[str, Any]) -> bool:
    return _in_scope(args, obj) and args.name in (None, _name(obj))


def _get(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    if args.all_namespaces and args.name is not None:
        print("vmid: a VMI cannot be retrieved by name across all namespaces", file=sys.stderr)
        return EXIT_ERROR
    if args.watch:
        return _watch(paths, args)
    objects = [o for o in status.read_objects(paths) if _wanted(args, o)]
    if args.name is not None and not objects:
        print(f"vmid: {_not_found(args)}", file=sys.stderr)
        return EXIT_ERROR
    if args.output in ("yaml", "json"):
        data = objects[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": objects}
        _print_data(data, args.output)
        return EXIT_OK
    if not objects:  # as kubectl: the daemon runs and has no VMI there
        where = "" if args.all_namespaces else f" in {_namespace(args)} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return EXIT_OK
    print(_table(objects, _Columns.of(args)))
    for obj in objects:  # a manifest refused (a VMI's, or a spool file's): its problems
        for c in obj.get("status", {}).get("conditions", []):
            if c.get("type") == "Synchronized" and c.get("status") == "False":
                print(f"{_name(obj)}: {c.get('message', '')}", file=sys.stderr)
    return EXIT_OK


def _name(obj: dict[str, Any]) -> str:
    """The VMI's name; `<FILE>` for a spool file whose problems no VMI shows (it has no name
    that can be trusted)."""
    metadata = obj.get("metadata", {})
    if metadata.get("name"):
        return str(metadata["name"])
    file = metadata.get("annotations", {}).get("vmid.io/manifest-file", "?")
    return f"<{Path(file).name}>"


@attrs.frozen
class _Columns:
    """Which columns `vmid get` prints: -o wide adds PAUSED and PID, -A a NAMESPACE first."""

    wide: bool
    namespaces: bool

    @classmethod
    def of(cls, args: argparse.Namespace) -> _Columns:
        return cls(args.output == "wide", bool(getattr(args, "all_namespaces", False)))

    @property
    def header(self) -> list[str]:
        header = ["NAME", "AGE", "PHASE", "IP", "READY"] + (["PAUSED", "PID"] if self.wide else [])
        return ["NAMESPACE", *header] if self.namespaces else header

    def identity(self, obj: dict[str, Any]) -> list[str]:
        """The cells naming the VMI: its namespace (-A) and name."""
        namespace = obj.get("metadata", {}).get("namespace", names.DEFAULT_NAMESPACE)
        return [namespace if obj.get("metadata", {}).get("name") else "", _name(obj)]

    def partial(self, obj: dict[str, Any], *cells: str) -> list[str]:
        """A row of the VMI's identity and `cells`, the other columns empty."""
        identity = self.identity(obj)[0 if self.namespaces else 1 :]
        row = [*identity, *cells]
        return row + [""] * (len(self.header) - len(row))

    def sans_age(self, row: list[str] | None) -> list[str] | None:
        age = self.header.index("AGE")
        return None if row is None else row[:age] + row[age + 1 :]


def _watch(paths: Paths, args: argparse.Namespace) -> int:
    """Like `kubectl get -w`: the list, then every status as it is written (a table row, or a
    document with `-o json|yaml`), until the daemon stops: said on stderr, exit 0."""
    watch = statuswatch.StatusWatch(paths)
    try:
        found = [c for c in watch.current() if _wanted(args, c.obj or {})]
        if args.name is not None and not found:
            print(f"vmid: {_not_found(args)}", file=sys.stderr)
            return EXIT_ERROR
        printer = _WatchPrinter(args.output, _Columns.of(args), found)
        if not watch.daemon_running():
            print("vmid: the daemon is not running: nothing will change", file=sys.stderr)
            return EXIT_OK
        for change in watch.changes():
            if _wanted(args, change.obj or printer.last(change.path)):
                printer.change(change)
        print("vmid: the daemon stopped", file=sys.stderr)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        watch.close()


class _WatchPrinter:
    """Prints a watch: rows as kubectl's table does, or one JSON/YAML document per change."""

    def __init__(
        self, output: str | None, columns: _Columns, found: list[statuswatch.Change]
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
        return f"<_WatchPrinter output={self._output} shown={len(self._shown)}>"

    def last(self, path: Path) -> dict[str, Any]:
        return self._shown.get(path) or {}

    def change(self, change: statuswatch.Change) -> None:
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
        print("\n".join(_columns([self._columns.header, *rows]).splitlines()[1:]), flush=True)

    def _document(self, obj: dict[str, Any]) -> None:
        if self._output == "yaml" and self._documents:
            print("---")
        _print_data(obj, self._output or "json")
        sys.stdout.flush()
        self._documents += 1


def _missed(last: dict[str, Any] | None, obj: dict[str, Any]) -> list[str]:
    """The phases `obj` passed through since `last` (None: not seen before) that no read saw:
    each lasted less than it took to read it (a 100 ms `Running`). A new object's first phase
    (`Pending`, where every VMI starts, a refused one too) is not one of them."""
    now = _transitions(obj)
    seen = _transitions(last) if last is not None else now[:1]
    if now[: len(seen)] != seen:
        seen = now[:1]  # a new VMI of that name
    return [t.get("phase", "") for t in now[len(seen) : -1]]


def _transitions(obj: dict[str, Any]) -> list[dict[str, str]]:
    return list(obj.get("status", {}).get("phaseTransitionTimestamps", []))


def _passed(obj: dict[str, Any], phase: str, columns: _Columns) -> list[str]:
    """The row of a phase no read saw: what else it showed then is not known."""
    created = obj.get("metadata", {}).get("creationTimestamp")
    return columns.partial(obj, _age(created), phase)


def _print_data(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(data, sys.stdout)


def _table(objects: list[dict[str, Any]], columns: _Columns) -> str:
    return _columns([columns.header] + [_row(o, columns) for o in objects])


def _columns(rows: list[list[str]]) -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def _row(obj: dict[str, Any], columns: _Columns) -> list[str]:
    st = obj.get("status", {})
    conditions = {c["type"]: c["status"] for c in st.get("conditions", [])}
    interfaces = st.get("interfaces") or [{}]
    row = [
        _age(obj.get("metadata", {}).get("creationTimestamp")),
        _phase(obj),
        interfaces[0].get("ipAddress", ""),
        conditions.get("Ready", "False"),
    ]
    if columns.wide:
        row += [conditions.get("Paused", "False"), str(st.get("qemu", {}).get("pid") or "")]
    return columns.partial(obj, *row)


def _phase(obj: dict[str, Any]) -> str:
    """The phase, or `Terminating` while vmid stops its QEMU (as kubectl shows a pod)."""
    phase: str = obj.get("status", {}).get("phase", "")
    ending = "deletionTimestamp" in obj.get("metadata", {})
    return "Terminating" if ending and phase not in ("Succeeded", "Failed") else phase


def _termination(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """kubectl describe's lines for an object being deleted: how long the grace still lasts."""
    began, grace = metadata["deletionTimestamp"], metadata.get("deletionGracePeriodSeconds", 0)
    left = int(_parse_time(began).timestamp() + grace - time.time())
    lasts = f"lasts {left}s" if left > 0 else "the grace period is over: being killed"
    return [("Status", f"Terminating ({lasts})"), ("Deletion", f"{began}, grace period {grace}s")]


def _parse_time(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    then = _parse_time(stamp)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _describe(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    obj = _find(args, paths)
    if obj is None:
        print(f"vmid: {_not_found(args)}", file=sys.stderr)
        return EXIT_ERROR
    st, spec = obj.get("status", {}), obj.get("spec", {})
    domain = spec.get("domain", {})
    cpu, qemu = domain.get("cpu", {}), st.get("qemu", {})
    fields = [
        ("Name", args.name),
        ("Namespace", _namespace(args)),
        ("Created", obj.get("metadata", {}).get("creationTimestamp", "")),
        ("Phase", st.get("phase", "")),
        *(_termination(obj.get("metadata", {})) if _phase(obj) == "Terminating" else []),
        ("Reason", st.get("reason", "")),
        (
            "CPU",
            f"{cpu.get('sockets', 1)} sockets x {cpu.get('cores', 1)} cores x "
            f"{cpu.get('threads', 1)} threads, model {cpu.get('model', '')}",
        ),
        ("Memory", domain.get("memory", {}).get("guest", "")),
        ("QEMU", f"pid {qemu.get('pid')}" if qemu.get("pid") else ""),
        ("QMP", qemu.get("qmpSocket") or ""),
    ]
    for label, value in fields:
        print(f"{label + ':':<12}{value}")
    sections = [
        (
            "Disks",
            ["NAME", "TARGET", "BUS"],
            [
                [
                    d.get("name", ""),
                    next(iter(set(d) & {"disk", "cdrom", "lun"}), ""),
                    next((d[k].get("bus", "") for k in ("disk", "cdrom", "lun") if k in d), ""),
                ]
                for d in domain.get("devices", {}).get("disks", [])
            ],
        ),
        (
            "Interfaces",
            ["NAME", "MAC", "IP"],
            [
                [i.get("name", ""), i.get("mac", ""), i.get("ipAddress", "")]
                for i in st.get("interfaces", [])
            ],
        ),
        (
            "Conditions",
            ["TYPE", "STATUS", "REASON", "MESSAGE"],
            [
                [c["type"], c["status"], c.get("reason", ""), c.get("message", "")]
                for c in st.get("conditions", [])
            ],
        ),
        (
            "Phase history",
            ["PHASE", "SINCE"],
            [
                [t["phase"], t["phaseTransitionTimestamp"]]
                for t in st.get("phaseTransitionTimestamps", [])
            ],
        ),
        (
            "Events",
            ["TYPE", "REASON", "AGE", "FROM", "MESSAGE"],
            [
                [e["type"], e["reason"], _seen(e), _source(e), _printable(e["message"])]
                for e in events.read(paths.events, *events.identity(obj))
            ],
        ),
    ]
    for title, header, rows in sections:
        print(f"{title}:")
        body = _columns([header, *rows]) if rows else "<none>"
        print("\n".join(f"  {line}" for line in body.splitlines()))
    return EXIT_OK


EVENT_HEADER = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
#: How long `vmid events -w` waits on the store before it looks whether the daemon still runs.
EVENTS_WATCH_SECONDS = 1.0


def _events(args: argparse.Namespace) -> int:
    """Like `kubectl get events`, of VMIs only, oldest last seen first."""
    paths = Paths(args.root or Path("/"))
    directory = paths.events
    namespace = None if args.all_namespaces else _namespace(args)
    if args.watch:
        return _watch_events(paths, namespace, args)
    found = events.read(directory, namespace, args.name)
    if args.output in ("yaml", "json"):
        _print_data({"apiVersion": "v1", "kind": "List", "items": found}, args.output)
    elif found:
        print(_columns(_event_table(found, namespace is None)))
    else:
        where = f" in {namespace} namespace." if namespace else ""
        print(f"No resources found{where}", file=sys.stderr)
    return EXIT_OK


def _watch_events(paths: Paths, namespace: str | None, args: argparse.Namespace) -> int:
    """Like `kubectl get events -w`: the events so far, then each one as it comes or is
    counted again, until the daemon stops (inotify; Ctrl+C ends it too)."""
    directory = paths.events
    if not pidlock.running(paths.daemon_pid):
        _print_events(events.read(directory, namespace, args.name), namespace, args.output, {})
        print("vmid: the daemon is not running: no events will come", file=sys.stderr)
        return EXIT_OK
    follow = events.Follow(directory)  # before reading: what comes meanwhile is not missed
    try:
        shown: dict[str, int] = {}
        changed: set[str] | None = None
        while True:
            found = events.read(directory, namespace, args.name, changed)
            _print_events(found, namespace, args.output, shown)
            if not pidlock.running(paths.daemon_pid):
                print("vmid: the daemon stopped", file=sys.stderr)
                return EXIT_OK
            changed = follow.wait(EVENTS_WATCH_SECONDS)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        follow.close()


def _print_events(
    found: list[dict[str, Any]], namespace: str | None, output: str | None, shown: dict[str, int]
) -> None:
    """Print the events not `shown` yet (or counted since), then remember them as shown."""
    fresh = [e for e in found if shown.get(e["metadata"]["name"]) != e["count"]]
    for event in fresh:
        if output == "json":
            print(json.dumps(event, indent=2))
        elif output == "yaml":
            print("---")
            _print_data(event, "yaml")
    if fresh and output is None:
        lines = _columns(_event_table(fresh, namespace is None)).splitlines()
        print("\n".join(lines[1:] if shown else lines))
    sys.stdout.flush()
    shown.update({e["metadata"]["name"]: e["count"] for e in found})


def _event_table(found: list[dict[str, Any]], namespaces: bool) -> list[list[str]]:
    """kubectl's columns; with `namespaces` (-A), a NAMESPACE column first."""
    header = (["NAMESPACE"] if namespaces else []) + EVENT_HEADER
    return [header] + [_event_row(e, namespaces) for e in found]


def _event_row(event: dict[str, Any], namespaces: bool) -> list[str]:
    involved = event["involvedObject"]
    row = [
        _age(event["lastTimestamp"]),
        event["type"],
        event["reason"],
        f"virtualmachineinstance/{involved.get('name', '')}",
        _printable(event["message"]),
    ]
    return [str(involved.get("namespace", "")), *row] if namespaces else row


def _seen(event: dict[str, Any]) -> str:
    """kubectl describe's AGE: `5m`, or `5m (x3 over 20m)` for an event counted again."""
    last = _age(event["lastTimestamp"])
    if event["count"] == 1:
        return last
    return f"{last} (x{event['count']} over {_age(event['firstTimestamp'])})"


def _source(event: dict[str, Any]) -> str:
    source = event.get("source") or {}
    return ", ".join(str(source[k]) for k in ("component", "host") if source.get(k))


def _printable(text: str) -> str:
    """One line, control characters escaped: a message quotes QEMU, which quotes files."""
    return _UNSAFE.sub(_escape_char, text.replace("\n", " "))


def _logs(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    log_file = paths.instance_logs(names.key(_namespace(args), args.name)) / "console.log"
    try:
        for path in logfile.oldest_first(log_file):  # the rotated files, then the current one
            with path.open("rb") as stream:
                if sys.stdout.isatty():
                    _copy_escaped(stream, sys.stdout.buffer)
                else:
                    shutil.copyfileobj(stream, sys.stdout.buffer)
    except FileNotFoundError:
        if not paths.logs.is_dir():
            raise status.no_state(paths.logs) from None
        print(f"vmid: no console log for {args.name!r} ({log_file})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


#: What a guest's output may not send to the admin's terminal: control characters (C0, DEL,
#: C1) but newline, tab and the carriage return of a CRLF, and bytes that are not UTF-8.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\udc80-\udcff]|\r(?!\n)")
_CHUNK = 65536


def _copy_escaped(source: BinaryIO, target: BinaryIO) -> None:
    """Copy a guest's console output with control characters shown as `\x1b`, as journalctl
    does, so an escape sequence in it cannot drive the terminal."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    while chunk := source.readline(_CHUNK):
        text = decoder.decode(chunk)
        target.write(_UNSAFE.sub(_escape_char, text).encode())
    target.write(_UNSAFE.sub(_escape_char, decoder.decode(b"", final=True)).encode())


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00 if code >= 0xDC80 else code:02x}"


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("the arguments must be a JSON object")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 to 65535)")
    return int(text)


def _running(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The qmp.sock and status of a Running VMI, or ControlError saying why not."""
    paths = Paths(args.root or Path("/"))
    obj = _find(args, paths)
    if obj is None:
        raise control.ControlError(_not_found(args))
    st = obj.get("status", {})
    if st.get("phase") != "Running" or not st.get("qemu", {}).get("qmpSocket"):
        raise control.ControlError(f"VMI {args.name} is not running (phase {st.get('phase')})")
    return Path(st["qemu"]["qmpSocket"]), st


def _qmp(args: argparse.Namespace) -> int:
    qmp_socket, _ = _running(args)
    result = control.execute(qmp_socket, args.command, args.arguments)
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _lifecycle(args: argparse.Namespace) -> int:
    qmp_socket, st = _running(args)
    paused = any(c["type"] == "Paused" and c["status"] == "True" for c in st.get("conditions", []))
    # KubeVirt's refusals (pkg/virt-api/rest/lifecycle.go).
    if args.action == "pause" and paused:
        raise control.ControlError(f"VMI {args.name} is already paused")
    if args.action == "unpause" and not paused:
        raise control.ControlError(f"VMI {args.name} is not paused")
    if args.action == "soft-reboot":
        _soft_reboot(args.name, qmp_socket, st, paused)
    else:
        command = {"pause": "stop", "unpause": "cont", "reset": "system_reset"}[args.action]
        control.execute(qmp_socket, command)
    print(f"VMI {args.name} was scheduled to {args.action}")
    return EXIT_OK


ESCAPE = b"\x1d"  # Ctrl+], as virtctl console and telnet


def _console(args: argparse.Namespace) -> int:
    qmp_socket, st = _running(args)
    path = st.get("qemu", {}).get("consoleSocket")
    if not path:
        raise control.ControlError(f"VMI {args.name} has no serial console")
    with _console_lock(args.name, Path(path)):
        # QEMU serves one client at a time: a second one's connect() succeeds, and what it
        # types waits unread until the first leaves.
        if control.console_attached(qmp_socket):
            raise control.ControlError(
                f"{args.name}: its console is already attached (another client is connected "
                f"to {path})"
            )
        try:
            sock = unixsock.connect(Path(path))
        except OSError as exc:
            raise control.ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        print(
            f"Successfully connected to {args.name} console. Press Ctrl+] to exit console.",
            file=sys.stderr,
            flush=True,
        )
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _interrupt)  # so the terminal is restored on those too
        with sock, _raw_terminal(sys.stdin.fileno()):
            _relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
    print(f"\r\nDisconnected from {args.name} console.", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _console_lock(name: str, console_socket: Path) -> Iterator[None]:
    """Held while attached, on the socket's directory: two `vmid console` started at once
    would both find the console free before QEMU accepts either."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(console_socket.parent, flags)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise control.ControlError(
                f"{name}: its console is already attached (another vmid console is connected)"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _relay(sock: socket.socket, stdin: int, stdout: int) -> None:
    """Copy both ways until Ctrl+] on stdin, or the console closes (the VM is gone)."""
    readers: list[int] = [sock.fileno(), stdin]
    while True:
        ready, _, _ = select.select(readers, [], [])
        if sock.fileno() in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 65536)
            if ESCAPE in data:
                sock.sendall(data[: data.index(ESCAPE)])
                return
            if not data:
                readers.remove(stdin)  # stdin ended: keep showing the console
                continue
            sock.sendall(data)


#: VNC authentication is DES keyed by the password: QEMU uses its first 8 characters only.
VNC_PASSWORD_LENGTH = 8
_PASSWORD_ALPHABET = string.ascii_letters + string.digits  # 62**8: about 2**47.6


def _vnc(args: argparse.Namespace) -> int:
    qmp_socket, st = _running(args)
    path = st.get("qemu", {}).get("vncSocket")
    if not path:
        raise control.ControlError(f"VMI {args.name} has no graphics device")
    password = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(VNC_PASSWORD_LENGTH))
    try:
        server = socket.create_server(("127.0.0.1", args.port))
    except OSError as exc:
        raise control.ControlError(
            f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}"
        ) from exc
    with server:
        port = server.getsockname()[1]
        # Any local user can connect to the port: the password is what only this user knows.
        _set_vnc_password(args.name, qmp_socket, password)
        try:
            print(
                f"VNC of {args.name} on 127.0.0.1:{port} (e.g. vncviewer 127.0.0.1::{port}); "
                f"Ctrl+C to stop\npassword: {password} (one-time: VNC passwords are DES keys "
                "of 8 characters; it expires when this command ends)",
                flush=True,
            )
            _serve_vnc(server, Path(path))
        finally:
            _expire_vnc_password(qmp_socket)
    return EXIT_OK


def _set_vnc_password(name: str, qmp_socket: Path, password: str) -> None:
    arguments = {"protocol": "vnc", "password": password}
    try:
        control.execute(qmp_socket, "set_password", arguments)
    except control.ControlError as exc:
        # A QEMU started by an older vmid serves VNC without a password: never relay it.
        raise control.ControlError(
            f"cannot set a VNC password on {name} ({exc}); a VMI started by an older vmid "
            "has a display without password: recreate it to use vmid vnc"
        ) from exc


def _expire_vnc_password(qmp_socket: Path) -> None:
    try:
        control.execute(qmp_socket, "expire_password", {"protocol": "vnc", "time": "now"})
    except control.ControlError as exc:  # the VM is gone, and its password with it
        print(f"vmid: the VNC password was not expired: {exc}", file=sys.stderr)


def _serve_vnc(server: socket.socket, vnc_socket: Path) -> None:
    """Relay every viewer to the VM's socket until Ctrl+C, SIGTERM or SIGHUP."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)  # so the password is expired on those too
    try:
        while True:
            client, _ = server.accept()
            threading.Thread(target=_proxy, args=(client, vnc_socket), daemon=True).start()
    except KeyboardInterrupt:
        return


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _proxy(client: socket.socket, vnc_socket: Path) -> None:
    """One viewer's connection, relayed to the VM's VNC unix socket until either side closes."""
    with client:
        try:
            upstream = unixsock.connect(vnc_socket)
        except OSError:
            return
        with upstream:
            peers = {client.fileno(): upstream, upstream.fileno(): client}
            while True:
                ready, _, _ = select.select(list(peers), [], [])
                for fd in ready:
                    source = client if fd == client.fileno() else upstream
                    data = source.recv(65536)
                    if not data:
                        return
                    peers[fd].sendall(data)


SOFT_REBOOT_TIMEOUT = 120.0


def _agent_verb(args: argparse.Namespace) -> int:
    _, st = _running(args)
    print(agentcli.show(st, args.verb))
    return EXIT_OK


def _soft_reboot(name: str, qmp_socket: Path, st: dict[str, Any], paused: bool) -> None:
    # KubeVirt's refusals and choice (pkg/virt-launcher/virtwrap/manager.go SoftRebootVMI):
    # the guest agent when it is connected, else the ACPI power button.
    if paused:
        raise control.ControlError(f"VMI {name} is paused")
    if agentcli.agent_connected(st):
        agentcli.request(st, "soft-reboot")
        return
    if not st.get("qemu", {}).get("acpi", True):
        raise control.ControlError(
            f"VMI {name} neither have the agent connected nor the ACPI feature enabled"
        )
    control.soft_reboot(qmp_socket, SOFT_REBOOT_TIMEOUT)


def _screenshot(args: argparse.Namespace) -> int:
    qmp_socket, _ = _running(args)
    target = args.file.absolute()
    # QEMU (running as the VM's own uid) writes into its own working directory, the VM's
    # runtime directory; vmid moves the file where it was asked.
    shot = qmp_socket.parent / f"screenshot-{os.getpid()}.png"
    try:
        control.execute(qmp_socket, "screendump", {"filename": shot.name, "format": "png"})
        # Never through a symlink: that directory may be an unprivileged QEMU user's.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        with os.fdopen(os.open(shot, flags), "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise control.ControlError(f"{shot} is not a regular file")
            with target.open("wb") as copy:
                shutil.copyfileobj(source, copy)
    finally:
        shot.unlink(missing_ok=True)
    print(f"saved {target}")
    return EXIT_OK


def _image_import(args: argparse.Namespace) -> int:
    import trio

    from vmid.host.storage import ImageStore

    config, paths = _setup(args)
    store = ImageStore(paths.images, config.qemuImg)
    stored = trio.run(store.add, args.ref, args.file)
    print(f"imported {stored.ref} ({stored.format}, {stored.virtualSize} bytes)")
    return EXIT_OK


def _image_list(args: argparse.Namespace) -> int:
    from vmid.host.storage import ImageStore

    config, paths = _setup(args)
    images = ImageStore(paths.images, config.qemuImg).list()
    rows = [["REF", "FORMAT", "SIZE"]] + [[i.ref, i.format, str(i.virtualSize)] for i in images]
    print(_columns(rows))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
