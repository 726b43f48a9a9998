"""`vmid events`: VMIs' events as kubectl get events prints them (they outlive their VMI), and
`events -w`, which prints each one as it comes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vmid.cli import common, show
from vmid.cli.common import EXIT_OK, Commands
from vmid.host import pidlock
from vmid.paths import Paths


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    events_ = commands.add_parser(
        "events", parents=[flags], help="VMIs' events, like kubectl get events (kept 1 h after)"
    )
    events_.add_argument("name", nargs="?", metavar="NAME", help="only this VMI's events")
    events_.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace's events"
    )
    events_.add_argument(
        "-o", "--output", choices=("yaml", "json"), help="the Event objects, as a List"
    )
    events_.add_argument("-w", "--watch", action="store_true", help="print events as they come")
    events_.set_defaults(run=_events)
    common.explain(
        events_,
        "List the events of the VMIs of a namespace (or one VMI's), as kubectl get events: "
        "LAST SEEN, TYPE, REASON, OBJECT, MESSAGE. A removed VMI's events are kept a while "
        "(events.keepAfterRemovalSeconds, 1 h).",
        "vmid events                # namespace default\nvmid events web            # one VMI's\n"
        "vmid events -A -w          # every namespace's, then each as it comes",
    )


EVENT_HEADER = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
#: How long `vmid events -w` waits on the store before it looks whether the daemon still runs.
EVENTS_WATCH_SECONDS = 1.0


def _events(args: argparse.Namespace) -> int:
    """Like `kubectl get events`, of VMIs only, oldest last seen first."""
    from vmid.runtime import events  # here: the verbs registered beside this one do without

    paths = Paths(args.root or Path("/"))
    directory = paths.events
    namespace = None if args.all_namespaces else common.namespace_of(args)
    if args.watch:
        return _watch_events(paths, namespace, args)
    found = events.read(directory, namespace, args.name)
    if args.output in ("yaml", "json"):
        show.print_data({"apiVersion": "v1", "kind": "List", "items": found}, args.output)
    elif found:
        print(show.aligned(_event_table(found, namespace is None)))
    else:
        where = f" in {namespace} namespace." if namespace else ""
        print(f"No resources found{where}", file=sys.stderr)
    return EXIT_OK


def _watch_events(paths: Paths, namespace: str | None, args: argparse.Namespace) -> int:
    """Like `kubectl get events -w`: the events so far, then each one as it comes or is
    counted again, until the daemon stops (inotify; Ctrl+C ends it too)."""
    from vmid.runtime import events

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
            show.print_data(event, "yaml")
    if fresh and output is None:
        lines = show.aligned(_event_table(fresh, namespace is None)).splitlines()
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
        show.age(event["lastTimestamp"]),
        event["type"],
        event["reason"],
        f"{str(involved.get('kind', 'VirtualMachineInstance')).lower()}/{involved.get('name', '')}",
        show.printable(event["message"]),
    ]
    return [str(involved.get("namespace", "")), *row] if namespaces else row


def seen(event: dict[str, Any]) -> str:
    """kubectl describe's AGE: `5m`, or `5m (x3 over 20m)` for an event counted again."""
    last = show.age(event["lastTimestamp"])
    if event["count"] == 1:
        return last
    return f"{last} (x{event['count']} over {show.age(event['firstTimestamp'])})"


def source(event: dict[str, Any]) -> str:
    source = event.get("source") or {}
    return ", ".join(str(source[k]) for k in ("component", "host") if source.get(k))
