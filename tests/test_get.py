"""`vmid get`'s names, selectors and output formats, against a real daemon with the fake QEMU,
and kubectl's AGE format."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, fake_config, manifest, running_daemon
from vmid.cli import jsonpath, selector
from vmid.cli.show import human_duration


def labelled(name: str, labels: str) -> str:
    return manifest(name).replace(f"  name: {name}\n", f"  name: {name}\n  labels: {labels}\n")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("get"), fake_config()) as running:
        running.drop("web.yaml", labelled("web", "{app: web, tier: front}"))
        running.drop("db.yaml", labelled("db", "{app: db}"))
        running.wait_phase("web", "Running")
        running.wait_phase("db", "Running")
        yield running


@pytest.mark.timeout(60)
def test_get_names_and_the_kind_before_them(daemon: Daemon) -> None:
    done = daemon.vmid("get", "vmi", "web", "db")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["db", "web"]
    assert all(line.split()[3] == socket.gethostname() for line in lines[1:])
    partly = daemon.vmid("get", "web", "nope")
    assert partly.returncode == 1
    assert [line.split()[0] for line in partly.stdout.splitlines()] == ["NAME", "web"]
    assert "'nope' not found in namespace 'default'" in partly.stderr


@pytest.mark.timeout(60)
def test_get_selector_labels_and_no_headers(daemon: Daemon) -> None:
    done = daemon.vmid("get", "-l", "app in (web,x),tier", "--show-labels", "--no-headers")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.split()[0] == "web"
    assert line.split()[-1] == "app=web,tier=front"
    none = daemon.vmid("get", "-l", "app=nothing")
    assert (none.returncode, none.stdout) == (0, "")
    assert "No resources found in default namespace." in none.stderr
    bad = daemon.vmid("get", "-l", "app=(")
    assert bad.returncode == 1
    assert "unable to parse requirement: 'app=('" in bad.stderr


@pytest.mark.timeout(60)
def test_get_output_name_jsonpath_and_custom_columns(daemon: Daemon) -> None:
    names = daemon.vmid("get", "-o", "name").stdout.split()
    assert sorted(names) == [
        "virtualmachineinstance.kubevirt.io/db",
        "virtualmachineinstance.kubevirt.io/web",
    ]
    template = '{range .items[*]}{.metadata.name}={.status.phase}{"\\n"}{end}'
    listed = daemon.vmid("get", "-o", f"jsonpath={template}")
    assert sorted(listed.stdout.splitlines()) == ["db=Running", "web=Running"]
    one = daemon.vmid("get", "web", "-o", "jsonpath={.status.qemu.pid}")
    assert one.stdout == str(daemon.pid("web"))
    ready = '{.status.conditions[?(@.type=="Ready")].status}'
    columns = daemon.vmid(
        "get", "web", "-o", f"custom-columns=NAME:.metadata.name,READY:{ready},X:.no.such"
    )
    assert [line.split() for line in columns.stdout.splitlines()] == [
        ["NAME", "READY", "X"],
        ["web", "True", "<none>"],
    ]
    bad = daemon.vmid("get", "-o", "jsonpath={range .items[*]}")
    assert bad.returncode == 1
    assert "{range} without {end}" in bad.stderr
    assert json.loads(daemon.vmid("get", "web", "-o", "json").stdout)["metadata"]["name"] == "web"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-5, "<invalid>"), (0, "0s"), (95, "95s"), (200, "3m20s"), (300, "5m"), (7200, "120m"),
     (4 * 3600 + 60, "4h1m"), (30 * 3600, "30h"), (2 * 86400 + 5 * 3600, "2d5h"),
     (30 * 86400, "30d"), (3 * 365 * 86400 + 4 * 86400, "3y4d"), (9 * 365 * 86400, "9y")],
)  # fmt: skip
def test_age_as_kubectl(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_selectors() -> None:
    labels = {"app": "web", "env": "a"}
    assert selector.parse("app=web,env!=b,env in (a, c),!gone,app")(labels)
    assert not selector.parse("env notin (a)")(labels)
    assert not selector.parse("app==db")(labels)


def test_jsonpath_templates() -> None:
    data = {"a": [{"n": 1, "t": "x"}, {"n": 2, "t": "y"}], "m": {"k.dot": "v"}}
    assert jsonpath.Template("{.a[*].n}").render(data) == "1 2"
    assert jsonpath.Template("{.a[?(@.n>1)].t} {.m.k\\.dot} {.a[-1:].t}").render(data) == "y v y"
    assert jsonpath.Template("{.m}").render(data) == '{"k.dot":"v"}'


@pytest.mark.timeout(60)
def test_bash_completion_of_verbs_flags_and_names(daemon: Daemon, tmp_path: Path) -> None:
    script = tmp_path / "vmid.bash"
    generated = [sys.executable, "-m", "vmid.cli", "completion", "bash"]
    script.write_text(subprocess.run(generated, capture_output=True, text=True, check=True).stdout)
    wrapper = tmp_path / "vmid"  # `vmid` as the completion calls it: COMP_WORDS[0]
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m vmid.cli "$@"\n')
    wrapper.chmod(0o755)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in (str(wrapper), *words))
        code = f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; _vmid; "
        code += 'echo "${COMPREPLY[@]}"'
        done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("re") == ["render", "restart", "reset"]
    assert complete("get", "--no") == ["--no-headers"]
    assert complete("--root", str(daemon.root), "logs", "w") == ["web"]
    assert sorted(complete("--root", str(daemon.root), "restart", "")) == ["db", "web"]


@pytest.mark.timeout(60)
def test_fish_completion_of_verbs_flags_and_names(daemon: Daemon, tmp_path: Path) -> None:
    script = tmp_path / "vmid.fish"
    generated = [sys.executable, "-m", "vmid.cli", "completion", "fish"]
    script.write_text(subprocess.run(generated, capture_output=True, text=True, check=True).stdout)
    assert subprocess.run(["fish", "--no-execute", script], timeout=30).returncode == 0
    wrapper = tmp_path / "bin/vmid"  # `vmid` as fish finds it on PATH
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m vmid.cli "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}

    def complete(line: str) -> list[str]:
        code = f"source {script}; complete --do-complete '{line}'"
        done = subprocess.run(
            ["fish", "--no-config", "-c", code], capture_output=True, text=True, timeout=30, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert complete("vmid re") == [
        "render\tprint the QEMU command line vmid would run",
        "reset\thard-reset a VMI, as the reset button does",
        "restart\tstop a VMI gracefully and start it again (virtctl restart)",
    ]
    assert complete("vmid get --no") == ["--no-headers\tno header line in tables"]
    assert complete("vmid completion ") == ["bash", "fish", "zsh"]
    root = str(daemon.root)
    assert complete(f"vmid --root {root} logs w") == ["web"]
    assert complete(f"vmid logs --root {root} ") == ["db", "web"]
    assert complete(f"vmid -n other --root {root} describe ") == []
    assert [c.split("\t")[0] for c in complete(f"vmid --root {root} logs web --s")] == [
        "--since",
        "--since-time",
    ]
    # Global flags where they mean something: -n on get, not on version.
    assert [c.split("\t")[0] for c in complete("vmid get --namesp")] == ["--namespace"]
    assert complete("vmid version --namesp") == []


@pytest.mark.timeout(60)
def test_qmp_hmp_prints_the_monitors_text(daemon: Daemon) -> None:
    done = daemon.vmid("qmp", "web", "--hmp", "info block")
    assert (done.returncode, done.stdout) == (0, "fake monitor: info block\n")
    neither = daemon.vmid("qmp", "web")
    assert neither.returncode == 1
    assert "give either a QMP COMMAND or --hmp" in neither.stderr
