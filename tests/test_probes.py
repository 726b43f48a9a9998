"""Probes in manifests: Kubernetes' defaults, KubeVirt's validation; the kubelet's counting.
Probes run against real guests in tests/test_agent_e2e.py."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import dump, problems_of
from vmid.api import defaults
from vmid.api import types as t
from vmid.api.load import load_text
from vmid.runtime import probes
from vmid.runtime.agent import GuestAgent


def with_probes(base: dict[str, Any], **probes_: Any) -> dict[str, Any]:
    base["spec"].update(probes_)
    return base


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in problems_of(data)]


def test_defaults_are_kubernetes(base: dict[str, Any]) -> None:
    data = with_probes(base, readinessProbe={"httpGet": {"port": 80}})
    loaded, found = load_text("vmi.yaml", dump(data).encode())
    assert found == []
    assert loaded is not None
    probe = defaults.apply(loaded[0].vmi).spec.readinessProbe
    assert probe == t.Probe(
        httpGet=t.HTTPGetAction(port=80, path="/", scheme=t.URIScheme.HTTP),
        initialDelaySeconds=0,
        timeoutSeconds=1,
        periodSeconds=10,
        successThreshold=1,
        failureThreshold=3,
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"readinessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}},
            [("spec.readinessProbe", "spec.readinessProbe must have exactly one probe type set")],
        ),
        (
            {"livenessProbe": {"periodSeconds": 5}},
            [
                (
                    "spec.livenessProbe",
                    "either spec.livenessProbe.tcpSocket, spec.livenessProbe.exec or "
                    "spec.livenessProbe.httpGet must be set if a spec.livenessProbe is specified",
                )
            ],
        ),
        (
            {
                "livenessProbe": {"guestAgentPing": {}},
                "startStrategy": "Paused",
            },
            [
                (
                    "spec.startStrategy",
                    "either spec.startStrategy or spec.livenessProbe should be provided.Pausing "
                    "VMI with LivenessProbe is not supported",
                )
            ],
        ),
        (
            {"livenessProbe": {"tcpSocket": {"port": 22}, "successThreshold": 2}},
            [("spec.livenessProbe.successThreshold", "Invalid value: 2: must be 1")],
        ),
        (
            {"readinessProbe": {"tcpSocket": {"port": 0}, "periodSeconds": -1}},
            [
                (
                    "spec.readinessProbe.tcpSocket.port",
                    "Invalid value: 0: must be between 1 and 65535, inclusive",
                ),
                (
                    "spec.readinessProbe.periodSeconds",
                    "Invalid value: -1: must be greater than or equal to 1",
                ),
            ],
        ),
    ],
)
def test_kubevirt_refuses(base: dict[str, Any], spec: dict[str, Any], expected: Any) -> None:
    assert problems(with_probes(base, **spec)) == expected


def test_http_and_tcp_need_the_pod_network(base: dict[str, Any]) -> None:
    base["spec"]["domain"]["devices"]["autoattachPodInterface"] = False
    data = with_probes(
        base,
        readinessProbe={"httpGet": {"port": 80}},
        livenessProbe={"exec": {"command": ["true"]}},
    )
    assert problems(data) == [
        (
            "spec.readinessProbe.httpGet",
            "spec.readinessProbe.httpGet is only allowed if the Pod Network is attached",
        )
    ]


def probe(**fields: Any) -> t.Probe:
    return t.Probe(tcpSocket=t.TCPSocketAction(port=1), **fields)


def outcome(ok: bool) -> probes.Outcome:
    return probes.Outcome(probes.Result.SUCCESS if ok else probes.Result.FAILURE, "")


def test_readiness_counts_as_the_kubelet() -> None:
    prober = probes.Prober("Readiness", probe(successThreshold=2, failureThreshold=2))
    assert prober.result is probes.Result.FAILURE  # not Ready until it succeeds
    assert [prober.count(outcome(ok)) for ok in (True, False, True, True, False, False)] == [
        False,
        False,
        False,
        True,  # two successes in a row
        False,
        True,  # two failures in a row
    ]


def test_liveness_starts_alive_and_dies_at_its_threshold() -> None:
    prober = probes.Prober("Liveness", probe(failureThreshold=3))
    changes = [prober.count(outcome(ok)) for ok in (False, False, True, False, False, False)]
    assert changes == [False, False, False, False, False, True]
    assert prober.result is probes.Result.FAILURE


@pytest.mark.timeout(10)
async def test_tcp_and_http_probes_against_local_servers() -> None:
    agent = GuestAgent("test", Path("/nonexistent"), lambda: None)

    async def http(stream: trio.SocketStream, status: bytes) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        ok = (
            await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"),
                functools.partial(http, status=b"200 OK"),
                0,
            )
        )[0]
        bad = (
            await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"),
                functools.partial(http, status=b"503 No"),
                0,
            )
        )[0]
        ok_port, bad_port = ok.socket.getsockname()[1], bad.socket.getsockname()[1]

        def get(port: int) -> t.Probe:
            return t.Probe(httpGet=t.HTTPGetAction(port=port, path="/"), timeoutSeconds=2)

        assert (
            await probes.run_once(get(ok_port), "127.0.0.1", agent)
        ).result is probes.Result.SUCCESS
        failed = await probes.run_once(get(bad_port), "127.0.0.1", agent)
        assert failed == probes.Outcome(
            probes.Result.FAILURE, "HTTP probe failed with statuscode: 503"
        )
        tcp = t.Probe(tcpSocket=t.TCPSocketAction(port=ok_port), timeoutSeconds=2)
        assert (await probes.run_once(tcp, "127.0.0.1", agent)).result is probes.Result.SUCCESS
        closed = await probes.run_once(
            t.Probe(tcpSocket=t.TCPSocketAction(port=1)), "127.0.0.1", agent
        )
        assert closed == probes.Outcome(
            probes.Result.FAILURE, "dial tcp 127.0.0.1:1: connect: connection refused"
        )
        ping = await probes.run_once(t.Probe(guestAgentPing=t.EmptyBinding()), None, agent)
        assert ping.output == "the guest agent is not connected"
        nursery.cancel_scope.cancel()
