"""readinessProbe and livenessProbe, run as the kubelet runs a pod's (KubeVirt's handlers).

tcpSocket and httpGet reach the guest's pod-network address from the daemon (in the pod
network's namespace, as the kubelet reaches a pod's IP); exec (`guest-exec`) and
guestAgentPing (`guest-ping`) go through the guest agent. A probe's result counts after
`successThreshold` successes or `failureThreshold` failures in a row, as the kubelet's.
"""

from __future__ import annotations

import base64
import enum
import os
import ssl
from collections.abc import Callable

import attrs
import trio

from vmid.api import types as t
from vmid.errors import AgentError
from vmid.runtime.agent import GuestAgent

#: Bytes read of an HTTP answer: the status line is all a probe needs (the kubelet reads 10 KiB).
MAX_HTTP_BYTES = 10 << 10
#: What a failed exec's output may add to a message (events and reasons stay short).
MAX_OUTPUT = 512
#: guest-exec-status is asked this often while the command runs.
EXEC_POLL_SECONDS = 0.2
#: The kubelet's User-Agent (its major.minor: vmid says which Kubernetes it mimics).
USER_AGENT = "kube-probe/1.31"


class Result(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"


@attrs.frozen
class Outcome:
    """One run of a probe: its result, and what it said (the kubelet's "output")."""

    result: Result
    output: str = ""


class ProbeFailed(Exception):
    """A probe's handler failed; its message is the probe's output."""


async def run_once(probe: t.Probe, address: str | None, agent: GuestAgent) -> Outcome:
    """Run the probe's handler once, within its timeoutSeconds."""
    timeout = float(probe.timeoutSeconds or 1)
    try:
        with trio.fail_after(timeout):
            output = await _handler(probe, address, agent, timeout)
    except trio.TooSlowError:
        return Outcome(Result.FAILURE, f"timeout: no answer within {timeout:g}s")
    except (ProbeFailed, AgentError) as exc:
        return Outcome(Result.FAILURE, str(exc))
    return Outcome(Result.SUCCESS, output)


async def _handler(probe: t.Probe, address: str | None, agent: GuestAgent, within: float) -> str:
    if probe.tcpSocket is not None:
        stream = await _connect(_address(address), probe.tcpSocket.port)
        await stream.aclose()
        return ""
    if probe.httpGet is not None:
        return await _http_get(probe.httpGet, _address(address))
    if probe.exec is not None:
        return await _exec(agent, probe.exec.command, within)
    await agent.call("guest-ping", within=within)
    return ""


async def _connect(address: str, port: int) -> trio.SocketStream:
    """A TCP connection; a failure says what the kubelet's says (`dial tcp ...: connect: ...`)."""
    sock = trio.socket.socket(trio.socket.AF_INET6 if ":" in address else trio.socket.AF_INET)
    try:
        await sock.connect((address, port))
    except OSError as exc:
        sock.close()
        why = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        raise ProbeFailed(f"dial tcp {address}:{port}: connect: {why}") from exc
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _address(address: str | None) -> str:
    if not address:
        raise ProbeFailed("the VMI has no pod-network address yet")
    return address


async def _http_get(action: t.HTTPGetAction, address: str) -> str:
    """The kubelet's HTTP probe: 200-399 succeeds (redirects are not followed)."""
    stream: trio.abc.Stream = await _connect(address, action.port)
    try:
        if action.scheme is t.URIScheme.HTTPS:
            context = ssl.create_default_context()
            context.check_hostname = False  # the kubelet does not verify the certificate
            context.verify_mode = ssl.CERT_NONE
            stream = trio.SSLStream(stream, context, server_hostname=address)
        headers = {"Host": f"{address}:{action.port}", "User-Agent": USER_AGENT, "Accept": "*/*"}
        headers.update({h.name: h.value for h in action.httpHeaders})
        lines = [f"GET {action.path or '/'} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        request = "\r\n".join([*lines, "Connection: close", "", ""])
        await stream.send_all(request.encode("latin-1", "replace"))
        answer = await _status_line(stream)
    except OSError as exc:  # the guest closed or reset it, or TLS failed
        raise ProbeFailed(f"HTTP probe failed: {exc}") from exc
    finally:
        await stream.aclose()
    parts = answer.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProbeFailed(f"HTTP probe failed: not an HTTP answer: {answer[:80]!r}")
    code = int(parts[1])
    if not 200 <= code < 400:
        raise ProbeFailed(f"HTTP probe failed with statuscode: {code}")
    return ""


async def _status_line(stream: trio.abc.Stream) -> str:
    data = bytearray()
    while b"\r\n" not in data and len(data) < MAX_HTTP_BYTES:
        chunk = await stream.receive_some(MAX_HTTP_BYTES)
        if not chunk:
            break
        data += chunk
    return bytes(data.split(b"\r\n", 1)[0]).decode("latin-1")


async def _exec(agent: GuestAgent, command: tuple[str, ...], within: float) -> str:
    """guest-exec, then guest-exec-status until it exits; exit status 0 succeeds."""
    arguments = {"path": command[0], "arg": list(command[1:]), "capture-output": True}
    started = await agent.call("guest-exec", arguments, within=within)
    pid = started.get("pid") if isinstance(started, dict) else None
    if not isinstance(pid, int):
        raise ProbeFailed(f"guest-exec answered no pid: {started!r:.100}")
    while True:
        status = await agent.call("guest-exec-status", {"pid": pid}, within=within)
        if isinstance(status, dict) and status.get("exited"):
            break
        await trio.sleep(EXEC_POLL_SECONDS)
    output = (_decoded(status.get("out-data")) + _decoded(status.get("err-data")))[:MAX_OUTPUT]
    code = status.get("exitcode", status.get("signal"))
    if code != 0:
        raise ProbeFailed(f"command {list(command)} exited with {code}: {output.strip()}")
    return output


def _decoded(data: object) -> str:
    if not isinstance(data, str):
        return ""
    return base64.b64decode(data, validate=False).decode("utf-8", "replace")


@attrs.define
class Prober:
    """One probe's state across runs: the kubelet's consecutive counts and current result."""

    kind: str  # "Readiness" or "Liveness"
    probe: t.Probe
    #: Readiness starts failed (not Ready until it succeeds), liveness succeeded.
    result: Result = attrs.field(init=False)
    _successes: int = 0
    _failures: int = 0

    def __attrs_post_init__(self) -> None:
        self.result = Result.FAILURE if self.kind == "Readiness" else Result.SUCCESS

    def count(self, outcome: Outcome) -> bool:
        """Add one run's outcome; whether the probe's result changed."""
        if outcome.result is Result.SUCCESS:
            self._successes, self._failures = self._successes + 1, 0
            needed, candidate = self.probe.successThreshold or 1, Result.SUCCESS
            reached = self._successes >= needed
        else:
            self._successes, self._failures = 0, self._failures + 1
            needed, candidate = self.probe.failureThreshold or 3, Result.FAILURE
            reached = self._failures >= needed
        if reached and self.result is not candidate:
            self.result = candidate
            return True
        return False


async def run(
    prober: Prober,
    address: Callable[[], str | None],
    agent: GuestAgent,
    on_outcome: Callable[[Prober, Outcome, bool], None],
) -> None:
    """Run `prober`'s probe every periodSeconds, after initialDelaySeconds, until cancelled;
    `on_outcome(prober, outcome, changed)` after each run."""
    probe = prober.probe
    await trio.sleep(probe.initialDelaySeconds or 0)
    while True:
        next_run = trio.current_time() + (probe.periodSeconds or 10)
        outcome = await run_once(probe, address(), agent)
        on_outcome(prober, outcome, prober.count(outcome))
        await trio.sleep_until(next_run)
