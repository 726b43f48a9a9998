"""Container image references normalised as container tools do (`kubevirt/x` -> docker.io/...)."""

from __future__ import annotations

import re
import urllib.parse

DEFAULT_REGISTRY = "docker.io"
#: A stored image's file, in its directory under vmid/paths.py's STORE_DIR.
STORE_FILE = "disk.img"
# A path component as the OCI distribution spec allows it.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")


class ImageRefError(ValueError):
    """Not a container image reference."""


def normalize(ref: str) -> str:
    """`kubevirt/cirros` -> `docker.io/kubevirt/cirros:latest`; `quay.io/x@sha256:..` unchanged.

    Raises:
        ImageRefError: the text is not an image reference.
    """
    name, digest = ref.split("@", 1) if "@" in ref else (ref, None)
    tag = None
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1 :]:
        name, tag = name.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise ImageRefError(
            f"{ref!r} is not an image reference: repository names are lowercase "
            "letters, digits and separators"
        )
    if tag is not None and not _TAG.fullmatch(tag):
        raise ImageRefError(f"{ref!r} is not an image reference: invalid tag {tag!r}")
    if digest is not None:
        if not _DIGEST.fullmatch(digest):
            raise ImageRefError(f"{ref!r} is not an image reference: invalid digest")
        return f"{registry}/{path}" + (f":{tag}" if tag else "") + f"@{digest}"
    return f"{registry}/{path}:{tag or 'latest'}"


def store_name(ref: str) -> str:
    """The directory name of a normalised reference in vmid's image store (one component)."""
    return urllib.parse.quote(ref, safe=":@")


def repository(ref: str) -> str:
    """A normalised reference without its tag or digest: `docker.io/library/x:1` -> `.../x`."""
    name = ref.split("@", 1)[0]
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1 :]:
        name = name.rsplit(":", 1)[0]
    return name
