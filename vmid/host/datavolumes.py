"""The claim files of a VirtualMachine's DataVolumes in volumesDir: made once (blank: sparse),
moved aside when the VM is removed, and deleted once they have been aside long enough."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from vmid.host import beneath

#: Where a removed VM's claim files wait, in volumesDir (no claim name starts with a dot).
DELETED_DIR = ".deleted"


def claim_file(volumes: Path, name: str) -> Path:
    """The file a claim (or DataVolume) name stands for, as the plan maps it."""
    return volumes / f"{name}.img"


def create_blank(volumes: Path, name: str, size: int) -> bool:
    """Make a blank DataVolume's claim file, sparse, unless it exists (False then)."""
    volumes.mkdir(parents=True, exist_ok=True)
    return beneath.create_beneath(str(volumes), str(claim_file(volumes, name)), size)


def move_aside(volumes: Path, name: str, owner: str) -> Path | None:
    """Move a removed VM's claim file to volumesDir/.deleted/OWNER_NAME.img (`owner`: its VM's
    namespace_name), never through a symlink; None if it is not there."""
    aside = volumes / DELETED_DIR
    aside.mkdir(mode=0o700, exist_ok=True)
    target = f"{owner}_{name}.{int(time.time())}.img"
    source = os.open(volumes, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        into = os.open(aside, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.rename(f"{name}.img", target, src_dir_fd=source, dst_dir_fd=into)
        except FileNotFoundError:
            return None
        finally:
            os.close(into)
    finally:
        os.close(source)
    return aside / target


def purge(volumes: Path, keep_seconds: float) -> list[str]:
    """Delete the files moved aside more than `keep_seconds` ago (a rename sets ctime)."""
    aside = volumes / DELETED_DIR
    deleted = []
    with contextlib.suppress(FileNotFoundError):
        for item in aside.iterdir():
            with contextlib.suppress(FileNotFoundError):
                st = item.lstat()
                if time.time() - st.st_ctime >= keep_seconds:
                    item.unlink()
                    deleted.append(item.name)
    return deleted
