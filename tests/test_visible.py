"""What `vmid get` shows: refused spool files as rows of their own, at once after a chmod, chown
or symlink; and `get -w`: every status written, JSON/YAML documents, its end with the daemon."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.daemon import Daemon, fake_config, manifest, one_running_vmi, running_daemon
from vmid.api.vmistatus import VMIObject
from vmid.cli.get import Columns, WatchPrinter
from vmid.runtime import statuswatch

pytestmark = pytest.mark.timeout(120)

#: A change to a spool file's mode, owner or kind is seen within this (inotify, not the rescan).
PROMPT = 1.0


def rows(daemon: Daemon) -> dict[str, list[str]]:
    """`vmid get`'s table, by NAME."""
    listing = daemon.vmid("get")
    assert listing.returncode == 0, listing.stderr
    return {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}


def synchronized(daemon: Daemon, name: str) -> dict[str, str]:
    data = daemon.status(name)
    assert data is not None
    conditions = {c["type"]: c for c in data["status"]["conditions"]}
    found: dict[str, str] = conditions.get("Synchronized", {"status": "True", "message": ""})
    return found


def drop(daemon: Daemon, name: str, text: str, mode: int) -> Path:
    """A manifest renamed into the spool with `mode` already set."""
    staging = daemon.spool / f".{name}.tmp"
    staging.write_text(text)
    staging.chmod(mode)
    return staging.rename(daemon.spool / name)


def wait_promptly(daemon: Daemon, what: str, check: Any) -> None:
    started = time.monotonic()
    daemon.wait_for(what, check, timeout=10)
    assert time.monotonic() - started < PROMPT, f"{what} took {time.monotonic() - started:.2f} s"


def test_refused_spool_files_are_listed_failed_with_their_reasons(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(manifest("outside"))
    with running_daemon(tmp_path, fake_config()) as daemon:
        writable = drop(daemon, "writable.yaml", manifest("writable"), 0o666)
        (daemon.spool / "link-out.yaml").symlink_to(outside)
        os.mkfifo(daemon.spool / "fifo.yaml")
        daemon.drop("broken.yaml", "metadata: {name: [\n")
        daemon.drop("ok.yaml", manifest("ok"))
        daemon.wait_phase("ok", "Running")
        expected = {
            "<writable.yaml>": "refused: owned by uid 0 with mode -rw-rw-rw-",
            "<link-out.yaml>": f"refused: a symlink to {outside}, outside the spool",
            "<fifo.yaml>": "refused: a FIFO (named pipe), not a regular file",
            "<broken.yaml>": "broken.yaml:2:1: ",
        }
        daemon.wait_for("four rows", lambda: set(expected) <= set(rows(daemon)))
        listing = daemon.vmid("get")
        table = rows(daemon)
        assert table["ok"][2] == "Running"
        for name, reason in expected.items():
            assert table[name][2] == "Failed", table[name]
            (line,) = [x for x in listing.stderr.splitlines() if x.startswith(f"{name}: ")]
            assert reason in line
        items = json.loads(daemon.vmid("get", "-o", "json").stdout)["items"]
        failed = [i for i in items if i["status"]["phase"] == "Failed"]
        files = {i["metadata"]["annotations"]["vmid.io/manifest-file"] for i in failed}
        assert files == {str(daemon.spool / n.strip("<>")) for n in expected}
        assert all("name" not in i["metadata"] for i in failed)  # none claims a VMI's name
        # Mended: the row goes, the VMI runs.
        writable.chmod(0o644)
        daemon.wait_phase("writable", "Running", timeout=PROMPT + 1)
        (daemon.spool / "fifo.yaml").unlink()
        daemon.wait_for(
            "rows gone", lambda: not {"<writable.yaml>", "<fifo.yaml>"} & set(rows(daemon))
        )


def test_chmod_of_a_running_vmis_manifest_is_seen_at_once_and_leaves_it_running(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        file = daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        pid = daemon.pid("vm-a")
        file.chmod(0o666)
        wait_promptly(
            daemon, "Synchronized=False", lambda: synchronized(daemon, "vm-a")["status"] == "False"
        )
        assert (
            "refused: owned by uid 0 with mode -rw-rw-rw-"
            in synchronized(daemon, "vm-a")["message"]
        )
        # The README's rule for an invalid edit: the VM runs on, untouched.
        assert (daemon.phase("vm-a"), daemon.pid("vm-a")) == ("Running", pid)
        listing = daemon.vmid("get")
        assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == ["vm-a"]
        assert listing.stderr.startswith("vm-a: ")  # shown on its VMI, not as a row of its own
        assert "refused: owned by uid 0 with mode -rw-rw-rw-" in listing.stderr
        file.chmod(0o644)
        wait_promptly(
            daemon, "Synchronized=True", lambda: synchronized(daemon, "vm-a")["status"] == "True"
        )
        os.chown(file, 65534, 65534)
        wait_promptly(
            daemon, "the chown", lambda: synchronized(daemon, "vm-a")["status"] == "False"
        )
        assert "refused: owned by uid 65534" in synchronized(daemon, "vm-a")["message"]
        assert daemon.pid("vm-a") == pid


def test_a_new_file_refused_then_mended_by_chmod_or_a_symlink_made_is_seen_at_once(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        drop(daemon, "b.yaml", manifest("vm-b"), 0o666)
        daemon.wait_for("the refused row", lambda: "<b.yaml>" in rows(daemon))
        (daemon.spool / "b.yaml").chmod(0o644)
        wait_promptly(daemon, "vm-b to start", lambda: daemon.phase("vm-b") is not None)
        (daemon.spool / "link.yaml").symlink_to("/etc/passwd")
        wait_promptly(daemon, "the symlink's row", lambda: "<link.yaml>" in rows(daemon))


def watch(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmid", "get", "-w", *args, "--root", str(daemon.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(stream: IO[str], text: str) -> list[str]:
    lines: list[str] = []
    while text not in (line := stream.readline()):
        assert line, f"the watch ended before {text!r}: {lines}"
        lines.append(line)
    return [*lines, line]


def stop(daemon: Daemon, watcher: subprocess.Popen[str]) -> tuple[str, str]:
    """Stop the daemon; the watch must end by itself, saying so."""
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == 0
    out, err = watcher.communicate(timeout=10)
    assert watcher.returncode == 0, err
    assert err.strip().endswith("vmid: the daemon stopped"), err
    return out, err


def test_get_watch_shows_every_phase_of_a_100ms_vmi_and_ends_with_the_daemon(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        watcher = watch(daemon)
        assert watcher.stdout is not None
        try:
            assert watcher.stdout.readline().split() == [
                "NAME",
                "AGE",
                "PHASE",
                "IP",
                "NODENAME",
                "READY",
            ]
            daemon.drop("a.yaml", manifest("vm-a", mode="halt-0.1"))
            lines = read_until(watcher.stdout, "Succeeded")
            phases = [line.split()[2] for line in lines if line.split()[0] == "vm-a"]
            assert phases[-3:] == ["Scheduled", "Running", "Succeeded"], lines
            (daemon.spool / "a.yaml").unlink()
            read_until(watcher.stdout, "Deleted")
        except BaseException:
            watcher.kill()
            raise
        stop(daemon, watcher)


def documents(text: str, output: str) -> list[dict[str, Any]]:
    if output == "yaml":
        from ruamel.yaml import YAML

        return list(YAML(typ="safe").load_all(text))
    decoder, found, text = json.JSONDecoder(), [], text.strip()
    while text:
        obj, end = decoder.raw_decode(text)
        found.append(obj)
        text = text[end:].strip()
    return found


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_get_watch_prints_one_document_per_change(tmp_path: Path, output: str) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        daemon.drop("a.yaml", manifest("vm-a"))
        daemon.wait_phase("vm-a", "Running")
        watcher = watch(daemon, "-o", output)
        try:
            daemon.wait_for("the watch to start", lambda: _watches(watcher.pid))
            daemon.drop("b.yaml", manifest("vm-b"))
            daemon.wait_phase("vm-b", "Running")
        except BaseException:
            watcher.kill()
            raise
        out, _ = stop(daemon, watcher)
    found = documents(out, output)
    assert (found[0]["metadata"]["name"], found[0]["status"]["phase"]) == ("vm-a", "Running")
    b = [d["status"]["phase"] for d in found if d["metadata"]["name"] == "vm-b"]
    assert "Running" in b, b
    assert b[-1] == "Succeeded", b  # the daemon stopped it
    if output == "yaml":
        assert out.count("\n---\n") == len(found) - 1


def _watches(pid: int) -> bool:
    """Whether process `pid` watches the runtime directory, `namespaces/`, `namespaces/default`
    and `namespaces/default/vm-a`."""
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if fd.read_text().count("inotify wd:") >= 4:
                return True
    return False


def labelled(name: str, app: str, memory: str = "64Mi") -> str:
    return manifest(name, memory=memory).replace(
        f"  name: {name}\n", f"  name: {name}\n  labels: {{app: {app}}}\n"
    )


def test_get_watch_takes_several_names_or_a_selector(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        for name, app in (("vm-a", "web"), ("vm-b", "db"), ("vm-c", "db")):
            daemon.drop(f"{name}.yaml", labelled(name, app))
            daemon.wait_phase(name, "Running")
        named = watch(daemon, "vmi", "vm-a", "vm-c")
        selected = watch(daemon, "-l", "app=web")
        assert named.stdout is not None
        assert selected.stdout is not None
        try:
            seen = read_until(named.stdout, "vm-c")
            chosen = read_until(selected.stdout, "vm-a")
            daemon.drop("vm-d.yaml", labelled("vm-d", "web"))
            chosen += read_until(selected.stdout, "vm-d")
            # A new spec (its labels alone would not restart it): no longer selected, it leaves.
            daemon.drop("vm-a.yaml", labelled("vm-a", "db", memory="96Mi"))
            chosen += read_until(selected.stdout, "Deleted")
            daemon.wait_phase("vm-a", "Running")
        except BaseException:
            named.kill()
            selected.kill()
            raise
        out, _ = stop(daemon, selected)
        named_out, err = named.communicate(timeout=10)
    assert named.returncode == 0, err
    out = "".join(chosen) + out
    assert {line.split()[0] for line in out.splitlines()} == {"NAME", "vm-a", "vm-d"}, out
    assert "Deleted" in out.split("vm-a")[-1]
    named_out = "".join(seen) + named_out
    assert {line.split()[0] for line in named_out.splitlines()} == {"NAME", "vm-a", "vm-c"}


def test_get_watch_of_a_name_not_there_says_so(tmp_path: Path) -> None:
    one_running_vmi(tmp_path)  # vm-a; no daemon runs
    command = [sys.executable, "-m", "vmid", "get", "-w", "--root", str(tmp_path)]
    done = subprocess.run(
        [*command, "vm-a", "nothere"], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (1, "")  # as kubectl: nothing watched
    assert (
        done.stderr == "vmid: virtualmachineinstance 'nothere' not found in namespace 'default'\n"
    )
    done = subprocess.run(
        [*command, "vm-a", "-l", "app"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert "'vm-a' not found" in done.stderr


def test_get_watch_says_when_no_daemon_runs(tmp_path: Path) -> None:
    (tmp_path / "run/vmid").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "vmid", "get", "-w", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.split() == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
    assert "the daemon is not running" in done.stderr


def test_get_does_not_import_trio(tmp_path: Path) -> None:
    code = (
        "import sys; from vmid import cli; cli.main(['get', '--root', sys.argv[1]]);"
        "assert 'trio' not in sys.modules, 'trio imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


#: What the reading verbs must not import: vmid.yaml's loader and the API, the planner, the
#: daemon and the libraries only they use (each costs every CLI call tens of milliseconds).
_NOT_FOR_READING = (
    "vmid.config",
    "vmid.api.load",
    "vmid.api.types",
    "vmid.api.validate",
    "vmid.plan.build",
    "vmid.manifests",
    "vmid.runtime.daemon",
    "vmid.runtime.qmp",
    "vmid.host.network",
    "ruamel",
    "trio",
    "trio_asyncio",
    "pyroute2",
    "qemu",
    "pycdlib",
    "attr",  # attrs, cattrs: the typed status is dataclasses (issue 16)
    "cattrs",
    "importlib.metadata",  # `vmid --version` and `vmid version` only
    "vmid.cli.daemon",  # only the verb run is imported (vmid/cli/__init__.py VERBS)
    "vmid.cli.apply",
    "vmid.cli.render",
)


@pytest.mark.parametrize("verb", [["get"], ["describe", "vm-a"], ["logs", "vm-a"], ["--help"]])
def test_reading_verbs_import_only_what_they_need(tmp_path: Path, verb: list[str]) -> None:
    """`vmid get`, `describe`, `logs` and `--help` start in a few times a bare Python's time:
    they import no layer they do not use (bench/startup.py times them)."""
    one_running_vmi(tmp_path)
    code = (
        "import sys; from vmid import cli\n"
        "try: code = cli.main(sys.argv[1:])\n"
        "except SystemExit as exc: code = exc.code\n"
        "print(code, *sorted(sys.modules), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--root", str(tmp_path), *verb],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    code, *modules = done.stderr.split()
    assert code == "0", done.stderr
    assert done.stdout
    assert [m for m in modules if m.startswith(_NOT_FOR_READING)] == []
    # Only the verb's own module and what it uses: 6-22 vmid modules today (every verb's: 42).
    assert len([m for m in modules if m.startswith("vmid")]) <= 30, modules


def test_a_second_daemon_on_one_root_is_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path, fake_config()) as daemon:
        other = subprocess.run(
            [
                *("unshare", "--net", "--", sys.executable, "-m", "vmid"),
                "daemon",
                "--root",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert other.returncode != 0
        assert f"another vmid daemon (pid {daemon.process.pid}" in other.stderr


def test_a_watch_shows_the_phases_it_read_too_late_to_see(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def obj(*phases: str) -> VMIObject:
        stamps = [{"phase": p, "phaseTransitionTimestamp": "2026-01-01T00:00:00Z"} for p in phases]
        metadata = {"name": "vm-a", "creationTimestamp": "2026-01-01T00:00:00Z"}
        return VMIObject.from_data(
            {
                "metadata": metadata,
                "status": {"phase": phases[-1], "phaseTransitionTimestamps": stamps},
            }
        )

    path = Path("/run/vmid/namespaces/default/vm-a/status.json")
    printer = WatchPrinter(None, Columns(wide=False, namespaces=False), [])
    printer.change(statuswatch.Change(path, obj("Pending")))
    # Scheduled and Running were each replaced before the watch could read them.
    printer.change(statuswatch.Change(path, obj("Pending", "Scheduled", "Running", "Succeeded")))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[1:]] == [
        "Pending",
        "Scheduled",
        "Running",
        "Succeeded",
    ]
    assert lines[3].split()[3:] == []  # what Running showed is not known: not made up
