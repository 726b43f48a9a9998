"""Tests for the `vmid` command as a user runs it: exit codes, stdout and stderr.

Every test writes its manifests and a vmid.yaml with `accelerator: tcg` into tmp_path, so the
results do not depend on /dev/kvm.
"""

from __future__ import annotations

import argparse
import base64
import copy
import importlib.metadata
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE, dump
from tests.daemon import one_running_vmi
from vmid import cli
from vmid.cli import main

SEED = """\
apiVersion: kubevirt.io/v1alpha3
kind: VirtualMachineInstance
metadata:
  name: testvmi-nocloud
spec:
  terminationGracePeriodSeconds: 30
  domain:
    resources:
      requests:
        memory: 1024M
    devices:
      disks:
      - name: containerdisk
        disk:
          bus: virtio
      - name: emptydisk
        disk:
          bus: virtio
      - disk:
          bus: virtio
        name: cloudinitdisk
  volumes:
  - name: containerdisk
    containerDisk:
      image: kubevirt/fedora-cloud-container-disk-demo:latest
  - name: emptydisk
    emptyDisk:
      capacity: "2Gi"
  - name: cloudinitdisk
    cloudInitNoCloud:
      userData: |-
        #cloud-config
        password: fedora
        chpasswd: { expire: False }
"""
USER_DATA = "#cloud-config\npassword: fedora\nchpasswd: { expire: False }"

# Three problems, each on its own line, found at once.
BAD = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: bad
spec:
  domain:
    resources:
      requests:
        memory: 128Mi
    cpu:
      cores: two
    devices:
      disks:
      - name: root
        disk:
          bus: virtoi
      dsks: []
  volumes:
  - name: root
    containerDisk:
      image: kubevirt/cirros
"""
BAD_PROBLEMS = [
    'bad.yaml:11:14: spec.domain.cpu.cores: Invalid value: "two": must be of type integer',
    'bad.yaml:16:16: spec.domain.devices.disks[0].disk.bus: Unsupported value: "virtoi": '
    'supported values: "sata", "scsi", "usb", "virtio"',
    'bad.yaml:17:7: spec.domain.devices.dsks: unknown field "dsks" (did you mean "disks"?)',
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the current directory, with a TCG vmid.yaml in it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vmid.yaml").write_text("accelerator: tcg\n")
    return tmp_path


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def manifest(name: str, **changes: Any) -> str:
    data = copy.deepcopy(BASE)
    data["metadata"]["name"] = name
    data["spec"].update(changes)
    return dump(data)


# --- validate


def test_validate_good_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir, "good.yaml", manifest("good"))
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "good.yaml")
    assert (status, out, err) == (0, "good.yaml: valid: good\n", "")


def test_validate_file_with_two_vmis_names_both(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(workdir, "two.yaml", manifest("one") + "---\n" + manifest("two"))
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "two.yaml")
    assert (status, out, err) == (0, "two.yaml: valid: one, two\n", "")


def test_validate_bad_file_prints_every_problem(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(workdir, "bad.yaml", BAD)
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "bad.yaml")
    assert status == 1
    assert out == ""
    assert err.splitlines() == BAD_PROBLEMS


def test_validate_good_and_bad_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir, "good.yaml", manifest("good"))
    write(workdir, "bad.yaml", BAD)
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "good.yaml", "bad.yaml")
    assert status == 1
    assert out == "good.yaml: valid: good\n"
    assert err.splitlines() == BAD_PROBLEMS


def test_validate_bad_file_first_still_checks_the_second(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(workdir, "good.yaml", manifest("good"))
    write(workdir, "bad.yaml", BAD)
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "bad.yaml", "good.yaml")
    assert status == 1
    assert out == "good.yaml: valid: good\n"
    assert err.splitlines() == BAD_PROBLEMS


def test_validate_missing_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "nope.yaml")
    assert status == 1
    assert out == ""
    assert err.startswith("nope.yaml:1:1: cannot read the file")
    assert "No such file" in err


def test_validate_an_empty_directory(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "dir.yaml").mkdir()
    status, _, err = run(capsys, "--config", "vmid.yaml", "validate", "dir.yaml")
    assert status == 1
    assert err == "dir.yaml:1:1: a directory without a .yaml, .yml or .json file\n"


def test_validate_a_directory_and_standard_input(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "all").mkdir()
    write(workdir / "all", "a.yaml", manifest("a"))
    data = copy.deepcopy(BASE)
    data["metadata"]["name"] = "b"
    write(workdir / "all", "b.json", json.dumps(data))
    write(workdir / "all", "notes.txt", "not a manifest")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(manifest("c").encode())))
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "all", "-")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "all/a.yaml: valid: a",
        "all/b.json: valid: b",
        "<stdin>: valid: c",
    ]


def test_validate_empty_file_has_no_vmi(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir, "empty.yaml", "# nothing yet\n")
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "empty.yaml")
    assert status == 1
    assert out == ""
    assert "empty.yaml" in err
    assert "no VirtualMachineInstance" in err


def test_validate_binary_junk(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "junk.yaml").write_bytes(bytes(range(256)))
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "junk.yaml")
    assert status == 1
    assert out == ""
    assert err.startswith("junk.yaml:2:118: file is not UTF-8 text")


def test_validate_tagged_scalar_document(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir, "tagged.yaml", "!!str hello\n")
    status, _, err = run(capsys, "--config", "vmid.yaml", "validate", "tagged.yaml")
    assert status == 1
    assert err.startswith("tagged.yaml:1:1: ")


def test_validate_host_disk_outside_roots_is_a_problem(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy.deepcopy(BASE)
    data["spec"]["volumes"].append(
        {"name": "host", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}}
    )
    text = dump(data)
    write(workdir, "host.yaml", text)
    status, out, err = run(capsys, "--config", "vmid.yaml", "validate", "host.yaml")
    assert status == 1
    assert out == ""
    line = text.splitlines().index("    hostDisk:") + 2
    assert err.startswith(f"host.yaml:{line}:")
    assert "spec.volumes[1].hostDisk.path: /etc/shadow is outside" in err


# --- global flags


@pytest.mark.parametrize("where", ["before", "after"])
def test_root_and_config_before_or_after_the_command(
    workdir: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    write(workdir, "seed.yaml", SEED)
    root = workdir / "root"
    flags = ["--root", str(root), "--config", "vmid.yaml"]
    argv = [*flags, "render", "seed.yaml"] if where == "before" else ["render", "seed.yaml", *flags]
    status, out, err = run(capsys, *argv)
    assert (status, uuid_notes_only(err)) == (0, True)
    state = f"{root}/var/lib/vmid/namespaces/default/testvmi-nocloud"
    assert f"opaque={state}/disks/containerdisk.qcow2" in out
    assert f"opaque={root}/var/log/vmid/namespaces/default/testvmi-nocloud/console.log \\" in out
    assert "-accel tcg \\" in out.splitlines()[2]


@pytest.mark.parametrize("where", ["before", "after"])
def test_validate_accepts_flags_before_or_after(
    workdir: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    write(workdir, "good.yaml", manifest("good"))
    flags = ["--root", str(workdir / "root"), "--config", "vmid.yaml"]
    argv = [*flags, "validate", "good.yaml"] if where == "before" else ["validate", "good.yaml"]
    if where == "after":
        argv += flags
    assert run(capsys, *argv) == (0, "good.yaml: valid: good\n", "")


def test_relative_root_gives_absolute_paths(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(workdir, "seed.yaml", SEED)
    status, out, err = run(
        capsys, "--root", "rel", "--config", "vmid.yaml", "render", "seed.yaml", "-o", "json"
    )
    assert (status, uuid_notes_only(err)) == (0, True)
    plan = json.loads(out)
    state = f"{workdir}/rel/var/lib/vmid/namespaces/default/testvmi-nocloud"
    assert plan["cwd"] == f"{workdir}/rel/run/vmid/namespaces/default/testvmi-nocloud/qemu"
    root_file = f",opaque={state}/disks/containerdisk.qcow2"
    assert any(arg.endswith(root_file) for arg in plan["argv"])
    assert f"{state}/disks/containerdisk.qcow2" in [f["path"] for f in plan["files"]]


def test_root_gives_the_default_config_file(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = workdir / "root"
    (root / "etc/vmid").mkdir(parents=True)
    (root / "etc/vmid/vmid.yaml").write_text("accelerator: tcg\nqemu: /opt/qemu/bin/qemu\n")
    write(workdir, "seed.yaml", SEED)
    status, out, err = run(capsys, "render", "--root", str(root), "seed.yaml")
    assert (status, uuid_notes_only(err)) == (0, True)
    assert out.splitlines()[0] == "/opt/qemu/bin/qemu \\"


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_with_unknown_key(
    workdir: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    write(workdir, "bad-config.yaml", "accelerator: tcg\nhostDiskRots:\n- /srv\n")
    write(workdir, "good.yaml", manifest("good"))
    flags = ["--config", "bad-config.yaml"]
    argv = [*flags, "validate", "good.yaml"] if where == "before" else ["validate", "good.yaml"]
    if where == "after":
        argv += flags
    status, out, err = run(capsys, *argv)
    assert status == 1
    assert out == ""
    assert (
        'bad-config.yaml:2:1: hostDiskRots: unknown field "hostDiskRots" '
        '(did you mean "hostDiskRoots"?)'
    ) in err.splitlines()


def test_missing_config_named_on_the_command_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(workdir, "good.yaml", manifest("good"))
    status, out, err = run(capsys, "--config", "missing.yaml", "validate", "good.yaml")
    assert status == 1
    assert out == ""
    assert "missing.yaml" in err
    assert "no such configuration file" in err


def test_missing_default_config_means_defaults(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(workdir, "good.yaml", manifest("good"))
    status, out, _ = run(capsys, "--root", str(workdir / "empty-root"), "validate", "good.yaml")
    assert (status, out) == (0, "good.yaml: valid: good\n")


# --- render


def render_lines(capsys: pytest.CaptureFixture[str], workdir: Path, text: str) -> list[str]:
    write(workdir, "vmi.yaml", text)
    status, out, err = run(capsys, "--config", "vmid.yaml", "render", "vmi.yaml")
    assert (status, uuid_notes_only(err)) == (0, True)
    return out.splitlines()


def uuid_notes_only(err: str) -> bool:
    """Whether render said nothing but that the firmware UUIDs it shows are placeholders (no
    daemon ran these VMIs under this root)."""
    return all("is a placeholder: the daemon gives" in line for line in err.splitlines())


def test_render_one_option_per_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = render_lines(capsys, workdir, SEED)
    assert lines[0] == "qemu-system-x86_64 \\"
    assert "    -m 977 \\" in lines
    assert "    -accel tcg \\" in lines
    assert "    -cpu max \\" in lines
    assert "    -S \\" in lines
    assert all(line.endswith(" \\") for line in lines[:-1])
    assert not lines[-1].endswith("\\")
    assert all(line.startswith("    -") for line in lines[1:])


def test_render_quotes_for_the_shell(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = copy.deepcopy(BASE)
    data["spec"]["domain"]["firmware"] = {"serial": "it's a serial, with spaces"}
    lines = render_lines(capsys, workdir, dump(data))
    (smbios,) = [line for line in lines if "type=1" in line]
    assert smbios.startswith("    -smbios '")
    assert "serial=it'\"'\"'s a serial,, with spaces" in smbios


def test_render_bad_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir, "bad.yaml", BAD)
    status, out, err = run(capsys, "--config", "vmid.yaml", "render", "bad.yaml")
    assert status == 1
    assert out == ""
    assert err.splitlines() == BAD_PROBLEMS


def test_render_empty_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir, "empty.yaml", "")
    status, out, _ = run(capsys, "--config", "vmid.yaml", "render", "empty.yaml")
    assert status == 1
    assert out == ""


def test_render_two_vmis_heads_each(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = render_lines(capsys, workdir, manifest("one") + "---\n" + manifest("two"))
    assert "# default/one" in lines  # namespace/name
    assert "# default/two" in lines
    assert lines.index("# default/one") < lines.index("# default/two")


def render_json(capsys: pytest.CaptureFixture[str], workdir: Path, text: str) -> Any:
    write(workdir, "vmi.yaml", text)
    status, out, err = run(capsys, "--config", "vmid.yaml", "render", "vmi.yaml", "-o", "json")
    assert (status, uuid_notes_only(err)) == (0, True)
    return json.loads(out)


def test_render_json(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = render_json(capsys, workdir, SEED)
    argv = plan["argv"]
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-m") + 1] == "977"
    assert [p["kind"] for p in plan["prepare"]] == ["ImageOverlay", "EmptyDisk", "CloudInitIso"]
    overlay, empty, iso = plan["prepare"]
    assert overlay["image"] == "docker.io/kubevirt/fedora-cloud-container-disk-demo:latest"
    assert empty["size"] == 2 * 2**30
    files = {f["name"]: f["content"] for f in iso["files"]}
    assert files["user-data"] == USER_DATA
    assert json.loads(files["meta-data"]) == {
        "instance-id": plan["uuid"],
        "local-hostname": "testvmi-nocloud",
    }
    (tap,) = plan["taps"]
    assert tap["device"].startswith("vmid")
    nic = argv[argv.index("-device", argv.index("-netdev")) + 1]
    assert f"netdev=net0,id=ua-interface-default,mac={tap['mac']}," in nic
    assert argv[argv.index("-netdev") + 1] == f"tap,id={tap['netdev']},fd=4"  # vmid opens it
    assert plan["gracePeriodSeconds"] == 30


def test_render_json_grace_period(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render_json(capsys, workdir, manifest("vm"))["gracePeriodSeconds"] == 30
    given = manifest("vm", terminationGracePeriodSeconds=7)
    assert render_json(capsys, workdir, given)["gracePeriodSeconds"] == 7


def test_render_json_binary_file_content_is_base64(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = b"\x1f\x8b\x08\x00binary\xff"
    data = copy.deepcopy(BASE)
    data["spec"]["volumes"].append(
        {"name": "ci", "cloudInitNoCloud": {"userDataBase64": base64.b64encode(blob).decode()}}
    )
    plan = render_json(capsys, workdir, dump(data))
    (iso,) = [p for p in plan["prepare"] if p["kind"] == "CloudInitIso"]
    files = {f["name"]: f["content"] for f in iso["files"]}
    assert files["user-data"] == "base64:" + base64.b64encode(blob).decode()


def test_render_json_two_vmis_is_a_list(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = render_json(capsys, workdir, manifest("one") + "---\n" + manifest("two"))
    assert [p["name"] for p in plans] == ["default/one", "default/two"]


def test_render_output_choice_is_checked(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir, "vmi.yaml", SEED)
    with pytest.raises(SystemExit) as exited:
        main(["render", "vmi.yaml", "-o", "xml"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vmid")
    assert "apply" in out
    assert "restart" in out


def test_help_lists_every_verb_as_its_module_registers_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`vmid --help` lists the verbs from cli.VERBS without importing their modules: the same
    names, order and summaries as the parser with every verb's module registered."""
    every = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    registered = [(a.dest, a.help) for a in every._choices_actions]
    assert registered == [(verb, summary) for verb, _, summary in cli.VERBS]
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out == cli._parser().format_help()


def test_a_flag_value_that_names_a_verb_does_not_change_the_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The verb is guessed before parsing (only its module is imported); a guess that parsing
    proves wrong (an abbreviated flag took the word as its value) parses again with all."""
    one_running_vmi(tmp_path)
    assert run(capsys, "--root", str(tmp_path), "--namesp", "describe", "get") == (
        0,
        "",
        "No resources found in describe namespace.\n",
    )
    assert (
        run(capsys, "--root", str(tmp_path), "--namesp", "default", "get")[1].split()[6] == "vm-a"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "version")[:2] == (0, f"vmid version {importlib.metadata.version('vmid')}\n")
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("vmid version ")


# --- the module entry point


@pytest.mark.timeout(60)
def test_module_entry_point(tmp_path: Path) -> None:
    write(tmp_path, "vmid.yaml", "accelerator: tcg\n")
    write(tmp_path, "good.yaml", manifest("good"))
    write(tmp_path, "bad.yaml", BAD)
    result = subprocess.run(
        [sys.executable, "-m", "vmid.cli", "validate", "--config", "vmid.yaml", "good.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "good.yaml: valid: good\n",
        "",
    )
    result = subprocess.run(
        [sys.executable, "-m", "vmid.cli", "validate", "--config", "vmid.yaml", "bad.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == BAD_PROBLEMS


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("accelerator: fast\n", "bad-config.yaml:1:14: accelerator: Unsupported value: "),
        ("podNetwork: {cidr: 10.0.2.1/24}\n", "podNetwork.cidr: 10.0.2.1/24 has host bits set"),
        ("podNetwork: {cidr: 10.0.2.0/31}\n", "10.0.2.0/31 is too small for a gateway and a VM"),
        ("podNetwork: {bridge: virbr0}\n", "podNetwork.bridge: 'virbr0' must start with 'vmid'"),
        ("multusBridges: {lan: a-bridge-name-too-long}\n", "multusBridges.lan: "),
        ("podNetwork: {dnsServers: 9.9.9.9}\n", "podNetwork.dnsServers: "),
        ("podNetwork: {cidr: 0.0.0.0/0}\n", "podNetwork.cidr: 0.0.0.0/0 overlaps 0.0.0.0/8"),
        ("podNetwork: {cidr: 127.0.0.0/8}\n", "127.0.0.0/8 overlaps 127.0.0.0/8, loopback"),
        ("podNetwork: {cidr: 224.0.0.0/24}\n", "224.0.0.0/24 overlaps 224.0.0.0/4, multicast"),
        ("podNetwork: {cidr: 169.254.0.0/24}\n", "overlaps 169.254.0.0/16, link-local"),
        ("podNetwork: {cidr: 240.0.0.0/24}\n", "overlaps 240.0.0.0/4, reserved"),
        ("hostDiskRoots: [/]\n", "hostDiskRoots: '/' is or holds a system directory (/bin)"),
        ("hostDiskRoots: [/etc/disks]\n", "'/etc/disks' is or holds a system directory (/etc)"),
        ("hostDiskRoots: [/var]\n", "'/var' is or holds a system directory (/var/lib/vmid)"),
        ("hostDiskRoots: [/var/lib/vmid]\n", "system directory (/var/lib/vmid)"),
        ("hostDiskRoots: [/dev/]\n", "'/dev/' is or holds a system directory (/dev)"),
        ("hostDiskRoots: [disks]\n", "hostDiskRoots: 'disks' must be an absolute path"),
        ("hostDiskRoots: [/srv/../etc]\n", "'/srv/../etc' must not contain '..'"),
        ("volumesDir: ../../../etc\n", "volumesDir: '../../../etc' must not contain '..'"),
        ("volumesDir: /proc\n", "volumesDir: '/proc' is or holds a system directory (/proc)"),
        ("multusBridges: {x: lo}\n", "multusBridges.x: 'lo' is the loopback device"),
        ("multusBridges: {x: vmid0}\n", "multusBridges.x: 'vmid0' is a name vmid manages"),
    ],
)
def test_config_with_a_bad_value(
    workdir: Path, capsys: pytest.CaptureFixture[str], config: str, expected: str
) -> None:
    write(workdir, "bad-config.yaml", config)
    write(workdir, "good.yaml", manifest("good"))
    status, out, err = run(capsys, "--config", "bad-config.yaml", "validate", "good.yaml")
    assert status == 1
    assert out == ""
    assert "bad-config.yaml" in err
    assert expected in err


# A guest's console output, escape sequences and bytes that are not UTF-8 included.
GUEST_OUTPUT = b"login: \x1b]0;owned\x07\x1b[2J\rroot\r\nok\tdone \xff\xc3\xa9\xc2\x9b\x9b\n"


def _logs_on_a_terminal(root: Path) -> bytes:
    """What `vmid logs` writes when its stdout is a terminal (a pty here)."""
    import os
    import pty
    import tty

    primary, secondary = pty.openpty()
    tty.setraw(secondary)  # no newline translation: the bytes as vmid wrote them
    process = subprocess.Popen(
        [sys.executable, "-m", "vmid.cli", "logs", "vm", "--root", str(root)],
        stdout=secondary,
        stderr=subprocess.PIPE,
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the writer closed the terminal
            break
        if not data:
            break
        output += data
    os.close(primary)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    return output


@pytest.mark.timeout(60)
def test_logs_show_a_guests_escape_sequences_on_a_terminal_and_pass_them_to_a_pipe(
    tmp_path: Path,
) -> None:
    log = tmp_path / "var/log/vmid/namespaces/default/vm/console.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(GUEST_OUTPUT)
    shown = _logs_on_a_terminal(tmp_path)
    assert (
        shown == b"login: \\x1b]0;owned\\x07\\x1b[2J\\x0droot\r\nok\tdone \\xff\xc3\xa9\\x9b\\x9b\n"
    )
    piped = subprocess.run(
        [sys.executable, "-m", "vmid.cli", "logs", "vm", "--root", str(tmp_path)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert piped.stdout == GUEST_OUTPUT


def test_a_log_the_caller_cannot_read_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    logs = tmp_path / "var/log/vmid/namespaces/default/vm-a"
    logs.mkdir(parents=True)
    (logs / "console.log").write_text("secret\n")
    (logs / "console.log").chmod(0o600)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
         sys.executable, "-m", "vmid", "logs", "vm-a", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert "Permission denied; run as root" in result.stderr


def test_every_verb_says_what_it_does_with_examples_and_helps_every_argument() -> None:
    commands = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    lacking = []
    image = next(
        a for a in commands.choices["image"]._actions if isinstance(a, argparse._SubParsersAction)
    )
    verbs = {**commands.choices, **{f"image {k}": v for k, v in image.choices.items()}}
    for verb, parser in verbs.items():
        if verb != "version" and not (parser.description and "examples:" in (parser.epilog or "")):
            lacking.append(f"{verb}: description or examples")
        for action in parser._actions:
            if action.help is None and not isinstance(action, argparse._SubParsersAction):
                lacking.append(f"{verb}: {action.dest}")
    assert lacking == []


def test_each_verb_offers_only_the_global_flags_it_means_something_by(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    reads_the_config = {"daemon", "apply", "validate", "render", "image"}
    no_namespace = {"daemon", "validate", "render", "image", "version", "completion"}
    for verb, verb_parser in commands.choices.items():
        usage = verb_parser.format_usage()
        assert ("--root DIR" in usage) == (verb not in ("version", "completion")), usage
        assert ("--config FILE" in usage) == (verb in reads_the_config), usage
        assert ("-n NS" in usage) == (verb not in no_namespace), usage
    # Accepted all the same, before or after the verb, as kubectl's global flags.
    for argv in (
        ["version", "-n", "x", "--config", "/nope", "--root", "/nope"],
        ["-n", "x", "version"],
    ):
        assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("vmid version") == 2
    assert parser.parse_args(["image", "list", "-n", "x"]).namespace == "x"
    assert parser.parse_args(["-n", "x", "get"]).namespace == "x"


@pytest.mark.timeout(60)
def test_man_pages_are_made_from_the_parser_and_the_config_and_render(tmp_path: Path) -> None:
    source = Path(__file__).parent.parent
    environment = {**os.environ, "PYTHONPATH": str(source)}
    generate = [sys.executable, str(source / "docs/manpages.py"), str(tmp_path)]
    subprocess.run(generate, check=True, timeout=30, env=environment)
    for page in (tmp_path / "man8/vmid.8", tmp_path / "man5/vmid.yaml.5"):
        shown = subprocess.run(
            ["man", "--warnings", "-l", str(page)],
            capture_output=True, text=True, timeout=30, check=True,
            env={**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"},
        )  # fmt: skip
        assert shown.stderr == ""
        assert shown.stdout
    assert "vmid restart [-h]" in (tmp_path / "man8/vmid.8").read_text()
    assert "SUPPRESS" not in (tmp_path / "man8/vmid.8").read_text()  # a hidden argument's help
    assert "onDaemonStop: stop" in (tmp_path / "man5/vmid.yaml.5").read_text()
