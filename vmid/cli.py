"""The `vmid` command: argument parsing and output. The only module that prints.

Global flags (`--root`, `--config`) work before or after the subcommand, as kubectl's do.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import contextlib
import datetime
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

import cattrs
import trio
from ruamel.yaml import YAML

from vmid import control
from vmid.__main__ import HELD_SIGNALS
from vmid.config import Config, Paths, load_config
from vmid.errors import VmidError
from vmid.host import accel, logfile, unixsock
from vmid.host.storage import ImageStore
from vmid.manifests import Planned, plan_file
from vmid.plan.model import LaunchPlan
from vmid.runtime import daemon, events, status

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one vmid command; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.run is not _daemon:  # only the daemon answers them itself (vmid.__main__)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
    try:
        result: int = args.run(args)
    except VmidError as exc:
        print(f"vmid: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
    except OSError as exc:  # a file the command needs: say which and why, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        hint = "; run as root" if isinstance(exc, PermissionError) else ""
        print(f"vmid: {where}{exc.strerror or exc}{hint}", file=sys.stderr)
        return EXIT_ERROR
    return result


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
        "render", parents=[common], help="print the QEMU command line vmid would run"
    )
    render.add_argument("file", metavar="FILE", type=Path)
    render.add_argument("-o", "--output", choices=("args", "json"), default="args")
    render.set_defaults(run=_render)

    daemon = commands.add_parser("daemon", parents=[common], help="run the vmid daemon")
    daemon.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    daemon.set_defaults(run=_daemon)

    get = commands.add_parser("get", parents=[common], help="list VMIs, like kubectl get vmi")
    get.add_argument("name", nargs="?", metavar="NAME")
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
    events_.add_argument("-n", "--namespace", default=events.DEFAULT_NAMESPACE, metavar="NS")
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
    vnc.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
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
            status = EXIT_INVALID
        elif not planned:
            print(f"{file}: no VirtualMachineInstance in this file", file=sys.stderr)
            status = EXIT_INVALID
        else:
            names = ", ".join(p.manifest.name for p in planned)
            print(f"{file}: valid: {names}")
    return status


def _render(args: argparse.Namespace) -> int:
    ((_, planned, problems),) = _plan_files(args, [args.file])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems or not planned:
        return EXIT_INVALID
    if args.output == "json":
        plans = [plan_as_json(p.plan) for p in planned]
        print(json.dumps(plans[0] if len(plans) == 1 else plans, indent=2))
        return EXIT_OK
    for index, item in enumerate(planned):
        if len(planned) > 1:
            print(("\n" if index else "") + f"# {item.plan.name}")
        print(render_argv(item.plan.argv))
    return EXIT_OK


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


def _get(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    objects = status.read_objects(paths.runtime)
    if args.name is not None:
        objects = [o for o in objects if o.get("metadata", {}).get("name") == args.name]
        if not objects:
            print(f"vmid: virtualmachineinstance {args.name!r} not found", file=sys.stderr)
            return EXIT_INVALID
    if args.watch:
        return _watch(paths, args)
    if args.output in ("yaml", "json"):
        data = objects[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": objects}
        _print_data(data, args.output)
        return EXIT_OK
    print(_table(objects, wide=args.output == "wide"))
    return EXIT_OK


WATCH_INTERVAL = 0.25


def _watch(paths: Paths, args: argparse.Namespace) -> int:
    """Like `kubectl get -w`: the table, then a row for every VMI whose row changes."""
    wide = args.output == "wide"
    header = ["NAME", "AGE", "PHASE", "IP", "READY"] + (["PAUSED", "PID"] if wide else [])
    shown: dict[str, list[str]] = {}
    first = True
    try:
        while True:
            rows = {}
            for obj in status.read_objects(paths.runtime):
                name = obj.get("metadata", {}).get("name", "?")
                if args.name in (None, name):
                    rows[name] = _row(obj, wide)
            # AGE changes every second; only the other columns make a change.
            changed = [r for n, r in rows.items() if _sans_age(shown.get(n)) != _sans_age(r)]
            gone = [[n, "", "Deleted"] + [""] * (len(header) - 3) for n in shown if n not in rows]
            if changed or gone or first:
                lines = _columns([header, *changed, *gone]).splitlines()
                print("\n".join(lines if first else lines[1:]), flush=True)
                first = False
            shown = rows
            time.sleep(WATCH_INTERVAL)
    except KeyboardInterrupt:
        return EXIT_OK


def _sans_age(row: list[str] | None) -> list[str] | None:
    return None if row is None else row[:1] + row[2:]


def _print_data(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(data, sys.stdout)


def _table(objects: list[dict[str, Any]], wide: bool) -> str:
    header = ["NAME", "AGE", "PHASE", "IP", "READY"] + (["PAUSED", "PID"] if wide else [])
    return _columns([header] + [_row(o, wide) for o in objects])


def _columns(rows: list[list[str]]) -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def _row(obj: dict[str, Any], wide: bool) -> list[str]:
    st = obj.get("status", {})
    conditions = {c["type"]: c["status"] for c in st.get("conditions", [])}
    interfaces = st.get("interfaces") or [{}]
    row = [
        obj.get("metadata", {}).get("name", "?"),
        _age(obj.get("metadata", {}).get("creationTimestamp")),
        st.get("phase", ""),
        interfaces[0].get("ipAddress", ""),
        conditions.get("Ready", "False"),
    ]
    if wide:
        row += [conditions.get("Paused", "False"), str(st.get("qemu", {}).get("pid") or "")]
    return row


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _describe(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    found = [
        o
        for o in status.read_objects(paths.runtime)
        if o.get("metadata", {}).get("name") == args.name
    ]
    if not found:
        print(f"vmid: virtualmachineinstance {args.name!r} not found", file=sys.stderr)
        return EXIT_INVALID
    obj = found[0]
    st, spec = obj.get("status", {}), obj.get("spec", {})
    domain = spec.get("domain", {})
    cpu, qemu = domain.get("cpu", {}), st.get("qemu", {})
    fields = [
        ("Name", args.name),
        ("Created", obj.get("metadata", {}).get("creationTimestamp", "")),
        ("Phase", st.get("phase", "")),
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
        print(f"{label + ':':<10}{value}")
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
    directory = Paths(args.root or Path("/")).events
    namespace = None if args.all_namespaces else args.namespace
    if args.watch:
        return _watch_events(directory, namespace, args)
    found = events.read(directory, namespace, args.name)
    if args.output in ("yaml", "json"):
        _print_data({"apiVersion": "v1", "kind": "List", "items": found}, args.output)
    elif found:
        print(_columns(_event_table(found, namespace is None)))
    else:
        where = f" in {namespace} namespace." if namespace else ""
        print(f"No resources found{where}", file=sys.stderr)
    return EXIT_OK


def _watch_events(directory: Path, namespace: str | None, args: argparse.Namespace) -> int:
    """Like `kubectl get events -w`: the events so far, then each one as it comes or is
    counted again, until the daemon stops (inotify; Ctrl+C ends it too)."""
    if not events.daemon_running(directory):
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
            if not events.daemon_running(directory):
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
    log_file = paths.instance_logs(args.name) / "console.log"
    try:
        for path in logfile.oldest_first(log_file):  # the rotated files, then the current one
            with path.open("rb") as stream:
                if sys.stdout.isatty():
                    _copy_escaped(stream, sys.stdout.buffer)
                else:
                    shutil.copyfileobj(stream, sys.stdout.buffer)
    except FileNotFoundError:
        print(f"vmid: no console log for {args.name!r} ({log_file})", file=sys.stderr)
        return EXIT_INVALID
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


def _running(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The qmp.sock and status of a Running VMI, or ControlError saying why not."""
    paths = Paths(args.root or Path("/"))
    objects = [
        o
        for o in status.read_objects(paths.runtime)
        if o.get("metadata", {}).get("name") == args.name
    ]
    if not objects:
        raise control.ControlError(f"virtualmachineinstance {args.name!r} not found")
    st = objects[0].get("status", {})
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
    _, st = _running(args)
    path = st.get("qemu", {}).get("consoleSocket")
    if not path:
        raise control.ControlError(f"VMI {args.name} has no serial console")
    try:
        sock = unixsock.connect(Path(path))
    except OSError as exc:
        raise control.ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    print(
        f"Successfully connected to {args.name} console. Press Ctrl+] to exit console.",
        file=sys.stderr,
        flush=True,
    )
    with sock, _raw_terminal(sys.stdin.fileno()):
        _relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
    print(f"\r\nDisconnected from {args.name} console.", file=sys.stderr)
    return EXIT_OK


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
    with socket.create_server(("127.0.0.1", args.port)) as server:
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


def _soft_reboot(name: str, qmp_socket: Path, st: dict[str, Any], paused: bool) -> None:
    # KubeVirt's refusals (pkg/virt-launcher/virtwrap/manager.go SoftRebootVMI); vmid has no
    # guest agent client yet, so ACPI is the only way.
    if paused:
        raise control.ControlError(f"VMI {name} is paused")
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
    config, paths = _setup(args)
    store = ImageStore(paths.state / "images", config.qemuImg)
    stored = trio.run(store.add, args.ref, args.file)
    print(f"imported {stored.ref} ({stored.format}, {stored.virtualSize} bytes)")
    return EXIT_OK


def _image_list(args: argparse.Namespace) -> int:
    config, paths = _setup(args)
    images = ImageStore(paths.state / "images", config.qemuImg).list()
    rows = [["REF", "FORMAT", "SIZE"]] + [[i.ref, i.format, str(i.virtualSize)] for i in images]
    print(_columns(rows))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
