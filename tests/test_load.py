"""Tests for vmid.api.load: whatever bytes a file holds, the answer is located problems.

Every hostile input (binary junk, huge files, alias bombs, deep nesting, tabs, duplicate keys,
wrong shapes, several documents) must come back as `Problem`s with a file, a 1-based line and
column, and a message a person can act on, never as an exception.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import BASE, dump
from vmid.api.load import Manifest, load_object, load_text
from vmid.config import Accelerator, Config
from vmid.errors import ManifestError, Problem

FILE = "vmi.yaml"
KIB = 1024
MIB = 2**20
HEAD = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n"

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load(data: bytes | str) -> tuple[list[Manifest], list[Problem]]:
    return load_text(FILE, data.encode() if isinstance(data, str) else data)


def only_problem(data: bytes | str) -> Problem:
    """The single problem of a file that has no valid manifest."""
    manifests, problems = load(data)
    assert manifests == []
    assert len(problems) == 1, problems
    return problems[0]


def position_of(text: str, needle: str) -> tuple[int, int]:
    """1-based (line, column) of the first occurrence of `needle` in `text`."""
    offset = text.index(needle)
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def assert_located(problems: list[Problem], file: str = FILE) -> None:
    for problem in problems:
        assert problem.file == file
        assert problem.line >= 1
        assert problem.column >= 1
        assert problem.message
        assert str(problem).startswith(f"{file}:{problem.line}:{problem.column}: ")


def manifest(name: str = "testvmi", **spec: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["metadata"]["name"] = name
    data["spec"].update(spec)
    return data


# --- the base case, so that every refusal below is a refusal of what it changes


def test_base_manifest_is_valid() -> None:
    manifests, problems = load(dump(BASE))
    assert problems == []
    assert [m.name for m in manifests] == ["testvmi"]


# --- junk


def test_every_byte_value_is_a_located_problem() -> None:
    data = bytes(range(256))
    problem = only_problem(data)
    assert problem.file == FILE
    # 0x80 is the first byte that is not UTF-8; it sits after the one newline (0x0a).
    assert (problem.line, problem.column) == (2, 0x80 - 0x0A)
    assert "not UTF-8" in problem.message
    assert "0x80" in problem.message


def test_utf16_file_is_not_utf8() -> None:
    problem = only_problem((HEAD + "metadata: {name: x}\n").encode("utf-16"))
    assert (problem.line, problem.column) == (1, 1)
    assert "not UTF-8" in problem.message


# Inputs that once crashed the loader have their own test below; here the rest is guarded.
@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and any(c in text for c in "!=<"):
        return
    manifests, problems = load(data)
    assert_located(problems)
    if text is None:
        assert manifests == []
        assert len(problems) == 1
        assert "not UTF-8" in problems[0].message


SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="!=<"), max_size=2000)


@FUZZ
@given(text=SAFE_TEXT)
def test_random_text_never_raises(text: str) -> None:
    _, problems = load(text.encode())
    assert_located(problems)


@FUZZ
@given(text=st.text(st.characters(codec="utf-8"), max_size=2000))
@example(text="=")
def test_any_text_never_raises(text: str) -> None:
    _, problems = load(text.encode())
    assert_located(problems)


@FUZZ
@given(data=st.binary(max_size=2000))
@example(data=b"!!int")
def test_any_bytes_never_raise(data: bytes) -> None:
    _, problems = load(data)
    assert_located(problems)


# Each of these escapes load_text as an exception today (TypeError, IndexError, AttributeError,
# KeyError, ValueError from ruamel.yaml or the locator) instead of a located problem.
#: What the loader raises today on the inputs below; anything else failing is not this bug.
CRASH = (TypeError, IndexError, AttributeError, KeyError, ValueError)

CRASHERS = [
    pytest.param("=\n", id="value-tag-document"),
    pytest.param("<<\n", id="merge-key-document"),
    pytest.param("!custom text\n", id="tagged-scalar-document"),
    pytest.param("!!str text\n", id="str-tagged-document"),
    pytest.param(HEAD + "metadata:\n  name: !!int\n", id="empty-int"),
    pytest.param(HEAD + "metadata:\n  name: !!float\n", id="empty-float"),
    pytest.param(HEAD + "metadata:\n  labels: !!set x\n", id="set-of-scalar"),
    pytest.param(HEAD + "metadata:\n  labels: !!omap x\n", id="omap-of-scalar"),
    pytest.param(HEAD + "metadata:\n  name: !!bool maybe\n", id="bool-not-bool"),
    pytest.param(
        HEAD + "spec:\n  terminationGracePeriodSeconds: " + "9" * 5000 + "\n", id="5000-digit-int"
    ),
]


@pytest.mark.parametrize("text", CRASHERS)
def test_yaml_oddities_are_problems_not_crashes(text: str) -> None:
    _, problems = load(text)
    assert problems
    assert_located(problems)


def test_huge_integer_in_config_is_a_problem() -> None:
    with pytest.raises(ManifestError):
        load_object("vmid.yaml", b"qemuUids: {first: " + b"1" * 5000 + b"}\n", Config)


# --- size


def test_file_over_256_kib_is_refused_unread() -> None:
    problem = only_problem(b"a" * (256 * KIB + 1))
    assert (problem.line, problem.column) == (1, 1)
    assert "larger than 256 KiB" in problem.message


def test_file_of_exactly_256_kib_is_read() -> None:
    # One long string: the YAML is read, and refused for what it is, not for its size.
    problem = only_problem(b"a" * (256 * KIB))
    assert "256 KiB" not in problem.message
    assert "must be a YAML mapping" in problem.message


def test_a_50_mb_file_is_refused_unread() -> None:
    problem = only_problem(b"# junk\n" * (50 * MIB // 7))
    assert "larger than 256 KiB" in problem.message


# --- aliases and nesting


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.timeout(20)
def test_alias_bomb_is_refused() -> None:
    problem = only_problem(HEAD + BILLION_LAUGHS)
    assert_located([problem])
    assert "YAML aliases" in problem.message


def test_alias_expansion_over_the_budget_inside_a_manifest_is_refused() -> None:
    # 10**6 values from seven short lines, under an otherwise plausible manifest.
    lines = ["  b0: &b0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"  b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]" for i in range(1, 7)]
    text = HEAD + "metadata:\n  name: x\n  labels:\n" + "\n".join(lines) + "\n"
    problem = only_problem(text)
    assert_located([problem])
    assert "expands to more than" in problem.message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("&a [*a]\n", id="list-contains-itself"),
        pytest.param(HEAD + "metadata: &m\n  name: x\n  labels: *m\n", id="map-contains-itself"),
        pytest.param("a: &a\n  b: *a\n", id="nested-map"),
    ],
)
def test_self_referencing_alias_is_a_problem(text: str) -> None:
    manifests, problems = load(text)
    assert manifests == []
    assert problems
    assert_located(problems)


def test_self_referencing_list_names_the_aliases() -> None:
    assert "YAML aliases" in only_problem("&a [*a]\n").message


@pytest.mark.timeout(30)
def test_100000_open_brackets() -> None:
    problem = only_problem("[" * 100_000)
    assert_located([problem])
    assert "nested" in problem.message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{a: " * 1000, id="flow-maps"),
        pytest.param(
            "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "x\n", id="block"
        ),
        pytest.param("[" * 100 + "]" * 100, id="closed-lists"),
    ],
)
def test_deep_nesting_is_a_problem(text: str) -> None:
    problem = only_problem(text)
    assert_located([problem])
    assert "nested" in problem.message


def test_a_problem_in_a_merged_mapping_is_located_where_it_is_written() -> None:
    # The locator once raised KeyError: keys merged in with `<<` have no position of their own.
    text = HEAD + (
        "metadata:\n  name: x\nspec:\n  domain:\n    devices:\n      disks:\n"
        "      - &disk\n        name: root\n        disk: {bus: nonsense}\n"
        "      - <<: *disk\n        name: data\n"
        "  volumes:\n  - {name: root, containerDisk: {image: cirros}}\n"
        "  - {name: data, emptyDisk: {capacity: 1Gi}}\n"
    )
    manifests, problems = load(text)
    assert manifests == []
    assert [(p.field, p.line, p.column) for p in problems] == [
        ("spec.domain.devices.disks[0].disk.bus", *position_of(text, "nonsense")),
        ("spec.domain.devices.disks[1].disk.bus", *position_of(text, "nonsense")),
    ]


def test_an_anchored_boolean_is_a_boolean() -> None:
    # ruamel's round-trip loader keeps `&b false` as an int subclass: it was once 0, refused.
    data = manifest()
    text = dump(data).replace("devices:\n", "devices:\n      autoattachPodInterface: &b false\n")
    (loaded,), problems = load(text)
    assert problems == []
    assert loaded.vmi.spec.domain.devices.autoattachPodInterface is False


# --- YAML mistakes people make


def test_tab_indentation_says_spaces() -> None:
    text = HEAD + "metadata:\n\tname: x\n"
    problem = only_problem(text)
    assert (problem.line, problem.column) == (4, 1)
    assert "spaces" in problem.message


def test_duplicate_key_names_the_key() -> None:
    text = HEAD + "metadata:\n  name: a\n  name: b\n"
    problem = only_problem(text)
    assert problem.line == 5
    assert '"name"' in problem.message
    assert "duplicate key" in problem.message


def test_duplicate_top_level_key() -> None:
    text = HEAD + "kind: VirtualMachineInstance\n"
    problem = only_problem(text)
    assert problem.line == 3
    assert '"kind"' in problem.message


def test_list_where_the_spec_map_belongs() -> None:
    text = HEAD + "metadata:\n  name: x\nspec: []\n"
    problem = only_problem(text)
    assert (problem.line, problem.column, problem.field) == (5, 1, "spec")
    assert problem.message == "Invalid value: array: must be of type object"


def test_string_where_the_domain_map_belongs() -> None:
    text = HEAD + 'metadata:\n  name: x\nspec:\n  domain: "x"\n'
    problem = only_problem(text)
    assert (problem.line, problem.column) == position_of(text, '"x"')
    assert problem.field == "spec.domain"
    assert problem.message == 'Invalid value: "x": must be of type object'


def test_map_where_a_list_belongs_inside() -> None:
    data = copy.deepcopy(BASE)
    data["spec"]["volumes"] = {"name": "root"}
    text = dump(data)
    problem = only_problem(text)
    assert problem.field == "spec.volumes"
    assert "must be of type array" in problem.message
    assert problem.line == position_of(text, "volumes:")[0]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("just words\n", id="string"),
        pytest.param("42\n", id="number"),
        pytest.param("- a\n- b\n", id="list"),
        pytest.param("true\n", id="boolean"),
    ],
)
def test_document_that_is_not_a_map(text: str) -> None:
    problem = only_problem(text)
    assert (problem.line, problem.column) == (1, 1)
    assert "must be a YAML mapping" in problem.message


def test_nul_character_is_a_problem() -> None:
    problem = only_problem(HEAD + "metadata:\n  name: x\x00y\n")
    assert_located([problem])
    assert "#x0000" in problem.message


def test_nul_character_is_located_where_it_is() -> None:
    text = HEAD + "metadata:\n  name: x\x00y\n"
    problem = only_problem(text)
    assert (problem.line, problem.column) == position_of(text, "\x00")


def test_empty_file_has_nothing() -> None:
    assert load(b"") == ([], [])


def test_whitespace_only_file_has_nothing() -> None:
    assert load(b"\n  \n\n") == ([], [])


def test_comments_only_file_has_nothing() -> None:
    assert load(b"# a VMI will go here\n# one day\n") == ([], [])


def test_empty_documents_only_have_nothing() -> None:
    assert load(b"---\n---\n# nothing\n---\n") == ([], [])


# --- several documents


def test_several_documents_keep_the_valid_and_locate_the_rest() -> None:
    bad_bus = manifest("second")
    bad_bus["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "virtoi"
    other_kind = manifest("third")
    other_kind["kind"] = "VirtualMachinePool"
    text = (
        dump(manifest("first"))
        + "---\n"
        + dump(bad_bus)
        + "---\n"  # an empty document
        + "---\n"
        + dump(other_kind)
        + "---\n"
    )
    manifests, problems = load(text)
    assert [m.name for m in manifests] == ["first"]
    assert [(p.line, p.column, p.field) for p in problems] == [
        (*position_of(text, "virtoi"), "spec.domain.devices.disks[0].disk.bus"),
        (*position_of(text, "VirtualMachinePool\n"), "kind"),
    ]
    assert problems[0].message.startswith('Unsupported value: "virtoi"')
    assert "not supported by vmid" in problems[1].message


def test_yaml_error_in_a_later_document_keeps_the_earlier_ones() -> None:
    text = dump(manifest("first")) + "---\nmetadata:\n\tname: x\n"
    manifests, problems = load(text)
    assert [m.name for m in manifests] == ["first"]
    assert [(p.line, p.column) for p in problems] == [position_of(text, "\t")]


def test_two_valid_documents() -> None:
    text = dump(manifest("one")) + "---\n" + dump(manifest("two"))
    manifests, problems = load(text)
    assert problems == []
    assert [m.name for m in manifests] == ["one", "two"]


# --- JSON


def test_json_manifest_is_accepted() -> None:
    manifests, problems = load(json.dumps(BASE, indent=2))
    assert problems == []
    assert [m.name for m in manifests] == ["testvmi"]


def test_json_one_liner_problem_is_located_on_its_column() -> None:
    data = copy.deepcopy(BASE)
    data["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "virtoi"
    text = json.dumps(data)
    problem = only_problem(text)
    assert (problem.line, problem.column) == position_of(text, '"virtoi"')
    assert problem.field == "spec.domain.devices.disks[0].disk.bus"


def test_truncated_json_is_a_yaml_problem() -> None:
    text = json.dumps(BASE)[:-10]
    problem = only_problem(text)
    assert_located([problem])
    assert problem.message.startswith("invalid YAML")


# --- kind and apiVersion


def test_missing_kind() -> None:
    problem = only_problem("apiVersion: kubevirt.io/v1\nmetadata: {name: x}\n")
    assert problem.field == "kind"
    assert problem.message.startswith("Required value")


@pytest.mark.parametrize(
    "kind",
    [
        "VirtualMachineInstanceReplicaSet",
        "VirtualMachinePool",
        "VirtualMachineInstancePreset",
        "Pod",
    ],
)
def test_other_kinds_are_not_supported(kind: str) -> None:
    text = f"apiVersion: kubevirt.io/v1\nkind: {kind}\nmetadata: {{name: x}}\n"
    problem = only_problem(text)
    assert (problem.line, problem.column, problem.field) == (2, 7, "kind")
    assert problem.message.startswith(f'kind "{kind}" is not supported by vmid: ')


@pytest.mark.parametrize("version", ["v1", "kubevirt.io/v2", "kubevirt.io/v1beta1", ""])
def test_bad_api_version(version: str) -> None:
    data = copy.deepcopy(BASE)
    data["apiVersion"] = version
    text = dump(data)
    problem = only_problem(text)
    assert problem.field == "apiVersion"
    assert problem.line == 1
    assert problem.message == (
        f'Unsupported value: "{version}": supported values: '
        '"kubevirt.io/v1", "kubevirt.io/v1alpha3"'
    )


def test_missing_api_version() -> None:
    problem = only_problem("kind: VirtualMachineInstance\nmetadata: {name: x}\n")
    assert problem.field == "apiVersion"
    assert problem.message.startswith("Unsupported value")


def test_v1alpha3_is_accepted() -> None:
    data = copy.deepcopy(BASE)
    data["apiVersion"] = "kubevirt.io/v1alpha3"
    manifests, problems = load(dump(data))
    assert problems == []
    assert [m.vmi.apiVersion for m in manifests] == ["kubevirt.io/v1alpha3"]


def test_problems_of_one_document_are_in_file_order() -> None:
    data = copy.deepcopy(BASE)
    data["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "virtoi"
    data["spec"]["domain"]["cpu"] = {"cores": "two"}
    data["metadata"]["bogus"] = 1
    _, problems = load(dump(data))
    positions = [(p.line, p.column) for p in problems]
    assert len(positions) == 3
    assert positions == sorted(positions)


# --- vmid.yaml through load_object


def test_config_empty_file_is_all_defaults() -> None:
    assert load_object("vmid.yaml", b"", Config) == Config()


def test_config_comments_only_is_all_defaults() -> None:
    assert load_object("vmid.yaml", b"# nothing set\n", Config) == Config()


def test_config_values_are_read() -> None:
    text = b"accelerator: tcg\nhostDiskRoots: [/srv, /data]\nmultusBridges: {a/b: br1}\n"
    config = load_object("vmid.yaml", text, Config)
    assert config.accelerator is Accelerator.TCG
    assert config.hostDiskRoots == ("/srv", "/data")
    assert config.multusBridges == {"a/b": "br1"}
    assert config.qemu == Config().qemu


def test_config_unknown_key_is_located() -> None:
    text = b"accelerator: tcg\nsandbox: true\nhostDiskRots: [/srv]\n"
    with pytest.raises(ManifestError) as caught:
        load_object("vmid.yaml", text, Config)
    assert [str(p) for p in caught.value.problems] == [
        'vmid.yaml:3:1: hostDiskRots: unknown field "hostDiskRots" (did you mean "hostDiskRoots"?)'
    ]


def test_config_nested_unknown_key_and_bad_value_are_all_reported() -> None:
    text = b"accelerator: fast\nfirmware:\n  efiCod: /x\n"
    with pytest.raises(ManifestError) as caught:
        load_object("vmid.yaml", text, Config)
    located = sorted((p.line, p.field) for p in caught.value.problems)
    assert located == [(1, "accelerator"), (3, "firmware.efiCod")]


def test_config_of_two_documents_is_refused() -> None:
    with pytest.raises(ManifestError) as caught:
        load_object("vmid.yaml", b"accelerator: tcg\n---\naccelerator: kvm\n", Config)
    assert "one YAML document" in str(caught.value)


def test_config_junk_is_a_located_problem() -> None:
    with pytest.raises(ManifestError) as caught:
        load_object("vmid.yaml", bytes(range(256)), Config)
    assert_located(list(caught.value.problems), "vmid.yaml")
