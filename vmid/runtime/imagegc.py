"""The daemon's image garbage collection (kubelet's; the policy is in vmid/host/imagegc.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Set

import trio

from vmid.config import ImageGC
from vmid.errors import VmidError
from vmid.host import imagegc
from vmid.host.storage import ImageStore

log = logging.getLogger(__name__)


async def collect(
    store: ImageStore, policy: ImageGC, in_use: Callable[[], Set[str] | None]
) -> imagegc.Collected | None:
    """One collection; a line in the log per image removed. `in_use` runs in trio's thread,
    once the collection holds the store's lock. None when it failed (logged)."""

    def snapshot() -> Set[str] | None:
        return trio.from_thread.run_sync(in_use)

    try:
        done = await trio.to_thread.run_sync(imagegc.collect, store, policy, snapshot)
    except (OSError, VmidError) as exc:
        log.error("image garbage collection failed: %s", exc)
        return None
    except Exception:  # a bug in collecting images must not end the daemon (every VM's care)
        log.exception("image garbage collection failed: internal error")
        return None
    if not done.amountToFree:
        return done
    log.info(
        "image filesystem usage %d%% is over the high threshold (%d%%): freeing %d bytes "
        "down to the low threshold (%d%%)",
        done.usagePercent,
        policy.highThresholdPercent,
        done.amountToFree,
        policy.lowThresholdPercent,
    )
    for content in done.removed:
        names = ", ".join(content.refs) or "no reference"
        log.info("removed image %s (%s) to free %d bytes", content.digest, names, content.size)
    if done.freed < done.amountToFree:
        log.warning(
            "failed to garbage collect the required amount of images: attempted to free %d "
            "bytes, but only found %d bytes eligible to free",
            done.amountToFree,
            done.freed,
        )
    return done
