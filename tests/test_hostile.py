"""Hostile manifests (tests/hostile/, made by tests/hostile/make.py) and a fuzzer.

Whatever a manifest holds: vmid refuses it with problems that name the file, a line and (for
anything inside the document) the field, or plans it so that no manifest string becomes a
QEMU option of its own, a path outside vmid's directories, or a shell word; and a daemon fed
all of them at once goes on serving the others.
"""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from tests.daemon import fake_config, manifest, running_daemon
from tests.qemuopts import parse, parse_cpu
from vmid.api.load import load_text
from vmid.config import Accelerator, Config, Paths
from vmid.errors import Problem
from vmid.manifests import plan_file
from vmid.plan.build import build
from vmid.plan.model import LaunchPlan

HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.yaml"))
CONFIG = Config(accelerator=Accelerator.TCG, hostDiskRoots=("/srv/disks",))
#: Whole-file problems (unreadable, too large, not YAML, no VMI) have no field.
FILE_LEVEL = re.compile(
    r"not UTF-8|larger than|invalid YAML|cannot read|expands to more|YAML mapping|no Virtual|digits"
)
#: Option keys whose value QEMU opens as a file: a manifest string must never land there.
FILE_KEYS = {"file", "filename", "romfile", "path", "logfile", "fd", "opaque"}
FLAG = re.compile(r"^-[A-Za-z][a-z0-9-]*$")
#: The -cpu properties vmid sets to something other than on/off.
CPU_VALUES = {"hv-spinlocks", "hv-vendor-id"}


def test_the_corpus_is_large_and_every_file_says_what_it_tries() -> None:
    assert len(HOSTILE) >= 40
    texts = [p.read_bytes() for p in HOSTILE]
    assert sum(t.startswith(b"# hostile: ") for t in texts) >= 40


def check_problem(problem: Problem, file: str) -> None:
    assert problem.file == file
    assert problem.line >= 1
    assert problem.column >= 1
    assert problem.message
    if not FILE_LEVEL.search(problem.message):
        assert problem.field, problem


def check_plan(plan: LaunchPlan, root: Path) -> None:
    """No manifest text makes an option of its own, a file option, or a path outside vmid's."""
    assert plan.argv[0] == CONFIG.qemu
    for flag, value in _flags_alternate(plan.argv):
        if flag == "-cpu" and value is not None:
            # QEMU reads -cpu with its own splitter: it must see exactly what vmid meant.
            meant = parse(value)
            model, features = parse_cpu(value)
            assert (model, features) == meant, (flag, value)
            # Feature names come from the manifest: each may only turn a feature on or off.
            assert all(v in ("on", "off") or k in CPU_VALUES for k, v in features.items()), (
                flag,
                value,
            )
        if value is None or ("=" not in value and not value.startswith("{")):
            continue
        _, pairs = parse(value)
        for key, text in pairs.items():
            assert re.fullmatch(r"[a-z][a-z0-9_.-]*", key), (flag, key)
            if key in FILE_KEYS and text.startswith("/") and not text.startswith("/dev/fdset/"):
                assert Path(text).is_relative_to(root) or text.startswith("/usr/share/"), (
                    flag,
                    key,
                    text,
                )
    for item in plan.prepare:
        assert Path(item.path).is_relative_to(root) or Path(item.path).is_relative_to("/srv/disks")


def _flags_alternate(argv: tuple[str, ...]) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for arg in argv[1:]:
        if FLAG.match(arg):
            pairs.append((arg, None))
        else:
            assert pairs, f"a bare word first in the argv: {arg!r}"
            assert pairs[-1][1] is None, f"a bare word in the argv: {arg!r}"
            pairs[-1] = (pairs[-1][0], arg)
    return pairs


@pytest.mark.parametrize("path", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_a_hostile_file_is_refused_by_field_or_planned_harmlessly(
    path: Path, tmp_path: Path
) -> None:
    paths = Paths(tmp_path)
    planned, problems = plan_file(path, CONFIG, paths, Accelerator.TCG, shown=path.name)
    for problem in problems:
        check_problem(problem, path.name)
    # An empty file holds no VMI (`vmid validate` says so; the spool waits for content).
    assert planned or problems or path.stem in ("empty", "only-comment")
    for item in planned:
        _flags_alternate(item.plan.argv)
        check_plan(item.plan, tmp_path)


def test_option_text_in_a_manifest_stays_inside_its_value(tmp_path: Path) -> None:
    for name, flag, expected in [
        ("firmware-serial", "-smbios", 'a,b=c,,d="e" -f'),
        ("machine-type", "-machine", "q35,accel=kvm"),
    ]:
        (item,), _ = plan_file(
            Path(__file__).parent / "hostile" / f"{name}.yaml",
            CONFIG,
            Paths(tmp_path),
            Accelerator.TCG,
        )
        values = [v for f, v in _flags_alternate(item.plan.argv) if f == flag and v]
        found = [parse(v) for v in values]
        assert any(head == expected or expected in pairs.values() for head, pairs in found), (
            flag,
            values,
        )


def test_a_daemon_fed_every_hostile_file_at_once_serves_the_good_vmis(tmp_path: Path) -> None:
    long_name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    with running_daemon(tmp_path, fake_config("hostDiskRoots: [/srv/disks]\n")) as daemon:
        daemon.drop("good.yaml", manifest("good"))
        for path in HOSTILE:
            if path.stem != "huge-memory":  # QEMU's to refuse, and slow
                (daemon.spool / path.name).write_bytes(path.read_bytes())
        daemon.wait_phase("good", "Running")
        daemon.wait_phase(long_name, "Running")  # its control socket, 253 characters deep
        refused = [
            path.name
            for path in HOSTILE
            if plan_file(path, CONFIG, Paths(tmp_path / "x"), Accelerator.TCG)[1]
        ]
        assert len(refused) >= 40
        daemon.wait_for(
            "every refusal to be logged, naming its file",
            lambda: all(f"instances/{name}:" in daemon.log_text() for name in refused),
        )
        assert daemon.process.poll() is None
        assert "Traceback" not in daemon.log_text()
        assert "internal error" not in daemon.log_text()


# Section: the fuzzer

BASE = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: fuzz, labels: {app: x}}
spec:
  terminationGracePeriodSeconds: 30
  hostname: fuzz
  domain:
    cpu: {cores: 2, model: host-model}
    memory: {guest: 128Mi}
    firmware: {serial: abc}
    devices:
      disks:
      - {name: root, disk: {bus: virtio}, serial: s1}
      - {name: ci, cdrom: {bus: sata}}
      interfaces: [{name: default, masquerade: {}, ports: [{port: 80}]}]
  networks: [{name: default, pod: {}}]
  volumes:
  - {name: root, containerDisk: {image: quay.io/x/y:1}}
  - {name: ci, cloudInitNoCloud: {userData: "#cloud-config"}}
"""

NASTY = st.one_of(
    st.text(max_size=30),
    st.sampled_from([",", ",,", "=", "a,file=/etc/shadow", "../..", "/etc/shadow", "-S", "\n", "\0",
                     "host,+vmx", "x" * 300, "q35,accel=kvm", "$(id)", "`id`", "a b"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["a", "name", "bus", "file"]), st.text(max_size=5), max_size=2),
)  # fmt: skip


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [path] + [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [path] + [leaf for i, v in enumerate(node) for leaf in _leaves(v, (*path, i))]
    return [path]


def _set(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = _set(node[path[0]], path[1:], value)
    return node


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_manifests_never_crash_and_every_refusal_names_a_field(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    yaml = YAML(typ="safe", pure=True)  # YAML 1.2: libyaml refuses the colons in braces
    document = yaml.load(BASE)
    leaves = _leaves(document)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        path = data.draw(st.sampled_from(leaves))
        document = _set(document, path, data.draw(NASTY))
        leaves = _leaves(document)
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(document, stream)
    text = stream.getvalue().encode()
    manifests, problems = load_text("fuzz.yaml", text)
    for problem in problems:
        check_problem(problem, "fuzz.yaml")
    root = tmp_path_factory.getbasetemp() / "fuzz"
    for item in manifests:
        plan, findings = build(item.vmi, CONFIG, Paths(root), Accelerator.TCG)
        for finding in findings:
            check_problem(item.locator.problem(finding), "fuzz.yaml")
        if plan is not None:
            _flags_alternate(plan.argv)
            check_plan(plan, root)
    # Only a document that is null altogether holds nothing to refuse (like an empty file).
    assert list(itertools.chain(manifests, problems)) or document is None


def test_a_number_too_long_for_python_is_located_not_explained_in_python_terms() -> None:
    path = Path(__file__).parent / "hostile" / "huge-number.yaml"
    _, problems = plan_file(path, CONFIG, Paths("/nonexistent"), Accelerator.TCG, "h.yaml")
    (problem,) = problems
    assert (problem.line, problem.column) == (10, 34)
    assert problem.message == "a number of 5000 digits; no field takes such a number"
