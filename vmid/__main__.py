"""The `vmid` command's entry point: hold the daemon's signals first, then run the CLI.

Python's default for SIGTERM and SIGHUP is to die; held (blocked) from the first line, a
`systemctl reload` or `kill -HUP` that comes while the daemon is still importing and starting
is delivered once it can answer it, instead of killing it.
"""

from __future__ import annotations

import signal
import sys

#: What `vmid daemon` answers; `vmid.cli` releases them at once for every other command.
HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main() -> int:
    """Run one vmid command with the daemon's signals held until it is ready for them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    from vmid import cli  # after the mask: importing takes a noticeable moment

    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
