"""`vmid describe`: one VMI's spec, state, conditions, phase history and events, as kubectl
describe prints them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vmid.api import names
from vmid.api.vmistatus import ObjectMeta, QemuStatus, VMIObject
from vmid.cli import common, show, vm
from vmid.cli import events as event_verbs
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.paths import Paths


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    describe = commands.add_parser(
        "describe", parents=[flags], help="a VMI's spec, conditions, phase history and events"
    )
    describe.add_argument("name", metavar="[vm|vmi] NAME")
    describe.add_argument("kind_name", nargs="?", help=argparse.SUPPRESS)
    describe.set_defaults(run=_describe)
    common.explain(
        describe,
        "Show VMI NAME as kubectl describe does: its spec in short, its conditions, its phase "
        "history, whether it is terminating, and its events.",
        "vmid describe web\nvmid describe web -n staging",
    )


def _describe(args: argparse.Namespace) -> int:
    if vm.kind_of(args, listing=False) == "vm":
        return vm.describe(args)
    paths = Paths(args.root or Path("/"))
    obj = common.find(args, paths)
    if obj is None:
        print(f"vmid: {common.not_found(args)}", file=sys.stderr)
        return EXIT_ERROR
    for label, value in _fields(args, obj):
        print(f"{label + ':':<12}{value}")
    for title, header, rows in _sections(obj, paths):
        print(f"{title}:")
        body = show.aligned([header, *rows]) if rows else "<none>"
        print("\n".join(f"  {line}" for line in body.splitlines()))
    return EXIT_OK


def _fields(args: argparse.Namespace, obj: VMIObject) -> list[tuple[str, str]]:
    """The labelled lines at the top: identity, phase (and termination), size, QEMU."""
    st, domain = obj.status, obj.data.get("spec", {}).get("domain", {})
    cpu, qemu = domain.get("cpu", {}), st.qemu or QemuStatus()
    return [
        ("Name", args.name),
        ("Namespace", common.namespace_of(args)),
        ("Created", obj.metadata.creationTimestamp),
        ("Phase", str(st.phase or "")),
        *(_termination(obj.metadata) if show.phase(obj) == "Terminating" else []),
        ("Reason", st.reason),
        *([("FS Freeze", st.fsFreezeStatus)] if st.fsFreezeStatus else []),  # vmid freeze
        (
            "CPU",
            f"{cpu.get('sockets', 1)} sockets x {cpu.get('cores', 1)} cores x "
            f"{cpu.get('threads', 1)} threads, model {cpu.get('model', '')}",
        ),
        ("Memory", domain.get("memory", {}).get("guest", "")),
        ("QEMU", f"pid {qemu.pid}" if qemu.pid else ""),
        ("QMP", qemu.qmpSocket or ""),
    ]


def _sections(obj: VMIObject, paths: Paths) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables below them: each a title, a header and its rows."""
    from vmid.runtime import events  # here: `vmid get` and the like register this verb too

    st = obj.status
    return [
        ("Disks", ["NAME", "TARGET", "BUS"], _disks(obj)),
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


def _disks(obj: VMIObject) -> list[list[str]]:
    """The spec's disks (the defaulted manifest, as the object holds it): name, kind, bus."""
    disks = obj.data.get("spec", {}).get("domain", {}).get("devices", {}).get("disks", [])
    kinds = ("disk", "cdrom", "lun")
    return [
        [
            d.get("name", ""),
            next(iter(set(d) & set(kinds)), ""),
            next((d[k].get("bus", "") for k in kinds if k in d), ""),
        ]
        for d in disks
    ]


def _termination(metadata: ObjectMeta) -> list[tuple[str, str]]:
    """kubectl describe's lines for an object being deleted: how long the grace still lasts."""
    began, grace = metadata.deletionTimestamp, metadata.deletionGracePeriodSeconds or 0
    left = int(show.parse_time(began).timestamp() + grace - time.time())
    lasts = f"lasts {left}s" if left > 0 else "the grace period is over: being killed"
    return [("Status", f"Terminating ({lasts})"), ("Deletion", f"{began}, grace period {grace}s")]
