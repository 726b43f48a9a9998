"""The guest agent client against scripted agents (a hostile guest among them), and KubeVirt's
merge of the guest's NICs into status.interfaces. The real qemu-ga: tests/test_agent_e2e.py."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.daemon import fake_config, manifest, running_daemon
from vmid import control
from vmid.api.vmistatus import Condition, QemuStatus, VMIStatus
from vmid.cli import agent as cli_agent
from vmid.cli import lifecycle, main
from vmid.errors import AgentError, AgentRequestError
from vmid.runtime import agent

pytestmark = pytest.mark.timeout(30)

Script = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_agent(nursery: trio.Nursery, path: Path, script: Script) -> None:
    """A fake QEMU agent chardev at `path`: each client gets `script`."""
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen()
    nursery.start_soon(trio.serve_listeners, script, [trio.SocketListener(listener)])


async def requests(stream: trio.SocketStream) -> AsyncGenerator[dict[str, Any], None]:
    """The client's requests, one JSON line each; 0xFF bytes (parser resets) dropped."""
    buffer = b""
    while chunk := await stream.receive_some():
        buffer += chunk.replace(b"\xff", b"")
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def qemu_ga(answers: dict[str, Any], junk: bytes = b"") -> Script:
    """An agent answering as qemu-ga does: a parse error for the 0xFF, then 0xFF before the
    sync's answer; `junk` first (what an earlier, timed-out command left behind)."""

    async def script(stream: trio.SocketStream) -> None:
        async with contextlib.aclosing(requests(stream)) as each:
            async for request in each:
                await answer(stream, request)

    async def answer(stream: trio.SocketStream, request: dict[str, Any]) -> None:
        command = request["execute"]
        if command == "guest-sync-delimited":
            error = b'{"error": {"class": "GenericError", "desc": "stray"}}\n'
            token = request["arguments"]["id"]
            await stream.send_all(junk + error + b"\xff" + b'{"return": %d}\n' % token)
            return
        if command in answers:
            reply = {"return": answers[command]}
        else:
            reply = {"error": {"class": "CommandNotFound", "desc": "no such command"}}
        await stream.send_all(json.dumps(reply).encode() + b"\n")

    return script


def connected_agent(path: Path) -> agent.GuestAgent:
    guest = agent.GuestAgent("test", path, lambda: None)
    guest.port_changed(True)
    return guest


async def test_sync_skips_what_came_before_and_commands_answer(tmp_path: Path) -> None:
    path = tmp_path / "qga.sock"
    async with trio.open_nursery() as nursery:
        late = b'{"return": {"late": true}}\n{"ret'  # a timed-out answer, half a line
        await serve_agent(nursery, path, qemu_ga({"guest-get-host-name": {"host-name": "g"}}, late))
        guest = connected_agent(path)
        assert await guest.call("guest-get-host-name") == {"host-name": "g"}
        assert await guest.call("guest-get-host-name") == {"host-name": "g"}
        with pytest.raises(AgentError, match="guest-fsfreeze-freeze: CommandNotFound"):
            await guest.call("guest-fsfreeze-freeze")
        await guest.aclose()
        nursery.cancel_scope.cancel()


async def test_a_guest_flooding_its_channel_is_cut_off_not_buffered(tmp_path: Path) -> None:
    """A hostile guest sends megabytes with no 0xFF and no newline: the call fails once
    MAX_REPLY_BYTES were skipped, and vmid never held more than one read beyond that."""
    path = tmp_path / "qga.sock"
    sent = 0

    async def flood(stream: trio.SocketStream) -> None:
        nonlocal sent
        chunk = b"x" * 65536
        while sent < 64 * agent.MAX_REPLY_BYTES:
            await stream.send_all(chunk)
            sent += len(chunk)

    async with trio.open_nursery() as nursery:
        await serve_agent(nursery, path, flood)
        guest = connected_agent(path)
        with pytest.raises(AgentError, match="too much"):
            await guest.call("guest-ping", within=20)
        await guest.aclose()
        assert sent < 4 * agent.MAX_REPLY_BYTES  # it stopped reading: the guest is blocked
        nursery.cancel_scope.cancel()


async def test_an_endless_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qga.sock"

    async def endless(stream: trio.SocketStream) -> None:
        async with contextlib.aclosing(requests(stream)) as each:
            request = await anext(each)
            token = request["arguments"]["id"]
            await stream.send_all(b'\xff{"return": %d}\n' % token)
            await stream.send_all(b'{"return": "' + b"y" * (2 * agent.MAX_REPLY_BYTES))

    async with trio.open_nursery() as nursery:
        await serve_agent(nursery, path, endless)
        guest = connected_agent(path)
        with pytest.raises(AgentError, match="exceeds"):
            await guest.call("guest-ping", within=20)
        await guest.aclose()
        nursery.cancel_scope.cancel()


async def test_a_silent_agent_times_out(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    path = tmp_path / "qga.sock"

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await serve_agent(nursery, path, silent)
        start = trio.current_time()
        guest = connected_agent(path)
        with pytest.raises(AgentError, match="did not answer within 5 s"):
            await guest.call("guest-ping")
        await guest.aclose()
        assert trio.current_time() - start == pytest.approx(agent.COMMAND_TIMEOUT)
        nursery.cancel_scope.cancel()


async def test_a_channel_closed_under_a_call_is_an_agent_error(tmp_path: Path) -> None:
    """The agent's task ends (its channel closed) while another task's call waits for an
    answer: that call fails as the agent failing, never with trio's ClosedResourceError (which
    escaped the thaw a stopping VMI makes, and left its stop hanging)."""
    path = tmp_path / "qga.sock"

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await serve_agent(nursery, path, silent)
        guest = connected_agent(path)
        failed: list[str] = []

        async def ask() -> None:
            with pytest.raises(AgentError) as raised:
                await guest.call("guest-fsfreeze-status", within=30)
            failed.append(str(raised.value))

        nursery.start_soon(ask)
        await trio.sleep(0.5)  # connected, waiting for the sync's answer
        await guest.aclose()
        await trio.sleep(0.1)
        assert failed == [
            "guest-fsfreeze-status: the agent's channel failed: another task closed this fd"
        ]
        nursery.cancel_scope.cancel()


async def test_no_call_while_the_port_is_closed(tmp_path: Path) -> None:
    guest = agent.GuestAgent("test", tmp_path / "qga.sock", lambda: None)
    with pytest.raises(AgentError, match="not connected"):
        await guest.call("guest-ping")
    with pytest.raises(AgentError, match="VMI does not have guest agent connected"):
        await guest.request("guestosinfo")


async def test_the_poller_reports_connected_and_answers(tmp_path: Path) -> None:
    path = tmp_path / "qga.sock"
    answers = {
        "guest-info": {
            "version": "7.2",
            "supported_commands": [{"name": "guest-ping", "enabled": True}],
        },
        "guest-get-osinfo": {"name": "Debian GNU/Linux", "id": "debian", "version-id": "12"},
        "guest-get-users": [{"user": "alice", "login-time": 1700000000.5}],
    }
    changes: list[bool] = []
    reported, gone = trio.Event(), trio.Event()

    def on_change() -> None:
        changes.append(guest.connected)
        if agent.guest_os_info(guest.report):
            reported.set()
        if not guest.connected:
            gone.set()

    async with trio.open_nursery() as nursery:
        await serve_agent(nursery, path, qemu_ga(answers))
        guest = agent.GuestAgent("test", path, on_change)
        nursery.start_soon(guest.run, True)
        with trio.fail_after(10):
            await reported.wait()  # the first poll's answers
        assert guest.connected
        assert agent.guest_os_info(guest.report) == {
            "name": "Debian GNU/Linux",
            "id": "debian",
            "versionId": "12",
        }
        # An agent lacking KubeVirt's required commands: AgentVersionNotSupported's reason.
        assert agent.unsupported_reason(guest.report) == agent.UNSUPPORTED
        assert (await guest.request("userlist"))["items"] == [
            {"userName": "alice", "loginTime": 1700000000.5}
        ]
        guest.port_changed(False)
        with trio.fail_after(5):
            await gone.wait()
        assert changes[0] is True
        assert changes[-1] is False
        nursery.cancel_scope.cancel()


POD = {
    "name": "default",
    "mac": "02:00:00:00:00:01",
    "ipAddress": "10.0.2.2",
    "ipAddresses": ["10.0.2.2"],
    "infoSource": "domain",
}
MULTUS = {"name": "net1", "mac": "02:00:00:00:00:02", "infoSource": "domain, multus-status"}


def nic(name: str, mac: str, *ips: str) -> dict[str, Any]:
    v4 = [ip for ip in ips if "." in ip]
    return {"interfaceName": name, "mac": mac, "ip": (v4 or [*ips, ""])[0], "ips": list(ips)}


def test_merge_keeps_vmids_address_and_adds_the_guests_where_vmid_has_none() -> None:
    guest = [
        nic("eth0", "02:00:00:00:00:01", "192.168.9.9", "fe80::1", "fd00::5"),
        nic("eth1", "02:00:00:00:00:02", "192.0.2.5"),
    ]
    pod, multus = agent.merge_interfaces([POD, MULTUS], guest, frozenset({"default"}))
    assert pod == {
        "name": "default",
        "mac": "02:00:00:00:00:01",
        "interfaceName": "eth0",
        "ipAddress": "10.0.2.2",  # vmid's v4 stays: the guest's other v4 is not reachable
        "ipAddresses": ["10.0.2.2", "fd00::5"],  # v6 vmid has none of; link-local dropped
        "infoSource": "domain, guest-agent",
    }
    assert multus["ipAddresses"] == ["192.0.2.5"]
    assert multus["infoSource"] == "domain, guest-agent, multus-status"


def test_merge_guest_only_nics_are_bounded_and_no_address_clears() -> None:
    guest = [nic("eth0", "02:00:00:00:00:01")]  # the guest has no address at all now
    guest += [nic(f"dummy{i}", f"02:00:00:00:01:{i:02x}", f"10.9.0.{i}") for i in range(30)]
    merged = agent.merge_interfaces([POD], guest)
    assert "ipAddress" not in merged[0]
    assert len(merged) == 1 + agent.GUEST_ONLY_INTERFACES
    assert merged[1] == {
        "mac": "02:00:00:00:01:00",
        "interfaceName": "dummy0",
        "ipAddress": "10.9.0.0",
        "ipAddresses": ["10.9.0.0"],
        "infoSource": "guest-agent",
    }


async def test_the_request_socket_refuses_long_requests(tmp_path: Path) -> None:
    guest = agent.GuestAgent("test", tmp_path / "qga.sock", lambda: None)
    path = tmp_path / "agent.sock"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guest.serve, agent.listen(path))
        assert path.stat().st_mode & 0o777 == 0o600
        for request, error in (
            (b"x" * 10000 + b"\n", "request too long"),
            (b'{"execute": "guestosinfo"}\n', agent.NOT_CONNECTED),
            (b"[1]\n", "not {"),
        ):
            stream = await trio.open_unix_socket(str(path))
            await stream.send_all(request)
            reply = json.loads(await stream.receive_some())
            assert error in reply["error"]
            await stream.aclose()
        nursery.cancel_scope.cancel()


# Section: fsfreeze, as KubeVirt's freeze and unfreeze subresources


class FreezingAgent:
    """A qemu-ga whose file systems freeze: guest-fsfreeze-* change its state and, while it is
    frozen, other commands are refused as qemu-ga refuses them. `fail_freeze`: the freeze fails
    half-way (one file system stays frozen, as qemu-ga leaves it)."""

    def __init__(self, fail_freeze: bool = False) -> None:
        self.state = "thawed"
        self.fail_freeze = fail_freeze
        self.commands: list[str] = []

    def answer(self, command: str) -> dict[str, Any]:
        self.commands.append(command)
        if command == "guest-info":  # while frozen, qemu-ga says all but these are disabled
            allowed = ("guest-info", "guest-ping", "guest-fsfreeze-status", "guest-fsfreeze-thaw")
            enabled = {c: self.state == "thawed" or c in allowed for c in agent.REQUIRED_COMMANDS}
            listed = [{"name": c, "enabled": e} for c, e in enabled.items()]
            return {"return": {"version": "7.2", "supported_commands": listed}}
        if command == "guest-fsfreeze-status":
            return {"return": self.state}
        if command == "guest-fsfreeze-freeze":
            self.state = "frozen"
            if self.fail_freeze:
                return {"error": {"class": "GenericError", "desc": "failed to freeze /mnt: busy"}}
            return {"return": 2}
        if command == "guest-fsfreeze-thaw":
            self.state = "thawed"
            return {"return": 2}
        if self.state == "frozen":
            return {"error": {"class": "CommandNotFound", "desc": f"{command} has been disabled"}}
        return {"error": {"class": "CommandNotFound", "desc": "no such command"}}

    async def __call__(self, stream: trio.SocketStream) -> None:
        async with contextlib.aclosing(requests(stream)) as each:
            async for request in each:
                if request["execute"] == "guest-sync-delimited":
                    token = request["arguments"]["id"]
                    await stream.send_all(b'\xff{"return": %d}\n' % token)
                else:
                    reply = self.answer(request["execute"])
                    await stream.send_all(json.dumps(reply).encode() + b"\n")

    def count(self, command: str) -> int:
        return self.commands.count(command)


Events = list[tuple[str, str, str]]


@contextlib.asynccontextmanager
async def freezing(
    tmp_path: Path, fake: FreezingAgent
) -> AsyncGenerator[tuple[agent.GuestAgent, Events], None]:
    """A running GuestAgent (its poller, its automatic unfreeze) on `fake`, and its events."""
    path = tmp_path / "qga.sock"
    events: Events = []
    async with trio.open_nursery() as nursery:
        await serve_agent(nursery, path, fake)
        connected = trio.Event()

        def on_change() -> None:
            if guest.connected:
                connected.set()

        guest = agent.GuestAgent("test", path, on_change, lambda *e: events.append(e))
        nursery.start_soon(guest.run, True)
        # No deadline: connecting runs in a thread, which an autojump clock does not wait for
        # (the handshake is retried; the test's own timeout bounds it).
        await connected.wait()
        yield guest, events
        nursery.cancel_scope.cancel()


async def test_freeze_and_unfreeze_as_kubevirt(tmp_path: Path) -> None:
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, _):
        answer = await guest.request("freeze", {"unfreezeTimeout": 60})
        assert answer == {"frozen": 2, "unfreezeTimeout": 60}
        assert fake.state == "frozen"
        assert guest.frozen
        assert agent.agent_info(guest.report)["fsFreezeStatus"] == "frozen"
        # Frozen already: nothing is sent again (KubeVirt's FreezeVMI is idempotent).
        assert await guest.request("freeze") == {"frozen": None, "unfreezeTimeout": 300}
        assert fake.count("guest-fsfreeze-freeze") == 1
        assert await guest.request("unfreeze") == {}
        assert fake.state == "thawed"
        assert not guest.frozen
        # Thawed already: no thaw is sent (KubeVirt's UnfreezeVMI does not rerun thaw hooks).
        await guest.request("unfreeze")
        assert fake.count("guest-fsfreeze-thaw") == 1


async def test_the_unfreeze_timeout_thaws_without_any_client(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The freeze's asker is gone (the CLI ended, or died): the daemon thaws at the timeout."""
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, events):
        start = trio.current_time()
        await guest.request("freeze", {"unfreezeTimeout": 30})
        await trio.sleep(29)
        assert fake.state == "frozen"
        await trio.sleep(2)
        assert fake.state == "thawed"
        assert not guest.frozen
        assert trio.current_time() - start == pytest.approx(31)
        assert events == [
            (
                "Warning",
                "UnfreezeTimeout",
                "Unfreeze was not called for more than 30 s: thawing the guest",
            )
        ]
        # An unfreeze disarms it: a later freeze with no timeout (0) stays frozen.
        await guest.request("freeze", {"unfreezeTimeout": 0})
        await trio.sleep(3600)
        assert fake.state == "frozen"


async def test_an_unfreeze_before_the_timeout_disarms_it(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, events):
        await guest.request("freeze", {"unfreezeTimeout": 30})
        await guest.request("unfreeze")
        await guest.request("freeze", {"unfreezeTimeout": 0})
        await trio.sleep(60)  # the first freeze's timeout must not thaw the second one
        assert fake.state == "frozen"
        assert events == []


async def test_freeze_refusals(tmp_path: Path) -> None:
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, events):
        guest.set_paused(True)
        with pytest.raises(AgentError) as paused:
            await guest.request("freeze")
        assert str(paused.value) == (
            "Failed to freeze VMI: Requested operation is not valid: domain is not running "
            "(the VMI is paused: unpause it first)"
        )
        with pytest.raises(AgentError, match=r"^Failed to unfreeze VMI: Requested operation"):
            await guest.request("unfreeze")
        guest.set_paused(False)
        for bad in (-1, "5m", 2**31, 1.5):
            with pytest.raises(AgentError, match="unfreezeTimeout is not a number of seconds"):
                await guest.request("freeze", {"unfreezeTimeout": bad})
        guest.port_changed(False)  # the guest closed its agent's port
        with pytest.raises(AgentError) as gone:
            await guest.request("freeze")
        assert str(gone.value) == (
            "Failed to freeze VMI: Guest agent is not responding: QEMU guest agent is not connected"
        )
        assert fake.count("guest-fsfreeze-freeze") == 0
        # virt-handler's FreezeError event for each failed freeze (not for unfreeze).
        assert [e[1] for e in events] == ["FreezeError"] * 6
        assert events[0][2] == str(paused.value)


async def test_a_freeze_that_fails_half_way_is_undone(tmp_path: Path) -> None:
    fake = FreezingAgent(fail_freeze=True)
    async with freezing(tmp_path, fake) as (guest, events):
        with pytest.raises(AgentError, match="failed to freeze /mnt: busy"):
            await guest.request("freeze")
        assert fake.state == "thawed"  # as virt-freezer: a failed freeze is thawed at once
        assert not guest.frozen
        assert events[0][:2] == ("Warning", "FreezeError")


async def test_a_freeze_is_thawed_when_the_daemon_stops_supervising(tmp_path: Path) -> None:
    """The daemon stops (with the VM, or leaving it running for the next one): no freeze of
    its own is left behind without its automatic unfreeze."""
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, events):
        await guest.request("freeze", {"unfreezeTimeout": 0})
        await guest.thaw_before_leaving()
        assert fake.state == "thawed"
        assert events == [
            (
                "Normal",
                "Unfrozen",
                "the guest's file systems were frozen and vmid stops supervising the VMI: thawed",
            )
        ]
        await guest.thaw_before_leaving()  # nothing frozen: nothing sent
        assert fake.count("guest-fsfreeze-thaw") == 1


async def test_a_freeze_found_after_a_take_over_gets_the_default_timeout(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A daemon killed -9 while the guest was frozen: the next one, finding it frozen by no
    freeze of its own, thaws it after KubeVirt's default unfreeze timeout (5 minutes)."""
    fake = FreezingAgent()
    fake.state = "frozen"
    async with freezing(tmp_path, fake) as (guest, events):
        await trio.sleep(agent.UNFREEZE_TIMEOUT - 10)
        assert guest.frozen  # the poller saw it (every 5 s)
        assert fake.state == "frozen"
        await trio.sleep(20)
        assert fake.state == "thawed"
        assert [e[1] for e in events] == ["UnfreezeTimeout", "UnfreezeTimeout"]


async def test_a_paused_guest_is_not_polled(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """As KubeVirt's poller on a domain suspended: every call would only time out."""
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, _):
        await trio.sleep(1)
        guest.set_paused(True)
        await trio.sleep(5)  # whatever poll was under way ends
        before = len(fake.commands)
        await trio.sleep(600)
        assert len(fake.commands) == before
        guest.set_paused(False)
        await trio.sleep(1)
        assert fake.count("guest-fsfreeze-status") > 1
        assert len(fake.commands) > before


@pytest.mark.timeout(60)
def test_the_freeze_verbs_through_a_daemon(tmp_path: Path) -> None:
    """`vmid freeze|unfreeze` reach the daemon; a VM whose agent is not connected is refused
    with KubeVirt's message (and its FreezeError event), as one not running."""
    with running_daemon(tmp_path, fake_config()) as daemon:  # a fake QEMU: no guest agent
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        frozen = daemon.vmid("freeze", "vm-a", "--unfreeze-timeout", "1m")
        assert (frozen.returncode, frozen.stdout) == (1, "")
        assert frozen.stderr == (
            "vmid: Failed to freeze VMI: Guest agent is not responding: "
            "QEMU guest agent is not connected\n"
        )
        thawed = daemon.vmid("unfreeze", "vm-a")
        assert thawed.returncode == 1
        assert thawed.stderr.startswith("vmid: Failed to unfreeze VMI: Guest agent is not")
        listed = json.loads(daemon.vmid("events", "vm-a", "-o", "json").stdout)["items"]
        assert [e["message"] for e in listed if e["reason"] == "FreezeError"] == [
            frozen.stderr.removeprefix("vmid: ").strip()
        ]
        assert "fsFreezeStatus" not in daemon.status("vm-a")["status"]  # type: ignore[index]
        gone = daemon.vmid("freeze", "nope")
        assert gone.returncode == 1


@pytest.mark.parametrize("duration", ["5", "500ms", "-1m", "1x", "5m ", "100000000h"])
def test_an_unfreeze_timeout_is_a_go_duration_of_whole_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], duration: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["freeze", "vm", "--unfreeze-timeout", duration, "--root", str(tmp_path)])
    assert exited.value.code == 2
    assert "--unfreeze-timeout" in capsys.readouterr().err


def test_soft_reboot_falls_back_to_acpi_when_the_agent_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AgentConnected was True when the status was written, but the agent is gone by now (or
    hangs): the guest still reboots, through the ACPI power button (KubeVirt ignores libvirt's
    agent-unresponsive error: nothing would reboot)."""
    asked: list[str] = []

    def failing(qemu: QemuStatus, verb: str, *_: Any) -> Any:
        asked.append(verb)
        raise AgentRequestError(agent.NOT_CONNECTED)

    monkeypatch.setattr(cli_agent, "request", failing)
    monkeypatch.setattr(control, "soft_reboot", lambda *_: asked.append("acpi"))
    connected = VMIStatus(conditions=(Condition("AgentConnected", "True"),))
    qmp = tmp_path / "qmp.sock"
    lifecycle._soft_reboot("web", qmp, QemuStatus(), connected, paused=False)
    assert asked == ["soft-reboot", "acpi"]
    assert capsys.readouterr().err == (
        "vmid: the guest agent failed (VMI does not have guest agent connected): "
        "the ACPI power button\n"
    )
    asked.clear()
    with pytest.raises(AgentRequestError):  # no ACPI: the agent's error is the answer
        lifecycle._soft_reboot("web", qmp, QemuStatus(acpi=False), connected, paused=False)
    assert asked == ["soft-reboot"]


async def test_a_frozen_agent_is_not_judged_unsupported(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """qemu-ga disables its other commands while frozen: a guest-info polled then must not
    make it AgentVersionNotSupported (its support is what it said thawed)."""
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, _):
        assert agent.unsupported_reason(guest.report) is None
        await guest.request("freeze", {"unfreezeTimeout": 0})
        await trio.sleep(agent.VERSION_INTERVAL * 2)  # guest-info polled meanwhile
        assert fake.count("guest-info") > 2
        assert agent.unsupported_reason(guest.report) is None
        assert agent.agent_info(guest.report)["supportedCommands"][0]["enabled"] is True


async def test_the_automatic_unfreeze_waits_for_an_agent_that_restarts(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """qemu-ga killed while frozen (the guest's file systems stay frozen, and the next qemu-ga
    knows it): the automatic unfreeze is retried until the agent is back, then thaws."""
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, events):
        await guest.request("freeze", {"unfreezeTimeout": 30})
        guest.port_changed(False)
        await trio.sleep(40)
        assert fake.state == "frozen"  # due at 30 s, but the agent is gone
        guest.port_changed(True)
        await trio.sleep(agent.RETRY_SECONDS + 1)
        assert fake.state == "thawed"
        assert not guest.frozen
        assert [e[1] for e in events] == ["UnfreezeTimeout"]


@pytest.mark.parametrize("away", ["agent", "paused"])
async def test_the_automatic_unfreeze_retries_quietly_for_hours_then_thaws_at_once(
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
    away: str,
) -> None:
    """The agent gone (or the VM paused) for hours past the unfreeze timeout: the automatic
    unfreeze never gives up, logs one warning (not one every 5 s), backs off its tries, and
    thaws as soon as the agent is back (the VM resumed), not at its next try."""
    caplog.set_level(logging.DEBUG, logger="vmid.runtime.agent")
    fake = FreezingAgent()
    async with freezing(tmp_path, fake) as (guest, _):
        await guest.request("freeze", {"unfreezeTimeout": 30})

        def leave(gone: bool) -> None:
            if away == "agent":
                guest.port_changed(not gone)
            else:
                guest.set_paused(gone)

        leave(True)
        await trio.sleep(30 + 3 * 3600 + agent.THAW_RETRY_MAX_SECONDS / 2)
        assert fake.state == "frozen"
        leave(False)
        await trio.sleep(1)
        assert fake.state == "thawed"
        assert not guest.frozen
    said = [r for r in caplog.records if "automatic unfreeze" in r.getMessage()]
    warned = [r.getMessage() for r in said if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned
    assert warned[0].startswith("the automatic unfreeze failed, retried until it works")
    tries = len(said)  # the first failure, the others at debug level, the success
    assert tries <= 3 * 3600 / agent.THAW_RETRY_MAX_SECONDS + 6, tries  # not 3 h / 5 s = 2160
    assert said[-1].getMessage() == f"the automatic unfreeze worked after {tries} tries"
