"""The process table as a launch needs it (the uids taken, the processes in a VMI's directory),
kept between launches: read again after a process vmid ran has ended, off the launch's path.

Why a kept snapshot is enough: a process gets a uid of vmid's range only from root (vmid, which
records the uid first) or from a process already running as it; a process enters a VMI's
directory (0700, its uid's) only as root or as that uid. So a process the snapshot does not show,
of a uid it shows free, can only descend from a process vmid started after it, and every such
process's end invalidates it. A snapshot that shows anything in a VMI's way is read again before
it refuses (the process may have ended), and decides only when it finds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set
from pathlib import Path

import attrs
import trio

from vmid.host import identity
from vmid.runtime import process
from vmid.runtime.coalesce import Coalesced

log = logging.getLogger(__name__)

#: How long a refresh waits after an end: the VMIs of one removal end together, read once.
SETTLE_SECONDS = 0.02


@attrs.frozen
class Snapshot:
    """Which processes ran as which ids, and which ran in a VMI's directory, when it was read."""

    #: How many ends had been counted when its read began: it is current while none came since.
    generation: int
    #: Every live process's uids and gids, by pid (`identity.running_ids`).
    ids: Mapping[int, Set[int]]
    #: The pids whose working directory is a VMI's QEMU directory, by VMI key.
    directories: Mapping[str, tuple[int, ...]]

    def in_the_way(self, key: str, uid: int | None) -> list[int]:
        """The processes in VMI `key`'s directory or running as its `uid`, when it was read."""
        pids = list(self.directories.get(key, ()))
        return pids + (identity.processes_of(uid, self.ids) if uid is not None else [])


class ProcessTable:
    """One kept snapshot of the process table; `ended()` when a process vmid ran ends."""

    def __init__(self, instances: Path, qemu_dir: str) -> None:
        self._instances = instances
        self._qemu_dir = qemu_dir
        self._generation = 0
        self._snapshot: Snapshot | None = None
        self._reads = Coalesced(self._read)
        self._stale = trio.Event()

    def __repr__(self) -> str:
        kept = self._snapshot.generation if self._snapshot else None
        return f"<ProcessTable generation={self._generation} kept={kept}>"

    def ended(self) -> None:
        """A process vmid started (or took over) has ended, or left its care: no snapshot read
        before now counts any more."""
        self._generation += 1
        self._stale.set()

    async def current(self) -> Snapshot:
        """A snapshot no end has come after: the one kept, else one read now."""
        kept = self._snapshot
        if kept is not None and kept.generation == self._generation:
            return kept
        return await self.fresh()

    async def fresh(self) -> Snapshot:
        """A snapshot whose read began after this call."""
        snapshot = await self._reads.get()
        if self._snapshot is None or snapshot.generation >= self._snapshot.generation:
            self._snapshot = snapshot
        return snapshot

    async def keep_current(self) -> None:
        """Forever: read again soon after each end, so that the next launch finds a snapshot.

        **Cancellation:** the only way this returns.
        """
        while True:
            await self._stale.wait()
            self._stale = trio.Event()
            await trio.sleep(SETTLE_SECONDS)
            try:
                await self.current()
            except OSError as exc:  # the next launch reads it again, and fails alone if it must
                log.warning("cannot read the process table: %s", exc)

    def _read(self) -> Snapshot:
        generation = self._generation  # before the first process is looked at
        directories: dict[str, list[int]] = {}
        for pid, key in process.in_vmi_directories(self._instances, self._qemu_dir):
            directories.setdefault(key, []).append(pid)
        return Snapshot(
            generation,
            identity.running_ids(),
            {key: tuple(pids) for key, pids in directories.items()},
        )
