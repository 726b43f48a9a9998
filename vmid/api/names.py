"""A VMI's identity on this host: namespace/name, as KubeVirt keys its objects.

One string, `namespace/name`, keys a VMI everywhere (status, directories, addresses, logs,
QEMU's `-name`); names derived by hashing (MACs, tap names) keep hashing the bare name in the
`default` namespace, so they are the same as before vmid knew namespaces.
"""

from __future__ import annotations

DEFAULT_NAMESPACE = "default"


def key(namespace: str | None, name: str) -> str:
    """The key of VMI `name` in `namespace` (unset: `default`, as kubectl's)."""
    return f"{namespace or DEFAULT_NAMESPACE}/{name}"


def split(vmi_key: str) -> tuple[str, str]:
    """(namespace, name) of a key."""
    namespace, _, name = vmi_key.partition("/")
    return namespace, name


def hashed(vmi_key: str) -> str:
    """What a VMI's derived names (MAC, tap) are made from: its name in `default`, else its key."""
    namespace, name = split(vmi_key)
    return name if namespace == DEFAULT_NAMESPACE else vmi_key
