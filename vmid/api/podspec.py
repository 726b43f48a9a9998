"""Kubernetes' pod validation that KubeVirt applies to a VMI's scheduling and DNS fields.

vmid ignores these fields on one host, but a manifest must still be one a cluster admits. The
rules and messages are Kubernetes' (k8s.io/apimachinery util/validation, meta/v1/validation,
and the copy of pkg/apis/core/validation in KubeVirt's validate-k8s-utils.go and
vmi-create-admitter.go), each reported at the field of the manifest it is about.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from vmid.api import types as t
from vmid.api.findings import FieldPath, Finding, quote

QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
QUALIFIED_NAME = re.compile(QUALIFIED_NAME_FMT)
QUALIFIED_NAME_MESSAGE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    f"validation is '{QUALIFIED_NAME_FMT}')"
)
LABEL_VALUE_FMT = f"({QUALIFIED_NAME_FMT})?"
LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{LABEL_VALUE_FMT}')"
)
DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = f"{DNS1123_LABEL_FMT}(\\.{DNS1123_LABEL_FMT})*"
DNS1123_LABEL = re.compile(DNS1123_LABEL_FMT)
DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_FMT)
DNS1123_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    f"used for validation is '{DNS1123_LABEL_FMT}')"
)
DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    f"for validation is '{DNS1123_SUBDOMAIN_FMT}')"
)
PORT_NAME = re.compile("[-a-z0-9]+")
IN_NOT_IN = "must be specified when `operator` is 'In' or 'NotIn'"
EXISTS = "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
WHEN_UNSATISFIABLE = ("DoNotSchedule", "ScheduleAnyway")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None", "")
MAX_NAMESERVERS = 3
MAX_SEARCHES = 6
MAX_SEARCH_CHARS = 256
AFFINITY: FieldPath = ("spec", "affinity")


def dns1123_subdomain(value: str) -> list[str]:
    """Kubernetes' IsDNS1123Subdomain: every reason the value is not one (none if it is)."""
    errors = ["must be no more than 253 characters"] if len(value) > 253 else []
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        errors.append(DNS1123_SUBDOMAIN_MESSAGE)
    return errors


def dns1123_label(value: str) -> list[str]:
    """Kubernetes' IsDNS1123Label."""
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if DNS1123_LABEL.fullmatch(value):
        return errors
    if DNS1123_SUBDOMAIN.fullmatch(value):
        return [*errors, "must not contain dots"]
    return [*errors, DNS1123_LABEL_MESSAGE]


def qualified_name(value: str) -> list[str]:
    """Kubernetes' IsQualifiedName: a label key, a topology key (`prefix/name` or `name`)."""
    parts = value.split("/")
    if len(parts) > 2:
        return [
            f"a qualified name {QUALIFIED_NAME_MESSAGE} with an optional DNS subdomain prefix "
            "and '/' (e.g. 'example.com/MyName')"
        ]
    errors = []
    if len(parts) == 2:
        prefix = parts[0]
        errors += (
            [f"prefix part {e}" for e in dns1123_subdomain(prefix)]
            if prefix
            else ["prefix part must be non-empty"]
        )
    name = parts[-1]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not QUALIFIED_NAME.fullmatch(name):
        errors.append(f"name part {QUALIFIED_NAME_MESSAGE}")
    return errors


def label_value(value: str) -> list[str]:
    """Kubernetes' IsValidLabelValue."""
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if value and not QUALIFIED_NAME.fullmatch(value):
        errors.append(LABEL_VALUE_MESSAGE)
    return errors


def port_name(value: str) -> list[str]:
    """Kubernetes' IsValidPortName (an IANA service name)."""
    errors = ["must be no more than 15 characters"] if len(value) > 15 else []
    if not PORT_NAME.fullmatch(value):
        errors.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", value):
        errors.append("must contain at least one letter (a-z)")
    if "--" in value:
        errors.append("must not contain consecutive hyphens")
    if value.startswith("-") or value.endswith("-"):
        errors.append("must not begin or end with a hyphen")
    return errors


def _invalid(path: FieldPath, value: object, detail: str) -> Finding:
    return Finding(path, f"Invalid value: {quote(value)}: {detail}")


def _label_name(path: FieldPath, name: str) -> Iterator[Finding]:
    for message in qualified_name(name):
        yield _invalid(path, name, message)


def label_selector(path: FieldPath, selector: t.LabelSelector | None) -> Iterator[Finding]:
    """meta/v1 ValidateLabelSelector."""
    if selector is None:
        return
    for key, value in selector.matchLabels.items():
        yield from _label_name((*path, "matchLabels", key), key)
        for message in label_value(value):
            yield _invalid((*path, "matchLabels", key), value, message)
    for index, expr in enumerate(selector.matchExpressions):
        where = (*path, "matchExpressions", index)
        yield from _operator(where, expr.operator, expr.values, numeric=False)
        yield from _label_name((*where, "key"), expr.key)
        for i, value in enumerate(expr.values):
            for message in label_value(value):
                yield _invalid((*where, "values", i), value, message)


def _operator(
    path: FieldPath, operator: str, values: tuple[str, ...], numeric: bool
) -> Iterator[Finding]:
    """A requirement's operator and values; `numeric`: a node selector's, with Gt and Lt."""
    if operator in ("In", "NotIn"):
        if not values:
            yield Finding((*path, "values"), f"Required value: {IN_NOT_IN}")
    elif operator in ("Exists", "DoesNotExist"):
        if values:
            yield Finding((*path, "values"), f"Forbidden: {EXISTS}")
    elif numeric and operator in ("Gt", "Lt"):
        if len(values) != 1:
            yield Finding(
                (*path, "values"),
                "Required value: must be specified single value when `operator` is 'Lt' or 'Gt'",
            )
    else:
        yield _invalid((*path, "operator"), operator, "not a valid selector operator")


def _node_selector_term(path: FieldPath, term: t.NodeSelectorTerm) -> Iterator[Finding]:
    for index, req in enumerate(term.matchExpressions):
        where = (*path, "matchExpressions", index)
        yield from _operator(where, req.operator, req.values, numeric=True)
        yield from _label_name((*where, "key"), req.key)
    for index, req in enumerate(term.matchFields):
        yield from _node_field_requirement((*path, "matchFields", index), req)


def _node_field_requirement(path: FieldPath, req: t.NodeSelectorRequirement) -> Iterator[Finding]:
    if req.operator not in ("In", "NotIn"):
        yield _invalid((*path, "operator"), req.operator, "not a valid selector operator")
    elif len(req.values) != 1:
        yield Finding(
            (*path, "values"),
            "Required value: must be only one value when `operator` is 'In' or 'NotIn' for "
            "node field selector",
        )
    if req.key != "metadata.name":
        yield _invalid((*path, "key"), req.key, "not a valid field selector key")
        return
    for index, value in enumerate(req.values):
        for message in dns1123_subdomain(value):
            yield _invalid((*path, "values", index), value, message)


def _weight(path: FieldPath, weight: int) -> Iterator[Finding]:
    if not 0 < weight <= 100:
        yield _invalid(path, weight, "must be in the range 1-100")


def _node_affinity(path: FieldPath, affinity: t.NodeAffinity) -> Iterator[Finding]:
    required = affinity.requiredDuringSchedulingIgnoredDuringExecution
    if required is not None:
        terms = (*path, "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
        if not required.nodeSelectorTerms:
            yield Finding(terms, "Required value: must have at least one node selector term")
        for index, term in enumerate(required.nodeSelectorTerms):
            yield from _node_selector_term((*terms, index), term)
    preferred = (*path, "preferredDuringSchedulingIgnoredDuringExecution")
    for index, item in enumerate(affinity.preferredDuringSchedulingIgnoredDuringExecution):
        yield from _weight((*preferred, index, "weight"), item.weight)
        yield from _node_selector_term((*preferred, index, "preference"), item.preference)


def _pod_affinity_term(path: FieldPath, term: t.PodAffinityTerm) -> Iterator[Finding]:
    yield from label_selector((*path, "labelSelector"), term.labelSelector)
    yield from label_selector((*path, "namespaceSelector"), term.namespaceSelector)
    for index, namespace in enumerate(term.namespaces):
        for message in dns1123_label(namespace):
            yield _invalid((*path, "namespaces", index), namespace, message)
    if not term.topologyKey:
        yield Finding((*path, "topologyKey"), "Required value: can not be empty")
    yield from _label_name((*path, "topologyKey"), term.topologyKey)


def _pod_affinity(
    path: FieldPath, affinity: t.PodAffinity | t.PodAntiAffinity
) -> Iterator[Finding]:
    required = (*path, "requiredDuringSchedulingIgnoredDuringExecution")
    for index, term in enumerate(affinity.requiredDuringSchedulingIgnoredDuringExecution):
        yield from _pod_affinity_term((*required, index), term)
    preferred = (*path, "preferredDuringSchedulingIgnoredDuringExecution")
    for index, weighted in enumerate(affinity.preferredDuringSchedulingIgnoredDuringExecution):
        yield from _weight((*preferred, index, "weight"), weighted.weight)
        yield from _pod_affinity_term(
            (*preferred, index, "podAffinityTerm"), weighted.podAffinityTerm
        )


def affinity(spec: t.VirtualMachineInstanceSpec) -> Iterator[Finding]:
    """KubeVirt's validateSpecAffinity (Kubernetes' validateAffinity)."""
    if spec.affinity is None:
        return
    if spec.affinity.nodeAffinity is not None:
        yield from _node_affinity((*AFFINITY, "nodeAffinity"), spec.affinity.nodeAffinity)
    if spec.affinity.podAffinity is not None:
        yield from _pod_affinity((*AFFINITY, "podAffinity"), spec.affinity.podAffinity)
    if spec.affinity.podAntiAffinity is not None:
        yield from _pod_affinity((*AFFINITY, "podAntiAffinity"), spec.affinity.podAntiAffinity)


def topology_spread(spec: t.VirtualMachineInstanceSpec) -> Iterator[Finding]:
    """KubeVirt's validateSpecTopologySpreadConstraints."""
    constraints = spec.topologySpreadConstraints
    for index, constraint in enumerate(constraints):
        path = ("spec", "topologySpreadConstraints", index)
        if constraint.maxSkew <= 0:
            yield _invalid((*path, "maxSkew"), constraint.maxSkew, "must be greater than zero")
        if not constraint.topologyKey:
            yield Finding((*path, "topologyKey"), "Required value: can not be empty")
        else:
            yield from _label_name((*path, "topologyKey"), constraint.topologyKey)
        if constraint.whenUnsatisfiable not in WHEN_UNSATISFIABLE:
            allowed = ", ".join(quote(v) for v in WHEN_UNSATISFIABLE)
            yield Finding(
                (*path, "whenUnsatisfiable"),
                f"Unsupported value: {quote(constraint.whenUnsatisfiable)}: "
                f"supported values: {allowed}",
            )
        yield from label_selector((*path, "labelSelector"), constraint.labelSelector)
        pair = (constraint.topologyKey, constraint.whenUnsatisfiable)
        if any((c.topologyKey, c.whenUnsatisfiable) == pair for c in constraints[index + 1 :]):
            yield Finding(path, f'Duplicate value: "{{{pair[0]}, {pair[1]}}}"')


def dns(spec: t.VirtualMachineInstanceSpec) -> Iterator[Finding]:
    """KubeVirt's validateDNSPolicy and validatePodDNSConfig."""
    policy, config = spec.dnsPolicy, spec.dnsConfig
    if policy is not None and policy not in DNS_POLICIES:
        yield Finding(
            ("spec", "dnsPolicy"),
            f"DNSPolicy: {policy} is not supported, valid values: [{' '.join(DNS_POLICIES)}]",
        )
    if policy == "None" and config is None:
        yield Finding(("spec", "dnsConfig"), "must provide `dnsConfig` when `dnsPolicy` is None")
    elif policy == "None" and config is not None and not config.nameservers:
        yield Finding(
            ("spec", "dnsConfig", "nameservers"),
            "must provide at least one DNS nameserver when `dnsPolicy` is None",
        )
    elif config is not None:
        yield from _dns_config(config)


def _dns_config(config: t.PodDNSConfig) -> Iterator[Finding]:
    path: FieldPath = ("spec", "dnsConfig")
    if len(config.nameservers) > MAX_NAMESERVERS:
        yield Finding(
            (*path, "nameservers"),
            f"must not have more than {MAX_NAMESERVERS} nameservers: "
            f"[{' '.join(config.nameservers)}]",
        )
    for index, server in enumerate(config.nameservers):
        if not _is_ip(server):
            yield Finding((*path, "nameservers", index), f"must be valid IP address: {server}")
    if len(config.searches) > MAX_SEARCHES:
        yield Finding((*path, "searches"), f"must not have more than {MAX_SEARCHES} search paths")
    if len(" ".join(config.searches)) > MAX_SEARCH_CHARS:
        yield Finding(
            (*path, "searches"),
            f"must not have more than {MAX_SEARCH_CHARS} characters (including spaces) in the "
            "search list",
        )
    for index, search in enumerate(config.searches):
        for message in dns1123_subdomain(search):
            yield Finding((*path, "searches", index), message)
    for index, option in enumerate(config.options):
        if not option.name:
            yield Finding((*path, "options", index, "name"), "Option.Name must not be empty")


def _is_ip(value: str) -> bool:
    """Go's net.ParseIP: IPv4 (no leading zeros) or IPv6, never with a zone (`%eth0`)."""
    if "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


__all__ = ["affinity", "dns", "dns1123_subdomain", "port_name", "topology_spread"]
