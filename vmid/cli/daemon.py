"""`vmid daemon`: logging set up for a terminal or journald, then the daemon (trio is imported
only here and by `vmid image import`, so the reading verbs start fast)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vmid.cli import common
from vmid.cli.common import EXIT_OK, Commands
from vmid.paths import Paths


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    meaningful = common.flags_for(flags, "root", "config")
    daemon = commands.add_parser("daemon", parents=[meaningful], help="run the vmid daemon")
    daemon.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    daemon.set_defaults(run=run)
    common.explain(
        daemon,
        "Watch the spool (ROOT/etc/vmid/instances) and run its VMIs with QEMU until SIGTERM, "
        "then stop them gracefully (onDaemonStop: keep leaves them running). What systemd "
        "starts (vmid.service).",
        "vmid daemon -v                # in the foreground, debug messages\n"
        "vmid daemon --root /tmp/demo  # every path under /tmp/demo",
    )


def run(args: argparse.Namespace) -> int:
    import trio  # here, as the daemon's modules: `vmid get` and the like start faster without

    from vmid.runtime import daemon

    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    paths = Paths(args.root or Path("/"))
    config_file = args.config or paths.config_file
    trio.run(daemon.serve, paths, config_file, args.config is not None)
    return EXIT_OK


def _configure_logging(level: int) -> None:
    """One line per record on stderr; under systemd, one journald record each, with its VMI as
    a field (`journalctl -u vmid VMID_VMI=default/web`: vmid/host/journal.py)."""
    from vmid.host import journal

    handler: logging.Handler
    if journal.stderr_is_journal():
        handler = journal.JournalHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # pyroute2 logs every netlink message at DEBUG; -v is for vmid's own events.
    logging.getLogger("pyroute2").setLevel(max(level, logging.INFO))
