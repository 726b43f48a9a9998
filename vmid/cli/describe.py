"""`vmid describe`: one VMI's spec, state, conditions, phase history and events, as kubectl
describe prints them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vmid.api import names
from vmid.api.vmistatus import ObjectMeta, QemuStatus
from vmid.cli import common, show
from vmid.cli import events as event_verbs
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.config import Paths
from vmid.runtime import events


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    describe = commands.add_parser(
        "describe", parents=[flags], help="a VMI's spec, conditions, phase history and events"
    )
    describe.add_argument("name", metavar="NAME")
    describe.set_defaults(run=_describe)


def _describe(args: argparse.Namespace) -> int:
    paths = Paths(args.root or Path("/"))
    obj = common.find(args, paths)
    if obj is None:
        print(f"vmid: {common.not_found(args)}", file=sys.stderr)
        return EXIT_ERROR
    st, spec = obj.status, obj.data.get("spec", {})
    domain = spec.get("domain", {})
    cpu, qemu = domain.get("cpu", {}), st.qemu or QemuStatus()
    fields = [
        ("Name", args.name),
        ("Namespace", common.namespace_of(args)),
        ("Created", obj.metadata.creationTimestamp),
        ("Phase", str(st.phase or "")),
        *(_termination(obj.metadata) if show.phase(obj) == "Terminating" else []),
        ("Reason", st.reason),
        (
            "CPU",
            f"{cpu.get('sockets', 1)} sockets x {cpu.get('cores', 1)} cores x "
            f"{cpu.get('threads', 1)} threads, model {cpu.get('model', '')}",
        ),
        ("Memory", domain.get("memory", {}).get("guest", "")),
        ("QEMU", f"pid {qemu.pid}" if qemu.pid else ""),
        ("QMP", qemu.qmpSocket or ""),
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
            [[i.name, i.mac, i.ipAddress] for i in st.interfaces],
        ),
        (
            "Conditions",
            ["TYPE", "STATUS", "REASON", "MESSAGE"],
            [[c.type, c.status, c.reason, c.message] for c in st.conditions],
        ),
        (
            "Phase history",
            ["PHASE", "SINCE"],
            [[str(t.phase), t.phaseTransitionTimestamp] for t in st.phaseTransitionTimestamps],
        ),
        (
            "Events",
            ["TYPE", "REASON", "AGE", "FROM", "MESSAGE"],
            [
                [
                    e["type"],
                    e["reason"],
                    event_verbs.seen(e),
                    event_verbs.source(e),
                    show.printable(e["message"]),
                ]
                for e in events.read(paths.events, *names.split(obj.key))
            ],
        ),
    ]
    for title, header, rows in sections:
        print(f"{title}:")
        body = show.aligned([header, *rows]) if rows else "<none>"
        print("\n".join(f"  {line}" for line in body.splitlines()))
    return EXIT_OK


def _termination(metadata: ObjectMeta) -> list[tuple[str, str]]:
    """kubectl describe's lines for an object being deleted: how long the grace still lasts."""
    began, grace = metadata.deletionTimestamp, metadata.deletionGracePeriodSeconds or 0
    left = int(show.parse_time(began).timestamp() + grace - time.time())
    lasts = f"lasts {left}s" if left > 0 else "the grace period is over: being killed"
    return [("Status", f"Terminating ({lasts})"), ("Deletion", f"{began}, grace period {grace}s")]
