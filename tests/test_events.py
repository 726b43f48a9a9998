"""Events: kept after their VMI is gone, aggregated, bounded, pruned; `vmid events` as kubectl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, fake_config, manifest, running_daemon
from vmid import cli
from vmid.config import load_config
from vmid.errors import ConfigError
from vmid.runtime import events
from vmid.runtime.events import EventStore

pytestmark = pytest.mark.timeout(120)


def vmi(name: str, namespace: str | None = None) -> dict[str, Any]:
    metadata = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": metadata}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_event_is_a_kubernetes_event_about_its_vmi(tmp_path: Path) -> None:
    EventStore(tmp_path).record(
        vmi("web", "a"), "Normal", "Started", "VirtualMachineInstance started."
    )
    (event,) = events.read(tmp_path, "a", "web")
    assert event["apiVersion"] == "v1"
    assert event["kind"] == "Event"
    assert event["involvedObject"] == {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "namespace": "a",
        "name": "web",
    }
    assert event["metadata"]["name"].startswith("web.")
    int(event["metadata"]["name"].removeprefix("web."), 16)  # client-go's NAME.HEX
    assert event["metadata"]["namespace"] == "a"
    assert (event["type"], event["reason"], event["count"]) == ("Normal", "Started", 1)
    assert event["firstTimestamp"] == event["lastTimestamp"]
    assert event["source"]["component"] == "vmid"


def test_identical_events_are_counted_as_kubernetes_aggregates_them(tmp_path: Path) -> None:
    clock = Clock()
    store = EventStore(tmp_path, clock)
    store.record(vmi("web"), "Normal", "ShuttingDown", "Signaled Graceful Shutdown")
    first = events.read(tmp_path, "default", "web")[0]
    for _ in range(5):
        clock.now += 5
        store.record(vmi("web"), "Normal", "ShuttingDown", "Signaled Graceful Shutdown")
    store.record(vmi("web"), "Warning", "ShuttingDown", "Signaled Graceful Shutdown")
    store.record(vmi("web"), "Normal", "ShuttingDown", "another message")
    counted, warning, other = events.read(tmp_path, "default", "web")
    assert counted["count"] == 6
    assert counted["metadata"]["name"] == first["metadata"]["name"]
    assert counted["firstTimestamp"] == first["firstTimestamp"]
    assert counted["lastTimestamp"] == "2023-11-14T22:13:45Z"  # 25 s after the first
    assert (warning["count"], other["count"]) == (1, 1)


def test_two_namespaces_keep_the_events_of_their_own_vmi(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    store.record(vmi("web", "a"), "Normal", "Started", "in a")
    store.record(vmi("web", "b"), "Normal", "Started", "in b")
    store.record(vmi("web"), "Normal", "Started", "in default")
    assert [e["message"] for e in events.read(tmp_path, "a", "web")] == ["in a"]
    assert [e["message"] for e in events.read(tmp_path, "default")] == ["in default"]
    assert len(events.read(tmp_path)) == 3
    assert len(events.read(tmp_path, None, "web")) == 3


def test_a_vmi_saying_ever_new_things_keeps_its_newest_events_within_bounds(
    tmp_path: Path,
) -> None:
    store = EventStore(tmp_path)
    for number in range(500):
        store.record(vmi("flappy"), "Warning", "Reset", f"reset {number} " + "x" * 5000)
    kept = events.read(tmp_path, "default", "flappy")
    assert len(kept) == events.MAX_EVENTS
    assert kept[-1]["message"].startswith("reset 499 ")
    assert all(len(e["message"]) == events.MAX_MESSAGE for e in kept)
    assert kept[0]["message"].endswith("...")
    (file,) = tmp_path.glob("*.json")
    assert file.stat().st_size < events.MAX_FILE_BYTES // 4


def test_a_removed_vmis_events_go_after_the_ttl_and_a_living_ones_stay(tmp_path: Path) -> None:
    clock = Clock()
    store = EventStore(tmp_path, clock)
    store.record(vmi("gone"), "Normal", "Stopped", "The VirtualMachineInstance was shut down.")
    store.record(vmi("alive"), "Normal", "Started", "VirtualMachineInstance started.")
    staging = tmp_path / ".left-by-a-crash.json.0123456789abcdef"
    staging.write_text("{")
    for file in tmp_path.iterdir():
        os.utime(file, (clock.now - 30, clock.now - 30))
    assert store.prune({("default", "alive")}, keep_seconds=60) == 0
    assert len(events.read(tmp_path)) == 2
    clock.now += 31  # 61 s after both
    assert store.prune({("default", "alive")}, keep_seconds=60) == 2  # and the staging file
    assert not staging.exists()
    assert [e["involvedObject"]["name"] for e in events.read(tmp_path)] == ["alive"]
    clock.now += 3600
    assert store.prune({("default", "alive")}, keep_seconds=60) == 0
    assert [e["involvedObject"]["name"] for e in events.read(tmp_path)] == ["alive"]


def test_churning_names_keep_at_most_the_newest_removed_vmis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_GONE_OBJECTS", 10)
    clock = Clock()
    store = EventStore(tmp_path, clock)
    for number in range(30):
        store.record(vmi(f"vm-{number}"), "Normal", "Deleted", "Signaled Deletion")
        os.utime(tmp_path / events.file_name("default", f"vm-{number}"), (clock.now,) * 2)
        clock.now += 1
    assert store.prune({("default", "vm-0")}, keep_seconds=3600) == 19
    names = {e["involvedObject"]["name"] for e in events.read(tmp_path)}
    assert names == {"vm-0"} | {f"vm-{n}" for n in range(20, 30)}


def test_a_torn_file_is_no_events_and_the_next_event_replaces_it(tmp_path: Path) -> None:
    torn = tmp_path / events.file_name("default", "web")
    torn.write_text('[{"apiVersion": "v1", "kind": "Ev')
    assert events.read(tmp_path) == []
    EventStore(tmp_path).record(vmi("db"), "Normal", "Started", "VirtualMachineInstance started.")
    (good,) = events.read(tmp_path)
    odd = [{**good, "lastTimestamp": "yesterday"}, {**good, "metadata": None}, {}, "x", good]
    (tmp_path / events.file_name("default", "odd")).write_text(json.dumps(odd))
    assert len(events.read(tmp_path)) == 2  # whatever else a file holds is no event
    EventStore(tmp_path).record(vmi("web"), "Normal", "Started", "VirtualMachineInstance started.")
    assert [e["involvedObject"]["name"] for e in events.read(tmp_path, "default", "web")] == ["web"]


def test_a_file_changed_behind_the_daemons_back_is_read_again(tmp_path: Path) -> None:
    """The daemon keeps the events it wrote last, to skip reading them back: a file pruned,
    or replaced meanwhile, is read anew, never written over with the kept ones."""
    store = EventStore(tmp_path)
    store.record(vmi("web"), "Normal", "Created", "one")
    store.record(vmi("web"), "Normal", "Started", "two")
    path = tmp_path / events.file_name("default", "web")
    path.unlink()  # pruned (another EventStore: `vmid` at start, or a test)
    store.record(vmi("web"), "Normal", "Started", "three")
    assert [e["message"] for e in events.read(tmp_path, "default", "web")] == ["three"]
    other = EventStore(tmp_path)
    other.record(vmi("web"), "Warning", "Stopped", "four")  # written by someone else
    store.record(vmi("web"), "Normal", "Started", "five")
    assert [e["message"] for e in events.read(tmp_path, "default", "web")] == [
        "three",
        "four",
        "five",
    ]


def test_an_event_that_cannot_be_written_is_logged_and_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "store").write_text("a file where the directory belongs")
    store = EventStore(tmp_path / "store")
    store.record(vmi("web"), "Normal", "Started", "VirtualMachineInstance started.")
    store.record(vmi("web"), "Normal", "Started", "VirtualMachineInstance started.")
    assert len([r for r in caplog.records if "cannot record events" in r.message]) == 1


def test_events_keep_after_removal_seconds_is_read_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "vmid.yaml"
    assert load_config(config, required=False).events.keepAfterRemovalSeconds == 3600
    config.write_text("events: {keepAfterRemovalSeconds: 60}\n")
    assert load_config(config, required=True).events.keepAfterRemovalSeconds == 60
    config.write_text("events: {keepAfterRemovalSeconds: -1}\n")
    with pytest.raises(ConfigError, match=r"events\.keepAfterRemovalSeconds: must not be negative"):
        load_config(config, required=True)


def test_vmid_events_prints_kubectls_columns_and_says_when_there_are_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = EventStore(tmp_path / "var/lib/vmid/events")
    store.record(vmi("web", "a"), "Normal", "Started", "VirtualMachineInstance started.")
    store.record(vmi("db"), "Warning", "SyncFailed", "bad\x1b[2Jthing\nhere")
    assert cli.main(["events", "--root", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert row.split()[1:4] == ["Warning", "SyncFailed", "virtualmachineinstance/db"]
    assert row.endswith("bad\\x1b[2Jthing here")  # one line, no escape sequence reaches the tty
    assert cli.main(["events", "-A", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "LAST", "SEEN"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["a", "default"]
    assert cli.main(["events", "nope", "--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "No resources found in default namespace.\n")
    assert cli.main(["events", "web", "-n", "a", "-o", "json", "--root", str(tmp_path)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["kind"] == "List"
    assert [e["involvedObject"]["name"] for e in listing["items"]] == ["web"]


def events_of(daemon: Daemon, *args: str) -> list[dict[str, Any]]:
    result = daemon.vmid("events", "-o", "json", *args)
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def reasons(daemon: Daemon, name: str) -> list[str]:
    return [e["reason"] for e in events_of(daemon, name)]


def test_how_a_removed_vmi_ended_is_still_in_its_events(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        file = daemon.drop("a.yaml", manifest("vm-a", mode="ignore", grace=1))
        daemon.wait_phase("vm-a", "Running")
        file.unlink()
        daemon.wait_phase("vm-a", None)
        found = events_of(daemon, "vm-a")
        by_reason = {(e["type"], e["reason"]): e["message"] for e in found}
        assert [e["reason"] for e in found] == [
            "SuccessfulCreate",
            "Created",
            "Started",
            "Deleted",
            "ShuttingDown",
            "Deleted",
            "Stopped",
        ]
        assert by_reason[("Warning", "Deleted")] == (
            "VirtualMachineInstance stopping: the grace period of 1 s passed; killed"
        )
        assert by_reason[("Warning", "Stopped")].startswith("The VirtualMachineInstance crashed:")
        assert by_reason[("Normal", "Created")] == "VirtualMachineInstance defined."
        assert daemon.vmid("describe", "vm-a").returncode == 1  # as kubectl: the VMI is gone


def test_a_spec_change_and_a_refused_manifest_are_events_describe_shows(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        daemon.drop("a.yaml", manifest("vm-a", memory="96Mi"))

        def restarted() -> bool:  # the new spec runs: its Started is the old one counted again
            last = events_of(daemon, "vm-a")[-1]
            return (last["reason"], last["count"]) == ("Started", 2)

        daemon.wait_for("the restart", restarted)
        assert [(e["reason"], e["count"]) for e in events_of(daemon, "vm-a")] == [
            ("Restarting", 1),
            ("ShuttingDown", 1),
            ("GuestShutdown", 1),
            ("Stopped", 1),
            ("SuccessfulCreate", 2),
            ("Created", 2),
            ("Started", 2),
        ]
        text = daemon.vmid("describe", "vm-a").stdout
        section = text[text.index("Events:") :].splitlines()
        assert section[1].split() == ["TYPE", "REASON", "AGE", "FROM", "MESSAGE"]
        started = next(line for line in section if " Started " in line)
        assert "(x2 over " in started
        assert "VirtualMachineInstance started." in started
        daemon.drop("b.yaml", manifest("vm-b", memory="lots"))
        daemon.wait_phase("vm-b", "Failed")
        (refused,) = events_of(daemon, "vm-b")
        assert (refused["type"], refused["reason"]) == ("Warning", "SyncFailed")
        assert "lots" in refused["message"]


def test_a_removed_vmis_events_go_after_keep_after_removal_seconds(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config("events: {keepAfterRemovalSeconds: 2}\n")) as daemon:
        daemon.drop("a.yaml", manifest("vm-a", grace=0))
        daemon.drop("b.yaml", manifest("vm-b"))
        daemon.wait_phase("vm-a", "Running")
        daemon.wait_phase("vm-b", "Running")
        (daemon.spool / "a.yaml").unlink()
        daemon.wait_phase("vm-a", None)
        assert "Stopped" in reasons(daemon, "vm-a")
        daemon.wait_for("the events to go", lambda: not events_of(daemon, "vm-a"), timeout=15)
        assert "Started" in reasons(daemon, "vm-b")  # its VMI lives: kept, however old


def test_events_watch_prints_events_as_they_come_until_the_daemon_stops(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "vmid.cli", "events", "-w", "--root", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watcher.stdout is not None
            daemon.drop("a.yaml", manifest("vm-a"))
            assert watcher.stdout.readline().split()[:2] == ["LAST", "SEEN"]
            while "Started" not in (line := watcher.stdout.readline()):
                assert line, "the watch ended"
            assert "virtualmachineinstance/vm-a" in line
            daemon.process.send_signal(signal.SIGTERM)
            rest, err = watcher.communicate(timeout=30)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.communicate()
        assert "ShuttingDown" in rest  # the last words, then the end
        assert "Stopped" in rest
        assert watcher.returncode == 0
        assert "the daemon stopped" in err
