"""vmid's control monitor: QMP over qemu.qmp, bridged from asyncio to trio.

The only module that imports `trio_asyncio` or `qemu.qmp`. It needs a trio-asyncio loop
(`trio_asyncio.open_loop()`), which `runtime.daemon` opens once for the whole daemon.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import trio
import trio_asyncio
from qemu.qmp import EventListener, ExecuteError, Message, QMPClient, QMPError, Runstate

from vmid.errors import MonitorError

log = logging.getLogger(__name__)
# qemu.qmp logs every message at DEBUG; vmid logs what matters itself.
logging.getLogger("qemu.qmp").setLevel(logging.WARNING)

COMMAND_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def bridge() -> AsyncIterator[Any]:
    """The asyncio loop qemu.qmp runs on, inside trio: open it around everything using Monitor."""
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_unhandled)
        yield loop


def _unhandled(loop: Any, context: dict[str, Any]) -> None:
    """An error nobody awaited on the asyncio side: a monitor dropped while its reader task
    failed (QEMU gone, the daemon paused). trio-asyncio's own handler raises it into the loop,
    which ends the whole daemon, every VM's supervision with it (seen under py-spy with 200
    VMIs): it concerns one monitor at most, so it is logged."""
    log.warning("qemu.qmp: %s: %r", context.get("message"), context.get("exception"))


class _Client(QMPClient):
    """qemu.qmp's client without its message hooks: they only log each message at DEBUG, but
    format it first, logged or not (`json.dumps(indent=2)`, pure Python: 0.1-0.3 ms per
    message, a tenth of the daemon's CPU per launch)."""

    def _cb_outbound(self, msg: Message) -> Message:
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        return msg


@attrs.frozen
class Event:
    """A QMP event: its name (`SHUTDOWN`, `STOP`, ...) and its data."""

    name: str
    data: Mapping[str, Any]


class Monitor:
    """A connected QMP session on vmid's control socket of one QEMU."""

    def __init__(self, name: str, client: QMPClient) -> None:
        self._name = name
        self._client = client
        self._listener = EventListener()
        client.register_listener(self._listener)

    def __repr__(self) -> str:
        return f"<Monitor vm={self._name!r} state={self._client.runstate.name}>"

    @classmethod
    async def connect(cls, name: str, sock: socket.socket) -> Monitor:
        """Negotiate QMP on a socket already connected to QEMU's control monitor.

        The monitor owns `sock` from now on. Raises MonitorError if QEMU hangs up.

        **Cancellation:** waits for QEMU's greeting as long as the caller lets it.
        """
        client = _Client(name)
        try:
            await trio_asyncio.aio_as_trio(client.connect)(sock)
        except (QMPError, OSError, EOFError) as exc:
            sock.close()
            raise MonitorError(f"cannot talk QMP to QEMU: {exc}") from exc
        return cls(name, client)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command and return its result.

        Raises:
            MonitorError: QEMU answered with an error, went away, or took longer than
                COMMAND_TIMEOUT seconds.
        """
        with trio.move_on_after(COMMAND_TIMEOUT):
            try:
                return await trio_asyncio.aio_as_trio(self._client.execute)(command, arguments)
            except ExecuteError as exc:
                raise MonitorError(f"{command}: {exc.error_class}: {exc}") from exc
            except (QMPError, OSError, EOFError) as exc:
                raise MonitorError(f"{command}: the monitor connection failed: {exc}") from exc
        raise MonitorError(f"{command}: QEMU did not answer within {COMMAND_TIMEOUT:g} s")

    async def events(self) -> AsyncIterator[Event]:
        """Every event QEMU sends, until the connection ends."""
        get = trio_asyncio.aio_as_trio(self._listener.get)
        while True:
            yield _event(await get())

    def pending_events(self) -> list[Event]:
        """The events received but not yet taken by `events()`."""
        return [_event(m) for m in self._listener.clear()]

    async def wait_hangup(self) -> None:
        """Wait until QEMU has closed the connection, so every event it sent has been read."""
        await trio_asyncio.aio_as_trio(_hangup)(self._client)

    async def aclose(self) -> None:
        """Close the session. EOF from a QEMU that already quit is expected, not an error."""
        with trio.CancelScope(shield=True), trio.move_on_after(COMMAND_TIMEOUT):
            try:
                await trio_asyncio.aio_as_trio(self._client.disconnect)()
            except (QMPError, OSError, EOFError) as exc:
                log.debug("%s: monitor closed: %s", self._name, exc)


def _event(message: Message) -> Event:
    data = message.get("data")
    return Event(name=str(message["event"]), data=dict(data) if isinstance(data, Mapping) else {})


async def _hangup(client: QMPClient) -> None:
    # On the asyncio side, so no state change can slip between the check and the wait.
    while client.runstate is Runstate.RUNNING:
        await client.runstate_changed()
