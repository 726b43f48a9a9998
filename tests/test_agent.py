"""The guest agent client against scripted agents (a hostile guest among them), and KubeVirt's
merge of the guest's NICs into status.interfaces. The real qemu-ga: tests/test_agent_e2e.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from vmid.errors import AgentError
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
