"""Manifest text -> defaulted, validated VMIs, or every problem located at FILE:LINE:COL.

Runs KubeVirt's admission order: strict schema, then defaults (the mutating webhook), then
validation (the admitters). Whatever bytes it is given, it answers with problems, never a crash.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from typing import Any, TypeVar

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from vmid.api import defaults, fastyaml, names, validate
from vmid.api import vm as vms
from vmid.api.findings import FieldPath, Finding, quote, render_path
from vmid.api.structure import structure
from vmid.api.types import VirtualMachineInstance
from vmid.errors import ManifestError, Problem

T = TypeVar("T")

#: A VMI manifest is a few KiB (inline cloud-init data is capped at 2 KiB per field). The YAML
#: parser's time grows faster than the size (about 35 s for 3 MiB, Kubernetes' own limit), and
#: one slow file delays the whole spool: at 256 KiB the worst seen is about 3 s.
MAX_BYTES = 256 * 1024
#: Limits on one document's size once YAML aliases are expanded.
MAX_NODES = 100_000
MAX_DEPTH = 64

API_VERSIONS = ("kubevirt.io/v1", "kubevirt.io/v1alpha3")
KIND = "VirtualMachineInstance"
OTHER_KINDS = {
    "VirtualMachineInstanceReplicaSet": "replica sets need the KubeVirt controllers",
    "VirtualMachinePool": "pools need the KubeVirt controllers",
    "VirtualMachineInstancePreset": "presets are deprecated in KubeVirt; write the settings in "
    "the VirtualMachineInstance",
}


@attrs.frozen
class Manifest:
    """One VMI document of a file, defaulted and valid, with the means to locate its fields."""

    file: str
    #: The VMI: the document's, or (a VirtualMachine) the one its template makes.
    vmi: VirtualMachineInstance
    #: Not compared: a manifest is the same whichever of the two parses located it.
    locator: Locator = attrs.field(eq=False)
    vm: vms.VirtualMachine | None = None

    @property
    def name(self) -> str:
        assert self.vmi.metadata.name is not None  # validation guarantees it
        return self.vmi.metadata.name

    @property
    def key(self) -> str:
        """namespace/name: what identifies the VMI on this host."""
        return names.key(self.vmi.metadata.namespace, self.name)


@attrs.frozen
class Locator:
    """Maps field paths of one document to 1-based line and column in its file."""

    file: str
    #: The document's round-trip tree; None: no positions (every problem at 1:1).
    root: Any
    #: Or, from the fast path, the file it parses the trees from when first asked, and which of
    #: its documents this one is.
    source: Source | None = None
    index: int = 0

    def problem(self, finding: Finding) -> Problem:
        line, column = self._position(finding.path)
        return Problem(self.file, line + 1, column + 1, render_path(finding.path), finding.message)

    def _position(self, path: FieldPath) -> tuple[int, int]:
        node = self._tree()
        where = _start(node)
        for step in path:
            holder = _holder(node, step, 0) if isinstance(node, CommentedMap) else None
            if holder is not None:
                child = node[step]
                key_pos, value_pos = holder.lc.key(step), holder.lc.value(step)
                where = key_pos if isinstance(child, CommentedMap | CommentedSeq) else value_pos
            elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
                child = node[step]
                where = node.lc.item(step)
            else:
                break
            node = child
        return where

    def _tree(self) -> Any:
        if self.source is None:
            return self.root
        trees = self.source.trees
        return trees[self.index] if self.index < len(trees) else None


@attrs.frozen
class Source:
    """A file the fast path read: parsed into round-trip trees (which remember positions) only
    when a position is first asked for, as a finding of the planner needs."""

    file: str
    data: bytes

    @functools.cached_property
    def trees(self) -> tuple[Any, ...]:
        try:
            return tuple(_parse(self.file, self.data))
        except ManifestError:  # the C parser read it; were ruamel to refuse it, 1:1 it is
            return ()


def _holder(node: CommentedMap, key: Any, depth: int) -> CommentedMap | None:
    """The mapping where `key` of `node` is written: `node`, or one merged into it (`<<: *a`),
    whose keys have no position in `node`."""
    if key in (node.lc.data or {}):
        return node
    for merged in getattr(node, "merge", ()) if depth < MAX_DEPTH else ():
        holder = _holder(merged, key, depth + 1) if isinstance(merged, CommentedMap) else None
        if holder is not None:
            return holder
    return None


def _start(node: Any) -> tuple[int, int]:
    """Where a node starts, 0-based; (0, 0) for nodes ruamel keeps no position for."""
    lc = getattr(node, "lc", None)
    line, column = getattr(lc, "line", None), getattr(lc, "col", None)
    return (line, column) if isinstance(line, int) and isinstance(column, int) else (0, 0)


@attrs.frozen
class Document:
    """One document of a file: a valid manifest, or the VMI it claims to be (if it plausibly
    names one: its namespace/name key) and its problems."""

    key: str | None
    manifest: Manifest | None
    problems: tuple[Problem, ...]
    #: The document's kind: VirtualMachineInstance or VirtualMachine.
    kind: str = KIND


def load_documents(file: str, data: bytes) -> list[Document]:
    """Load every document of one manifest file.

    Args:
        file: the name to put in problems (the path as the user gave it).
        data: the file's bytes; pass at most MAX_BYTES + 1 of them.

    Returns:
        One entry per document; a file that is not YAML at all gives one nameless entry.
    """
    fast = _fast_documents(file, data)
    return fast if fast is not None else _located_documents(file, data)


def _fast_documents(file: str, data: bytes) -> list[Document] | None:
    """Every document through ruamel's C parser, if all are valid; else None: the round-trip
    path then finds the problems and where they are."""
    if len(data) > MAX_BYTES:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    plains = fastyaml.load(text, MAX_NODES, MAX_DEPTH)
    if plains is None:
        return None
    source = Source(file, data)
    documents = []
    for index, plain in enumerate(plains):
        vm, vmi, findings = load_any(plain)
        if findings or vmi is None:
            return None
        manifest = Manifest(file, vmi, Locator(file, None, source, index), vm)
        documents.append(Document(_claimed_key(plain), manifest, (), _document_kind(plain)))
    return documents


def _located_documents(file: str, data: bytes) -> list[Document]:
    """Every document through the round-trip loader: problems come located at FILE:LINE:COL."""
    documents: list[Document] = []
    try:
        for node in _parse(file, data):
            locator = Locator(file, node)
            plain = _plain(file, node)
            vm, vmi, findings = load_any(plain)
            problems = tuple(sorted((locator.problem(f) for f in findings), key=_position_key))
            manifest = Manifest(file, vmi, locator, vm) if vmi is not None else None
            documents.append(
                Document(_claimed_key(plain), manifest, problems, _document_kind(plain))
            )
    except ManifestError as exc:
        documents.append(Document(None, None, exc.problems))
    return documents


def load_text(file: str, data: bytes) -> tuple[list[Manifest], list[Problem]]:
    """The valid VMIs of a file, and the problems of all the others, in file order."""
    documents = load_documents(file, data)
    manifests = [d.manifest for d in documents if d.manifest is not None]
    return manifests, [p for d in documents for p in d.problems]


def _claimed_key(data: object) -> str | None:
    """The namespace/name of a document that may be invalid, if it names a VMI plausibly."""
    if _kind(data) not in (KIND, vms.VM_KIND):
        return None
    assert isinstance(data, dict)
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace")
    # Both may become directory names.
    if not isinstance(name, str) or len(name) > 253:
        return None
    if not validate.DNS1123_SUBDOMAIN.fullmatch(name):
        return None
    if namespace is None:
        return names.key(None, name)
    if not isinstance(namespace, str) or len(namespace) > 63:
        return None
    return names.key(namespace, name) if validate.DNS1123_LABEL.fullmatch(namespace) else None


def load_object(file: str, data: bytes, cls: type[T]) -> T:
    """Load a file holding one YAML object of type `cls` (an empty file gives `cls()`).

    Raises:
        ManifestError: with every problem, located.
    """
    documents = list(_parse(file, data))
    if not documents:
        return cls()
    locator = Locator(file, documents[0])
    if len(documents) > 1:
        raise ManifestError((Problem(file, 1, 1, "", "expected one YAML document, found more"),))
    value, findings = structure(_plain(file, documents[0]), cls)
    if value is None:
        raise ManifestError(tuple(locator.problem(f) for f in findings))
    return value


def _parse(file: str, data: bytes) -> Iterator[Any]:
    """The documents of a YAML file as ruamel round-trip trees (they remember positions)."""
    if len(data) > MAX_BYTES:
        raise _file_problem(
            file,
            1,
            1,
            f"file is larger than {MAX_BYTES // 1024} KiB, vmid's limit for a manifest "
            "(inline cloud-init data is limited to 2 KiB anyway)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _offset_position(data, exc.start)
        raise _file_problem(
            file,
            line,
            column,
            f"file is not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded",
        ) from None
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        for document in yaml.load_all(text):
            if document is not None:
                yield document
    except MarkedYAMLError as exc:
        raise ManifestError((_yaml_problem(file, exc),)) from None
    except ReaderError as exc:
        line, column = _offset_position(text.encode(), len(text[: exc.position].encode()))
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        what = f"unacceptable character #x{code:04x}: {exc.reason}"
        raise _file_problem(file, line, column, f"cannot read the YAML: {what}") from None
    except Exception as exc:
        limit = sys.get_int_max_str_digits()
        huge = re.search(rf"\d{{{limit + 1},}}", text)
        if isinstance(exc, ValueError) and huge is not None:
            line, column = _offset_position(text.encode(), len(text[: huge.start()].encode()))
            message = f"a number of {len(huge.group())} digits; no field takes such a number"
            raise _file_problem(file, line, column, message) from None
        raise _file_problem(file, 1, 1, f"cannot read the YAML: {_describe(exc)}") from None


def _file_problem(file: str, line: int, column: int, message: str) -> ManifestError:
    return ManifestError((Problem(file, line, column, "", message),))


def _kind(data: object) -> object:
    return data.get("kind") if isinstance(data, dict) else None


def _document_kind(data: object) -> str:
    return vms.VM_KIND if _kind(data) == vms.VM_KIND else KIND


def load_any(
    data: object,
) -> tuple[vms.VirtualMachine | None, VirtualMachineInstance | None, list[Finding]]:
    """Check one plain document of either kind: a VM (and the VMI it makes), or a VMI."""
    if _kind(data) != vms.VM_KIND or not isinstance(data, dict):
        return (None, *load_document(data))
    head = _check_type(data)
    return (None, None, head) if head else vms.load(data)


def load_document(data: object) -> tuple[VirtualMachineInstance | None, list[Finding]]:
    """Check, default and validate one plain document (as `yaml.safe_load` would give)."""
    if not isinstance(data, dict):
        return None, [
            Finding((), f"a manifest must be a YAML mapping (an object), not {type(data).__name__}")
        ]
    head = _check_type(data)
    if head:
        return None, head
    vmi, findings = structure(data, VirtualMachineInstance)
    if vmi is None:
        return None, findings
    vmi = defaults.apply(vmi)
    findings = validate.validate(vmi)
    return (None if findings else vmi), findings


def _check_type(data: dict[Any, Any]) -> list[Finding]:
    kind, version = data.get("kind"), data.get("apiVersion")
    if kind is None:
        return [Finding(("kind",), "Required value: every manifest names its kind")]
    if kind not in (KIND, vms.VM_KIND):
        runs = "vmid runs only VirtualMachineInstance and VirtualMachine objects"
        why = OTHER_KINDS.get(str(kind), runs)
        return [Finding(("kind",), f"kind {quote(kind)} is not supported by vmid: {why}")]
    if version not in API_VERSIONS:
        allowed = ", ".join(quote(v) for v in API_VERSIONS)
        return [
            Finding(
                ("apiVersion",), f"Unsupported value: {quote(version)}: supported values: {allowed}"
            )
        ]
    return []


def _plain(file: str, root: Any) -> Any:
    """Copy ruamel's round-trip tree into plain dict/list/scalars, within a node budget.

    YAML aliases can make a small text expand exponentially ("billion laughs"), or refer to
    themselves; the budget and the depth limit stop both.
    """
    budget = MAX_NODES

    def copy(value: Any, depth: int) -> Any:
        nonlocal budget
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            line, column = (n + 1 for n in _start(root))
            raise _file_problem(
                file,
                line,
                column,
                f"the document expands to more than "
                f"{MAX_NODES} values or is nested deeper than {MAX_DEPTH} "
                "levels (YAML aliases?)",
            )
        if isinstance(value, dict):
            return {_scalar(k): copy(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v, depth + 1) for v in value]
        return _scalar(value)

    return copy(root, 0)


def _scalar(value: Any) -> Any:
    # ruamel's round-trip scalars are subclasses that remember formatting; drop that. An anchored
    # boolean (`&on true`) is a ScalarBoolean, a subclass of int: it stays a boolean.
    if isinstance(value, ScalarBoolean):
        return bool(value)
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    return value


def _yaml_problem(file: str, exc: MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    what = " ".join(p for p in (exc.context, exc.problem) if p)
    if "found character '\\t'" in what:
        what += " (YAML indents with spaces only)"
    return Problem(file, line, column, "", f"invalid YAML: {what}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return f"it is nested too deeply (more than {MAX_DEPTH} levels)"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _offset_position(data: bytes, offset: int) -> tuple[int, int]:
    before = data[:offset]
    line = before.count(b"\n") + 1
    return line, offset - (before.rfind(b"\n") + 1) + 1


def _position_key(problem: Problem) -> tuple[int, int]:
    return problem.line, problem.column
