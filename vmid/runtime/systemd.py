"""sd_notify(3) for the daemon: readiness, status lines, stopping, timeouts and the watchdog.

Without `NOTIFY_SOCKET` (not under systemd) every call does nothing. A failure to notify is
logged at DEBUG and never raised: systemd's bookkeeping must not stop a VM.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)


class Notifier:
    """Sends `KEY=value` datagrams to the socket systemd named in the environment."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@' (sd_notify(3)).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_pid = environ.get("WATCHDOG_PID")
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        ours = watchdog_pid is None or watchdog_pid == str(os.getpid())
        self.watchdog_seconds = (
            int(watchdog_usec) / 1e6 if watchdog_usec.isdigit() and ours else None
        )

    def __repr__(self) -> str:
        return f"<Notifier socket={self._address!r} watchdog={self.watchdog_seconds}>"

    def notify(self, **fields: str) -> None:
        """Send one message: `notify(READY="1", STATUS="2 running")`."""
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def extend_timeout(self, seconds: float) -> None:
        """Ask systemd for `seconds` more before it gives up on a start or stop."""
        self.notify(EXTEND_TIMEOUT_USEC=str(int(seconds * 1e6)))

    async def watchdog(self) -> None:
        """Ping the watchdog at half its interval, while the event loop is alive.

        **Cancellation:** the only way this returns.
        """
        if self.watchdog_seconds is None:
            await trio.sleep_forever()
            return
        while True:
            self.notify(WATCHDOG="1")
            await trio.sleep(self.watchdog_seconds / 2)
