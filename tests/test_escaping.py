"""No manifest string can add a QEMU option: every value is escaped and reads back unchanged.

`tests.qemuopts` splits option strings the way QEMU's own parser does; whatever vmid writes must
parse back into exactly the keys and values vmid meant, and a manifest full of commas, `=`,
spaces and newlines must plan exactly as many options as a plain one.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests import qemuopts
from tests.conftest import BASE
from vmid.api.load import load_text
from vmid.config import Accelerator, Config, Paths
from vmid.plan.build import build
from vmid.plan.model import LaunchPlan
from vmid.plan.qemu import Value, options

FUZZ = settings(max_examples=150, deadline=None)

KEYS = st.from_regex(r"[a-z][a-z.-]{0,10}", fullmatch=True)
# Text that leans on QEMU's and YAML's special characters, and anything else.
NASTY = st.text(st.sampled_from(",= \n\t'\"\\:;{}[]#&*!|>%@`") | st.characters(codec="utf-8"))
VALUES: st.SearchStrategy[Value] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), NASTY
)
HEADS = st.none() | st.text(st.characters(codec="utf-8", exclude_characters="="), min_size=1)


def expected_text(value: Value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# --- options() on its own


def test_options_examples() -> None:
    assert options("virtio-blk-pci", {"drive": "d0", "serial": None}) == "virtio-blk-pci,drive=d0"
    assert options(None, {"a": True, "b": False, "c": 3}) == "a=on,b=off,c=3"
    assert options("x", {"path": "a,b"}) == "x,path=a,,b"
    assert options("a,b", {}) == "a,,b"
    assert options(None, {"v": ",,"}) == "v=,,,,"
    assert options(None, {"v": "k=v,id=evil"}) == "v=k=v,,id=evil"


@FUZZ
@given(head=HEADS, pairs=st.dictionaries(KEYS, VALUES, max_size=8))
@example(head=None, pairs={"serial": ",id=evil,", "x": True})
@example(head="dev,ice", pairs={"a": "=", "b": ",,", "c": "\n,\n"})
def test_options_round_trip(head: str | None, pairs: dict[str, Value]) -> None:
    kept = {k: text for k, v in pairs.items() if (text := expected_text(v)) is not None}
    if head is None and not kept:
        assert options(head, pairs) == ""
        return
    assert qemuopts.parse(options(head, pairs)) == (head, kept)


# --- end to end, from a manifest to argv

CONFIG = Config(hostDiskRoots=("/srv",), accelerator=Accelerator.TCG)
BOARD = "smbios.vm.kubevirt.io/baseBoardManufacturer"

# Characters YAML cannot carry literally (non-printable) or reads as line breaks (NEL, LS, PS):
# a person writes them as escapes in a double-quoted string, and so does this test.
_NOT_LITERAL = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def as_yaml(data: Any) -> str:
    """JSON (a subset of YAML) with every character YAML cannot hold literally escaped."""
    text = json.dumps(data, ensure_ascii=False)
    return _NOT_LITERAL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def plan_for(serial: str, board: str, host_path: str) -> LaunchPlan:
    data = copy.deepcopy(BASE)
    data["metadata"]["annotations"] = {BOARD: board}
    data["spec"]["domain"]["firmware"] = {"serial": serial}
    data["spec"]["volumes"].append(
        {"name": "host", "hostDisk": {"path": host_path, "type": "Disk"}}
    )
    manifests, problems = load_text("vmi.yaml", as_yaml(data).encode())
    assert problems == [], [str(p) for p in problems]
    (manifest,) = manifests
    plan, findings = build(manifest.vmi, CONFIG, Paths(Path("/")), Accelerator.TCG)
    assert findings == []
    assert plan is not None
    return plan


def values_of(argv: tuple[str, ...], flag: str) -> list[tuple[str | None, dict[str, str]]]:
    return [qemuopts.parse(argv[i + 1]) for i, arg in enumerate(argv) if arg == flag]


def shape(argv: tuple[str, ...]) -> Counter[str]:
    return Counter(arg for arg in argv if arg.startswith("-") and not arg[1:2].isdigit())


PLAIN = plan_for("serial", "maker", "/srv/disk.img")
PLAIN_SHAPE = shape(PLAIN.argv)

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1) | NASTY.filter(
    lambda s: s != "" and "\x00" not in s
)
COMPONENT = st.text(st.characters(codec="utf-8", exclude_characters="\x00/"), min_size=1).filter(
    lambda c: c not in (".", "..")
)


def test_plain_plan_has_the_expected_options() -> None:
    # root disk: its image's and its overlay's file and format nodes; host disk: a file node
    # and a format node; every file passed by fd, and the console log's pipe. SMBIOS types 1
    # and 2.
    assert PLAIN_SHAPE["-blockdev"] == 6
    assert PLAIN_SHAPE["-add-fd"] == 4
    assert PLAIN_SHAPE["-smbios"] == 2
    devices = [head for head, _ in values_of(PLAIN.argv, "-device")]
    assert "ide-hd" in devices
    assert "virtio-blk-pci-non-transitional" in devices


@FUZZ
@given(serial=TEXT, board=TEXT, components=st.lists(COMPONENT, min_size=1, max_size=3))
@example(serial=",-device,virtio-net-pci,id=x", board="a,,b=c", components=["x,file=/etc/shadow"])
@example(serial="a\nb", board=" -smbios type=3 ", components=["disk img", "=", ",,"])
@example(serial="\x85\u2028\x7f", board="é\U0001f600", components=["\t\x01"])
def test_manifest_strings_reach_argv_unchanged(
    serial: str, board: str, components: list[str]
) -> None:
    host_path = "/srv/" + "/".join(components)
    plan = plan_for(serial, board, host_path)
    assert shape(plan.argv) == PLAIN_SHAPE
    assert len(plan.argv) == len(PLAIN.argv)

    system, baseboard = values_of(plan.argv, "-smbios")
    assert system[1]["type"] == "1"
    assert system[1]["serial"] == serial
    assert baseboard[1] == {"type": "2", "manufacturer": board}

    blockdevs = values_of(plan.argv, "-blockdev")
    assert len(blockdevs) == 6
    host_file = blockdevs[4][1]
    assert host_file["driver"] == "file"
    assert qemuopts.fdsets(plan.argv)[host_file["filename"]] == host_path
    assert blockdevs[5][1]["file"] == host_file["node-name"]


def test_every_baseboard_annotation_is_escaped() -> None:
    data = copy.deepcopy(BASE)
    fields = {
        "baseBoardManufacturer": "manufacturer",
        "baseBoardProduct": "product",
        "baseBoardVersion": "version",
        "baseBoardSerial": "serial",
        "baseBoardAsset": "asset",
    }
    data["metadata"]["annotations"] = {
        f"smbios.vm.kubevirt.io/{name}": f"{name},x=y" for name in fields
    }
    data["metadata"]["annotations"]["smbios.vm.kubevirt.io/chassisAsset"] = "ignored"
    (manifest,), problems = load_text("vmi.yaml", as_yaml(data).encode())
    assert problems == []
    plan, _ = build(manifest.vmi, CONFIG, Paths(Path("/")), Accelerator.TCG)
    assert plan is not None
    _, baseboard = values_of(plan.argv, "-smbios")
    assert baseboard == (
        None,
        {"type": "2", **{field: f"{name},x=y" for name, field in fields.items()}},
    )


def test_root_with_commas_is_escaped() -> None:
    root = Path("/tmp/a,b=c/root")
    (manifest,), _ = load_text("vmi.yaml", as_yaml(BASE).encode())
    plan, _ = build(manifest.vmi, CONFIG, Paths(root), Accelerator.TCG)
    assert plan is not None
    root_file = values_of(plan.argv, "-blockdev")[2][1]
    root_disk = f"{root}/var/lib/vmid/namespaces/default/testvmi/disks/root.qcow2"
    assert qemuopts.fdsets(plan.argv)[root_file["filename"]] == root_disk
    (console,) = [
        pairs for head, pairs in values_of(plan.argv, "-chardev") if pairs["id"] == "charserial0"
    ]
    console_log = f"{root}/var/log/vmid/namespaces/default/testvmi/console.log"
    assert qemuopts.fdsets(plan.argv)[console["logfile"]] == console_log
