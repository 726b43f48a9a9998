"""Image garbage collection, as kubelet's image GC manager does it for container images.

When the image store's filesystem is used at `highThresholdPercent` or more, the disks no VMI
uses are removed, least recently used first, until usage is back to `lowThresholdPercent`; a
disk stored less than `minimumAgeSeconds` ago is kept, and so is an imported one (pinned: no
pull brings it back). `prune` removes every disk no VMI uses, whatever the usage (crictl rmi
--prune). Both hold the store's lock, and ask what is in use once they hold it: no digest is
seen between its storing and its tag, and a VMI looks its image up (under the lock) either
before (it is in use then) or after (it finds the image gone, and pulls it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Set

import attrs

from vmid.config import ImageGC
from vmid.host.storage import ImageStore, StoredContent


@attrs.frozen(kw_only=True)
class Collected:
    """What one collection found and did."""

    usagePercent: int
    #: The bytes it had to free to reach the low threshold (0: under the high one).
    amountToFree: int
    removed: tuple[StoredContent, ...] = ()

    @property
    def freed(self) -> int:
        return sum(content.size for content in self.removed)


def usage(store: ImageStore) -> tuple[int, int]:
    """The capacity of the store's filesystem and the bytes still available there."""
    stat = os.statvfs(store.root)
    return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize


def collect(store: ImageStore, policy: ImageGC, in_use: Callable[[], Set[str] | None]) -> Collected:
    """Free space down to the low threshold if usage reached the high one (kubelet's
    GarbageCollect). `in_use`: the references and digests VMIs use or are being pulled (None:
    not known yet, so all are)."""
    if not store.root.is_dir():  # no image stored yet: nothing to collect, nothing to make
        return Collected(usagePercent=0, amountToFree=0)
    with store.locked():
        capacity, available = usage(store)
        percent = 100 - available * 100 // capacity if capacity else 0
        if percent < policy.highThresholdPercent or policy.highThresholdPercent == 100:
            return Collected(usagePercent=percent, amountToFree=0)
        amount = capacity * (100 - policy.lowThresholdPercent) // 100 - available
        removed: list[StoredContent] = []
        now, used = time.time(), in_use()
        if used is None:
            return Collected(usagePercent=percent, amountToFree=amount)
        for content in sorted(store.contents(), key=lambda c: (c.lastUsed, c.stored)):
            if sum(c.size for c in removed) >= amount:
                break
            if _unused(content, used) and now - content.stored >= policy.minimumAgeSeconds:
                store.delete(content)
                removed.append(content)
        return Collected(usagePercent=percent, amountToFree=amount, removed=tuple(removed))


def prune(store: ImageStore, in_use: Callable[[], Set[str] | None]) -> list[StoredContent]:
    """Remove every disk no VMI uses (imported ones are pinned), oldest first."""
    with store.locked():
        removed: list[StoredContent] = []
        used = in_use()
        if used is None:
            return []
        for content in sorted(store.contents(), key=lambda c: (c.lastUsed, c.stored)):
            if _unused(content, used):
                store.delete(content)
                removed.append(content)
        return removed


def _unused(content: StoredContent, in_use: Set[str]) -> bool:
    if content.local or (content.digest is not None and content.digest in in_use):
        return False
    return not any(ref in in_use for ref in content.refs)
