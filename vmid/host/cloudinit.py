"""Write a cloud-init ISO (ISO 9660 with Joliet and Rock Ridge) with pycdlib, atomically."""

from __future__ import annotations

import io
import posixpath
from pathlib import Path

import pycdlib

from vmid.host import safefile
from vmid.plan.model import CloudInitIso


def write_iso(spec: CloudInitIso) -> None:
    """Build the ISO `spec` describes at `spec.path` (a temporary file, then a rename)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=spec.label)
    # ISO 9660 names are short and upper case; Rock Ridge and Joliet carry the real names.
    directories = {"": ""}
    for index, file in enumerate(spec.files):
        parent = posixpath.dirname(file.name)
        _add_directories(iso, parent, directories)
        iso_name = f"{directories[parent]}/F{index}.;1"
        iso.add_fp(
            io.BytesIO(file.content),
            len(file.content),
            iso_name,
            rr_name=posixpath.basename(file.name),
            joliet_path=f"/{file.name}",
        )
    target = Path(spec.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        safefile.write_atomically(target, iso.write_fp)
    finally:
        iso.close()


def _add_directories(iso: pycdlib.PyCdlib, path: str, directories: dict[str, str]) -> None:
    if path in directories:
        return
    parent = posixpath.dirname(path)
    _add_directories(iso, parent, directories)
    directories[path] = f"{directories[parent]}/D{len(directories)}"
    iso.add_directory(directories[path], rr_name=posixpath.basename(path), joliet_path=f"/{path}")
