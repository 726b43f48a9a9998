"""`vmid screenshot`: a running VMI's screen saved as a PNG file."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
from pathlib import Path

from vmid import control
from vmid.cli import common
from vmid.cli.common import EXIT_OK, Commands
from vmid.errors import ControlError


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    flags = common.flags_for(flags, "root", "namespace")  # no vmid.yaml read: no --config
    screenshot = commands.add_parser(
        "screenshot", parents=[flags], help="save the VMI's screen as a PNG file"
    )
    screenshot.add_argument("name", metavar="NAME")
    screenshot.add_argument("file", metavar="FILE.png", type=Path, help="where to save it")
    screenshot.set_defaults(run=_screenshot)
    common.explain(
        screenshot, "Save VMI NAME's screen as a PNG file.", "vmid screenshot web web.png"
    )


def _screenshot(args: argparse.Namespace) -> int:
    qmp_socket, _, _ = common.running(args)
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
                raise ControlError(f"{shot} is not a regular file")
            with target.open("wb") as copy:
                shutil.copyfileobj(source, copy)
    finally:
        shot.unlink(missing_ok=True)
    print(f"saved {target}")
    return EXIT_OK
