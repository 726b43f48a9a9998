"""The QEMU guest agent (qemu-ga) of one VM: its protocol, its poller, what it reports, and
KubeVirt's fsfreeze with its automatic unfreeze.

qemu-ga speaks JSON on the VM's virtio-serial port, which QEMU serves on `qga.sock` in its
working directory (the VM's own uid's, mode 0600: only that QEMU and root reach it). vmid
resynchronises before every command with `guest-sync-delimited`: a 0xFF byte resets the
agent's parser, and the agent's answer starts with 0xFF, so whatever a timed-out command or an
agent that restarted left in the stream is skipped. Everything the guest sends is bounded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from vmid.errors import AgentError
from vmid.host import unixsock

log = logging.getLogger(__name__)

#: libvirt's agent timeout: a guest that does not answer within it is not waited for.
COMMAND_TIMEOUT = 5.0
#: Bytes of one answer: the largest (guest-network-get-interfaces, guest-get-fsinfo of a guest
#: with many mounts) are a few KiB; a guest sending more is cut off, never buffered.
MAX_REPLY_BYTES = 1 << 20
#: Lines skipped after the 0xFF while looking for the sync's answer (a parse error's, a late one).
MAX_STRAY_LINES = 8
#: After a failed handshake, try again this often while the port stays open.
RETRY_SECONDS = 5.0
#: The automatic unfreeze's retries back off from RETRY_SECONDS to this (as kubelet's and
#: KubeVirt's requeues do): an agent away for hours costs a try a minute, not one every 5 s;
#: its return (or the VM's resume) retries at once all the same.
THAW_RETRY_MAX_SECONDS = 60.0
#: KubeVirt's poll intervals (virt-launcher's --qemu-agent-*-interval); each starts at
#: INITIAL_INTERVAL and doubles up to its own (agent-poller's PollerWorker).
INITIAL_INTERVAL = 10.0
SYS_INTERVAL = 120.0
FILE_INTERVAL = 300.0
USER_INTERVAL = 10.0
VERSION_INTERVAL = 300.0
#: virt-launcher's --qemu-fsfreeze-status-interval (under INITIAL_INTERVAL: polled at it at once).
FSFREEZE_INTERVAL = 5.0
#: KubeVirt lists at most this many interfaces the guest has and the domain does not.
GUEST_ONLY_INTERFACES = 10
#: Commands an agent must have for KubeVirt to call it supported (virt-handler guestagent.go).
REQUIRED_COMMANDS = (
    "guest-ping",
    "guest-get-time",
    "guest-info",
    "guest-shutdown",
    "guest-network-get-interfaces",
    "guest-get-fsinfo",
    "guest-get-host-name",
    "guest-get-users",
    "guest-get-timezone",
    "guest-get-osinfo",
)
UNSUPPORTED = "This guest agent doesn't support required basic commands"
#: KubeVirt's answer to an agent verb on a VMI whose agent is not connected (virt-api).
NOT_CONNECTED = "VMI does not have guest agent connected"
#: A request on the VMI's agent.sock: one line, this long at most, within COMMAND_TIMEOUT.
MAX_REQUEST_BYTES = 4096
#: How long guest-shutdown may take to be sent (it answers nothing on success).
REBOOT_TIMEOUT = 10.0
#: KubeVirt's default unfreeze timeout, in seconds (virt-freezer's --unfreezeTimeoutSeconds; a
#: VirtualMachineSnapshot's default failureDeadline): a freeze nobody undoes is thawed then.
UNFREEZE_TIMEOUT = 300
#: The longest unfreeze timeout a request may ask (KubeVirt's is an int32 of seconds).
MAX_UNFREEZE_TIMEOUT = 2**31 - 1
#: How long guest-fsfreeze-freeze may take: the guest flushes every file system first (libvirt
#: waits without a bound; a guest that takes longer has its freeze undone).
FREEZE_TIMEOUT = 60.0
#: Thawing when the daemon stops supervising the VM: guest-fsfreeze-status, then -thaw.
LEAVING_THAW_TIMEOUT = 2 * COMMAND_TIMEOUT
#: virt-handler's messages when a freeze or unfreeze fails, before the reason.
FREEZE_FAILED = "Failed to freeze VMI"
UNFREEZE_FAILED = "Failed to unfreeze VMI"
#: libvirt's reasons, which KubeVirt passes on: no agent on the channel, a guest not running.
AGENT_UNRESPONSIVE = "Guest agent is not responding: QEMU guest agent is not connected"
DOMAIN_NOT_RUNNING = (
    "Requested operation is not valid: domain is not running (the VMI is paused: unpause it first)"
)
#: What each poll group asks, and how often at most.
_GROUPS: dict[str, tuple[float, tuple[str, ...]]] = {
    "version": (VERSION_INTERVAL, ("guest-info",)),
    "file": (FILE_INTERVAL, ("guest-get-fsinfo",)),
    "sys": (
        SYS_INTERVAL,
        (
            "guest-network-get-interfaces",
            "guest-get-osinfo",
            "guest-get-host-name",
            "guest-get-timezone",
        ),
    ),
    "user": (USER_INTERVAL, ("guest-get-users",)),
    "fsfreeze": (FSFREEZE_INTERVAL, ("guest-fsfreeze-status",)),
}
#: guest-get-osinfo's keys, as KubeVirt's status.guestOSInfo names them.
_OS_FIELDS = {
    "name": "name",
    "kernel-release": "kernelRelease",
    "version": "version",
    "pretty-name": "prettyName",
    "version-id": "versionId",
    "kernel-version": "kernelVersion",
    "machine": "machine",
    "id": "id",
}


class Channel:
    """The byte stream to QEMU's agent chardev, read line by line within MAX_REPLY_BYTES."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, path: Path) -> Channel:
        sock = await trio.to_thread.run_sync(unixsock.connect, path)
        return cls(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def sync(self) -> None:
        """guest-sync-delimited: skip all the agent sent before its 0xFF, then its answer."""
        token = random.randrange(1, 1 << 31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        await self._stream.send_all(b"\xff" + json.dumps(request).encode() + b"\n")
        skipped = 0
        while True:
            index = self._buffer.find(b"\xff")
            if index >= 0:
                del self._buffer[: index + 1]
                break
            skipped += len(self._buffer)
            self._buffer.clear()
            if skipped > MAX_REPLY_BYTES:
                raise AgentError("the guest agent sent too much without answering")
            await self._receive()
        for _ in range(MAX_STRAY_LINES):
            reply = await self.read()
            if isinstance(reply, dict) and reply.get("return") == token:
                return
        raise AgentError("the guest agent did not answer guest-sync-delimited")

    async def send(self, command: str, arguments: Mapping[str, Any] | None) -> None:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        await self._stream.send_all(json.dumps(request).encode() + b"\n")

    async def read(self) -> Any:
        """One JSON line from the agent."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_REPLY_BYTES:
                self._buffer.clear()
                raise AgentError(f"the guest agent's answer exceeds {MAX_REPLY_BYTES} bytes")
            await self._receive()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            return json.loads(line)
        except ValueError as exc:
            raise AgentError(f"the guest agent's answer is not JSON: {exc}") from exc

    async def _receive(self) -> None:
        data = await self._stream.receive_some(65536)
        if not data:
            raise AgentError("the guest agent's channel was closed")
        self._buffer += data


@attrs.define
class Report:
    """What the agent last said, by command (its `return`); empty when it never answered."""

    answers: dict[str, Any] = attrs.field(factory=dict)

    def get(self, command: str) -> Any:
        return self.answers.get(command)


class GuestAgent:
    """One VM's guest agent: connects when the guest opens its port (QEMU's VSERPORT_CHANGE),
    polls it as KubeVirt's agent poller does, and runs commands for the VMI, one at a time.

    `on_change` is called (no arguments) whenever `connected` or a polled answer changes;
    `on_event(type, reason, message)` records an event about the VMI (its freezes).
    """

    def __init__(
        self,
        name: str,
        path: Path,
        on_change: Callable[[], None],
        on_event: Callable[[str, str, str], None] = lambda *_: None,
    ) -> None:
        self.log = log.getChild(name)
        self._path = path
        self._on_change = on_change
        self._on_event = on_event
        self._channel: Channel | None = None
        self._lock = trio.Lock()
        self._port_open = False
        self._changed = trio.Event()
        self._session: trio.CancelScope | None = None
        self.connected = False
        self.report = Report()
        #: The VM is paused: nothing is polled (every call would time out), no freeze is tried.
        self.paused = False
        self._resumed = trio.Event()
        self._resumed.set()
        #: Where the automatic unfreeze runs (`run`'s), and the armed one, if any.
        self._nursery: trio.Nursery | None = None
        self._unfreeze: trio.CancelScope | None = None
        #: A freeze this daemon made, or found (after a take-over), and has not seen undone.
        self._freeze_known = False
        #: Set when the agent connects or the VM resumes: a failed automatic unfreeze retries.
        self._thaw_again = trio.Event()

    def __repr__(self) -> str:
        return f"<GuestAgent path={str(self._path)!r} connected={self.connected}>"

    def port_changed(self, open_: bool) -> None:
        """The guest opened or closed its end (VSERPORT_CHANGE): resynchronise or disconnect."""
        self._port_open = open_
        if self._session is not None:
            self._session.cancel()
        self._changed.set()

    def set_paused(self, paused: bool) -> None:
        """The VM was paused or resumed: as KubeVirt's poller, none polls a paused guest."""
        self.paused = paused
        if paused and self._resumed.is_set():
            self._resumed = trio.Event()
        elif not paused:
            self._resumed.set()
            self._thaw_again.set()

    @property
    def frozen(self) -> bool:
        """The guest's file systems are frozen, as its agent last said."""
        return bool(self.report.get("guest-fsfreeze-status") == "frozen")

    async def run(self, port_open: bool) -> None:
        """Follow the port until cancelled; `port_open`: the guest's end is open now."""
        self._port_open = port_open
        try:
            async with trio.open_nursery() as self._nursery:
                while True:
                    self._changed = trio.Event()
                    if self._port_open:
                        with trio.CancelScope() as self._session:
                            await self._serve()
                        self._session = None
                        self._set_connected(False)
                    if not self._changed.is_set():
                        await self._changed.wait()
        finally:
            self._nursery = self._unfreeze = None
            with trio.CancelScope(shield=True), trio.move_on_after(COMMAND_TIMEOUT):
                await self.aclose()

    async def _serve(self) -> None:
        """Handshake, then poll until the port closes; a failed handshake is retried."""
        while True:
            try:
                info = await self.call("guest-info")
                if not self._frozen_info():
                    self.report.answers["guest-info"] = info
            except AgentError as exc:
                self.log.debug("guest agent handshake failed: %s", exc)
                await trio.sleep(RETRY_SECONDS)
                continue
            self.log.info("guest agent connected")
            self._set_connected(True)
            await self._poll()

    async def _poll(self) -> None:
        intervals = {group: min(INITIAL_INTERVAL, g[0]) for group, g in _GROUPS.items()}
        due = dict.fromkeys(_GROUPS, trio.current_time())
        while True:
            await self._resumed.wait()
            now = trio.current_time()
            changed = False
            for group, (ceiling, commands) in _GROUPS.items():
                if due[group] > now:
                    continue
                for command in commands:
                    changed |= await self._ask(command)
                due[group] = now + intervals[group]
                intervals[group] = min(intervals[group] * 2, ceiling)
            if changed:
                self._on_change()
            await trio.sleep_until(min(due.values()))

    async def _ask(self, command: str) -> bool:
        """Poll one command; whether its answer changed. A failure keeps the last answer."""
        try:
            answer = await self.call(command)
        except AgentError as exc:
            self.log.debug("%s failed: %s", command, exc)
            return False
        if command == "guest-fsfreeze-status" and answer == "frozen" and not self._freeze_known:
            self._adopt_freeze()
        if command == "guest-info" and self._frozen_info():
            return False
        if self.report.answers.get(command) == answer:
            return False
        self.report.answers[command] = answer
        return True

    def _frozen_info(self) -> bool:
        """While frozen, qemu-ga's guest-info lists all but a few commands disabled: its support
        (AgentVersionNotSupported) is judged by what it said thawed."""
        return self.frozen and "guest-info" in self.report.answers

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if not connected:
                self.log.info("guest agent disconnected")
            else:
                self._thaw_again.set()
            self._on_change()

    async def call(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        within: float = COMMAND_TIMEOUT,
        reply: bool = True,
    ) -> Any:
        """Run one agent command and return its result; `reply=False` for the commands that
        answer nothing on success (guest-shutdown); `within` seconds at most.

        Raises:
            AgentError: the port is closed, the agent did not answer in time,
                its channel failed, or it refused the command (its own message).
        """
        if not self._port_open:
            raise AgentError("the guest agent is not connected")
        with trio.move_on_after(within):
            async with self._lock:
                try:
                    return await self._exchange(command, arguments, reply)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    # Reset by QEMU, or closed under this call (the agent's task ending).
                    await self.aclose()
                    why = str(exc) or type(exc).__name__
                    raise AgentError(f"{command}: the agent's channel failed: {why}") from exc
                except AgentError as exc:
                    if "closed" in str(exc):
                        await self.aclose()
                    raise AgentError(f"{command}: {exc}") from exc
        raise AgentError(f"{command}: the guest agent did not answer within {within:g} s")

    async def _exchange(
        self, command: str, arguments: Mapping[str, Any] | None, reply: bool
    ) -> Any:
        if self._channel is None:
            self._channel = await Channel.connect(self._path)
        channel = self._channel
        await channel.sync()
        await channel.send(command, arguments)
        if not reply:
            return None
        answer = await channel.read()
        if not isinstance(answer, dict):
            raise AgentError(f"an answer that is not an object: {answer!r:.200}")
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {}
            raise AgentError(f"{error.get('class', 'Error')}: {error.get('desc', '')}")
        return answer.get("return")

    async def request(self, verb: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """A `vmid` agent verb: KubeVirt's guestosinfo, userlist and fslist (from what the
        poller last heard, as KubeVirt's), soft-reboot through the agent, freeze (`arguments`:
        `unfreezeTimeout`, seconds) and unfreeze.

        Raises:
            AgentError: the agent is not connected, failed, or the verb is unknown.
        """
        if verb in ("freeze", "unfreeze"):
            return await self._freeze_verb(verb, dict(arguments or {}))
        if not self.connected:
            raise AgentError(NOT_CONNECTED)
        if verb == "guestosinfo":
            return agent_info(self.report)
        if verb == "userlist":
            return {"metadata": {}, "items": users(self.report)}
        if verb == "fslist":
            return {"metadata": {}, "items": filesystems(self.report)}
        if verb == "soft-reboot":
            arguments = {"mode": "reboot"}
            return await self.call("guest-shutdown", arguments, REBOOT_TIMEOUT, reply=False)
        raise AgentError(f"unknown request {verb!r}")

    async def _freeze_verb(self, verb: str, arguments: dict[str, Any]) -> Any:
        """`vmid freeze|unfreeze`, failing with virt-handler's messages (a FreezeError event)."""
        try:
            if verb == "unfreeze":
                await self.thaw()
                return {}
            timeout = arguments.get("unfreezeTimeout", UNFREEZE_TIMEOUT)
            if type(timeout) is not int or not 0 <= timeout <= MAX_UNFREEZE_TIMEOUT:
                raise AgentError(f"unfreezeTimeout is not a number of seconds: {timeout!r}")
            return {"frozen": await self.freeze(timeout), "unfreezeTimeout": timeout}
        except AgentError as exc:
            message = f"{FREEZE_FAILED if verb == 'freeze' else UNFREEZE_FAILED}: {exc}"
            if verb == "freeze":
                self._on_event("Warning", "FreezeError", message)
            raise AgentError(message) from exc

    # Section: fsfreeze, as KubeVirt's virt-launcher (storage/fsfreeze.go)

    async def freeze(self, unfreeze_timeout: int) -> int | None:
        """Freeze the guest's file systems (guest-fsfreeze-freeze), thawed automatically after
        `unfreeze_timeout` seconds (0: never) unless thawed before; nothing if they are frozen
        already (the automatic thaw armed then stays as it was), as KubeVirt's FreezeVMI.

        Returns how many file systems the guest froze (None: they were frozen already).
        Raises AgentError (a freeze that failed is undone at once, as virt-freezer does).
        """
        self._check_running()
        if await self._freeze_status() == "frozen":
            return None
        self._freeze_known = True
        self._arm(unfreeze_timeout)  # before: a freeze answered too late is undone all the same
        try:
            count = await self.call("guest-fsfreeze-freeze", within=FREEZE_TIMEOUT)
        except AgentError:
            with contextlib.suppress(AgentError):
                await self.thaw()
            raise
        self._record_freeze("frozen")
        self.log.info("froze %s file systems (unfreeze timeout %d s)", count, unfreeze_timeout)
        return count if isinstance(count, int) else 0

    async def thaw(self) -> None:
        """Thaw the guest's file systems (guest-fsfreeze-thaw) unless its agent says they are
        thawed, as KubeVirt's UnfreezeVMI; the automatic thaw is disarmed once it succeeded.

        Raises:
            AgentError: the VM is paused, or the agent is gone or failed.
        """
        self._check_running()
        with contextlib.suppress(AgentError):  # a status not read is no reason not to thaw
            if await self._freeze_status() == "thawed":
                self._thawed()
                return
        await self.call("guest-fsfreeze-thaw")
        self._thawed()
        self.log.info("thawed the guest's file systems")

    async def thaw_before_leaving(self) -> None:
        """The daemon stops supervising this VM (it powers it off, or leaves it running for
        the next daemon): a freeze it knows of is thawed, never left without its automatic
        thaw. Bounded by LEAVING_THAW_TIMEOUT; call it shielded."""
        if not (self._freeze_known or self.frozen):
            return
        why = "the guest's file systems were frozen and vmid stops supervising the VMI"
        with trio.move_on_after(LEAVING_THAW_TIMEOUT):
            try:
                await self.thaw()
            except AgentError as exc:
                why = f"{why}; thawing them failed: {exc}"
            else:
                self._on_event("Normal", "Unfrozen", f"{why}: thawed")
                return
        self.log.warning("%s: they may stay frozen", why)
        self._on_event("Warning", "FreezeError", f"{why}: they may stay frozen")

    def _check_running(self) -> None:
        if not self._port_open:
            raise AgentError(AGENT_UNRESPONSIVE)
        if self.paused:
            raise AgentError(DOMAIN_NOT_RUNNING)

    async def _freeze_status(self) -> Any:
        status = await self.call("guest-fsfreeze-status")
        self._record_freeze(status)
        return status

    def _record_freeze(self, status: Any) -> None:
        if self.report.answers.get("guest-fsfreeze-status") != status:
            self.report.answers["guest-fsfreeze-status"] = status
            self._on_change()

    def _thawed(self) -> None:
        self._freeze_known = False
        if self._unfreeze is not None:
            self._unfreeze.cancel()
            self._unfreeze = None
        self._record_freeze("thawed")

    def _arm(self, seconds: int) -> None:
        """Thaw in `seconds` unless thawed before (0: never), in place of one armed before."""
        if self._unfreeze is not None:
            self._unfreeze.cancel()
            self._unfreeze = None
        if seconds > 0 and self._nursery is not None:
            self._unfreeze = trio.CancelScope()
            self._nursery.start_soon(self._thaw_after, seconds, self._unfreeze)

    def _adopt_freeze(self) -> None:
        """Frozen, and not by this daemon (an earlier one's freeze, found after a take-over):
        thawed after KubeVirt's default unfreeze timeout, from now."""
        self._freeze_known = True
        message = (
            "the guest's file systems are frozen, by no freeze of this daemon's: thawed in "
            f"{UNFREEZE_TIMEOUT} s unless unfrozen"
        )
        self.log.warning("%s", message)
        self._on_event("Warning", "UnfreezeTimeout", message)
        self._arm(UNFREEZE_TIMEOUT)

    async def _thaw_after(self, seconds: int, scope: trio.CancelScope) -> None:
        """KubeVirt's safety unfreeze: thaw when the timeout expires; retried until it works
        (the guest paused, its agent restarting), as long as the VM runs: at once when the agent
        connects or the VM resumes, else backing off to THAW_RETRY_MAX_SECONDS. The first
        failure is logged and the thaw that ends them, the tries between at debug level."""
        with scope:
            await trio.sleep(seconds)
            message = f"Unfreeze was not called for more than {seconds} s: thawing the guest"
            self.log.warning("%s", message)
            self._on_event("Warning", "UnfreezeTimeout", message)
            failures, delay = 0, RETRY_SECONDS
            while True:
                self._thaw_again = trio.Event()
                try:
                    await self.thaw()
                except AgentError as exc:
                    failures += 1
                    self._thaw_failed(exc, failures)
                else:
                    if failures:
                        self.log.info("the automatic unfreeze worked after %d tries", failures + 1)
                    return
                with trio.move_on_after(delay):
                    await self._thaw_again.wait()
                delay = min(delay * 2, THAW_RETRY_MAX_SECONDS)

    def _thaw_failed(self, exc: AgentError, failures: int) -> None:
        if failures == 1:
            self.log.warning(
                "the automatic unfreeze failed, retried until it works (at once when the agent "
                "is back or the VM resumes, else at most %g s apart): %s",
                THAW_RETRY_MAX_SECONDS,
                exc,
            )
        else:
            self.log.debug("the automatic unfreeze failed again (try %d): %s", failures + 1, exc)

    async def serve(self, listener: trio.SocketListener) -> None:
        """Answer `vmid` on the VMI's agent.sock (root's alone), one request per connection."""
        async with listener:
            await trio.serve_listeners(self._answer, [listener])

    async def _answer(self, stream: trio.abc.Stream) -> None:
        async with stream:
            reply: dict[str, Any]
            try:
                with trio.fail_after(COMMAND_TIMEOUT):
                    verb, arguments = await _read_request(stream)
                reply = {"return": await self.request(verb, arguments)}
            except AgentError as exc:
                reply = {"error": str(exc)}
            except (trio.TooSlowError, trio.BrokenResourceError, ValueError) as exc:
                reply = {"error": f"a request vmid could not read: {exc or 'too slow'}"}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.move_on_after(COMMAND_TIMEOUT):
                    await stream.send_all(json.dumps(reply).encode() + b"\n")

    async def aclose(self) -> None:
        """Close the channel (`run` does when it ends); the next call connects anew."""
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(OSError, trio.ClosedResourceError):
                await channel.aclose()


async def _read_request(stream: trio.abc.Stream) -> tuple[str, dict[str, Any]]:
    data = bytearray()
    while b"\n" not in data:
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request too long")
        chunk = await stream.receive_some(MAX_REQUEST_BYTES)
        if not chunk:
            break
        data += chunk
    request = json.loads(data.split(b"\n", 1)[0])
    if not isinstance(request, dict) or not isinstance(request.get("execute"), str):
        raise ValueError('not {"execute": VERB}')
    arguments = request.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ValueError("its arguments are not an object")
    return str(request["execute"]), arguments


def listen(path: Path) -> trio.SocketListener:
    """The VMI's agent.sock, for root only: its verbs reach the guest."""
    sock = unixsock.listen(path, 0o600)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


# Section: KubeVirt's shapes of what the agent said


def guest_os_info(report: Report) -> dict[str, str]:
    """status.guestOSInfo from guest-get-osinfo (empty until it names the OS, as KubeVirt)."""
    answer = report.get("guest-get-osinfo")
    if not isinstance(answer, dict) or not answer.get("name"):
        return {}
    return {ours: str(answer[theirs]) for theirs, ours in _OS_FIELDS.items() if answer.get(theirs)}


def unsupported_reason(report: Report) -> str | None:
    """Why KubeVirt would call this agent unsupported (AgentVersionNotSupported), or None."""
    info = report.get("guest-info")
    commands = info.get("supported_commands") if isinstance(info, dict) else None
    if not isinstance(commands, list) or not commands:
        return None  # nothing known yet: KubeVirt then judges by version, which vmid does not
    enabled = {c.get("name") for c in commands if isinstance(c, dict) and c.get("enabled")}
    return None if all(name in enabled for name in REQUIRED_COMMANDS) else UNSUPPORTED


def agent_info(report: Report) -> dict[str, Any]:
    """KubeVirt's VirtualMachineInstanceGuestAgentInfo (`virtctl guestosinfo`)."""
    info = report.get("guest-info")
    info = info if isinstance(info, dict) else {}
    zone = report.get("guest-get-timezone")
    zone = zone if isinstance(zone, dict) else {}
    host = report.get("guest-get-host-name")
    result: dict[str, Any] = {
        "guestAgentVersion": str(info.get("version", "")),
        "supportedCommands": [
            {"name": str(c.get("name")), "enabled": bool(c.get("enabled"))}
            for c in info.get("supported_commands", [])
            if isinstance(c, dict)
        ],
        "hostname": str(host.get("host-name", "")) if isinstance(host, dict) else "",
        "os": guest_os_info(report),
        "timezone": f"{zone.get('zone', '')}, {zone.get('offset', 0)}",
        "userList": users(report)[:10],
        "fsInfo": {"disks": filesystems(report)[:10]},
        "fsFreezeStatus": str(report.get("guest-fsfreeze-status") or ""),
    }
    return {k: v for k, v in result.items() if v not in ("", [], {})}


def users(report: Report) -> list[dict[str, Any]]:
    """KubeVirt's VirtualMachineInstanceGuestOSUser list, from guest-get-users."""
    answer = report.get("guest-get-users")
    result = []
    for user in answer if isinstance(answer, list) else []:
        if not isinstance(user, dict):
            continue
        entry: dict[str, Any] = {"userName": str(user.get("user", ""))}
        if user.get("domain"):
            entry["domain"] = str(user["domain"])
        if user.get("login-time"):
            entry["loginTime"] = user["login-time"]
        result.append(entry)
    return result


def filesystems(report: Report) -> list[dict[str, Any]]:
    """KubeVirt's VirtualMachineInstanceFileSystem list, from guest-get-fsinfo."""
    answer = report.get("guest-get-fsinfo")
    result = []
    for fs in answer if isinstance(answer, list) else []:
        if not isinstance(fs, dict):
            continue
        disks = [
            {
                **({"serial": str(d["serial"])} if d.get("serial") else {}),
                "busType": d.get("bus-type", ""),
            }
            for d in fs.get("disk", [])
            if isinstance(d, dict)
        ]
        entry: dict[str, Any] = {
            "diskName": str(fs.get("name", "")),
            "mountPoint": str(fs.get("mountpoint", "")),
            "fileSystemType": str(fs.get("type", "")),
            "usedBytes": int(fs.get("used-bytes", 0)),
            "totalBytes": int(fs.get("total-bytes", 0)),
        }
        if disks:
            entry["disk"] = disks
        result.append(entry)
    return result


def guest_interfaces(report: Report) -> list[dict[str, Any]]:
    """The guest's NICs as KubeVirt's poller keeps them: all but `lo`, IPv4 first as `ip`."""
    answer = report.get("guest-network-get-interfaces")
    result = []
    for nic in answer if isinstance(answer, list) else []:
        if not isinstance(nic, dict) or nic.get("name") == "lo":
            continue
        addresses = [
            a for a in nic.get("ip-addresses", []) if isinstance(a, dict) and a.get("ip-address")
        ]
        ips = [str(a["ip-address"]) for a in addresses]
        v4 = [str(a["ip-address"]) for a in addresses if a.get("ip-address-type") == "ipv4"]
        result.append(
            {
                "interfaceName": str(nic.get("name", "")),
                "mac": str(nic.get("hardware-address", "")),
                "ip": (v4 or ips or [""])[0],
                "ips": ips,
            }
        )
    return result


def merge_interfaces(
    domain: Sequence[Mapping[str, Any]],
    guest: Sequence[Mapping[str, Any]],
    masquerade: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """status.interfaces as KubeVirt's NetStat merges them: vmid's own view (`domain`: each
    NIC's name, MAC, and the address vmid gave it) with the agent's, matched by MAC.

    A NIC both know gets `infoSource` "domain, guest-agent" and the guest's name for it; per
    address family, vmid's addresses stay if the guest has some of that family too, else the
    guest's are taken (none: the guest is not reachable by that family). Link-local IPv6
    addresses of a NIC in `masquerade` are dropped (unreachable through NAT). A NIC only the
    guest has: "guest-agent", at most GUEST_ONLY_INTERFACES of them.
    """
    merged = [dict(nic) for nic in domain]
    by_mac = {str(nic.get("mac", "")).lower(): nic for nic in merged}
    extra = 0
    for nic in guest:
        known = by_mac.get(str(nic["mac"]).lower())
        if known is None:
            if extra < GUEST_ONLY_INTERFACES:
                extra += 1
                merged.append(_guest_only(nic))
            continue
        ips = list(nic["ips"])
        if known.get("name") in masquerade:
            ips = [ip for ip in ips if not _link_local(ip)]
        known["interfaceName"] = nic["interfaceName"]
        known["infoSource"] = _add_source(str(known.get("infoSource", "")), "guest-agent")
        _merge_addresses(known, ips)
    return merged


def _guest_only(nic: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"mac": nic["mac"], "interfaceName": nic["interfaceName"]}
    if nic["ips"]:
        entry.update(ipAddress=nic["ip"], ipAddresses=list(nic["ips"]))
    entry["infoSource"] = "guest-agent"
    return entry


def _merge_addresses(known: dict[str, Any], guest_ips: list[str]) -> None:
    ours = [str(ip) for ip in known.get("ipAddresses", [])]
    kept: list[str] = []
    for version in (4, 6):
        mine = [ip for ip in ours if _version(ip) == version]
        theirs = [ip for ip in guest_ips if _version(ip) == version]
        kept += mine if mine and theirs else theirs
    known.pop("ipAddress", None)
    known.pop("ipAddresses", None)
    if kept:
        known["ipAddress"] = kept[0]
        known["ipAddresses"] = kept
    # KubeVirt's order of keys: the addresses before the source, as in its API documents.
    known["infoSource"] = known.pop("infoSource")


def _link_local(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_link_local
    except ValueError:
        return True  # KubeVirt drops what does not parse too


def _version(ip: str) -> int:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).version
    except ValueError:
        return 0


def _add_source(sources: str, name: str) -> str:
    """KubeVirt's infoSource: a comma-separated set, in the order its NetStat adds them."""
    names = {s for s in sources.split(", ") if s} | {name}
    return ", ".join(n for n in _SOURCES if n in names)


_SOURCES = ("domain", "guest-agent", "multus-status")
