"""Move what a vmid from before namespaces left to where namespaced VMIs live.

Its VMIs were all in the `default` namespace: `instances/NAME` (runtime and state) and the log
directory `NAME` become `namespaces/default/NAME`. Each move is one rename, so a crash midway
leaves every VMI in one place or the other, and the next start finishes the job. A running
QEMU moves with its directory (its working directory is the inode, not the path).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vmid.api.names import DEFAULT_NAMESPACE
from vmid.config import NAMESPACES, Paths

log = logging.getLogger(__name__)

#: Where a vmid before namespaces kept each VMI's runtime and state directories.
OLD_INSTANCES = "instances"


def migrate(paths: Paths) -> list[str]:
    """Move every VMI directory of the old layout; the names moved (logged, one line each)."""
    moved = set()
    for old, new in (
        (paths.runtime / OLD_INSTANCES, paths.runtime_instances),
        (paths.state / OLD_INSTANCES, paths.state_instances),
    ):
        moved |= _move_all(old, new / DEFAULT_NAMESPACE, skip=set())
        try:
            old.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:  # something could not be moved: said below
            log.error("%s: left in place (%s)", old, os.strerror(exc.errno or 0))
    moved |= _move_all(paths.logs, paths.log_instances / DEFAULT_NAMESPACE, skip={NAMESPACES})
    return sorted(moved)


def _move_all(old: Path, new: Path, skip: set[str]) -> set[str]:
    moved = set()
    for name in sorted(_old_directories(old, skip)):
        new.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(old / name, new / name)
        except OSError as exc:
            log.error(
                "%s: not moved to %s (%s): move or remove one of them by hand",
                old / name,
                new / name,
                os.strerror(exc.errno or 0),
            )
            continue
        log.info("%s: moved to %s (vmid now keys VMIs by namespace)", old / name, new / name)
        moved.add(name)
    return moved


def _old_directories(directory: Path, skip: set[str]) -> list[str]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    return [
        e.name
        for e in entries
        if e.is_dir(follow_symlinks=False) and e.name not in skip and not e.name.startswith(".")
    ]
