"""The daemon's image pulls, as kubelet makes them: a VMI waits `Pending` for its image.

One pull per image at a time, shared by every VMI waiting for it (the others keep starting).
A failure shows as kubelet shows it: `ErrImagePull`, then `ImagePullBackOff` while it waits
10 s, doubled after each failure up to 300 s, retried until it works or the VMI is removed.
While an image is copied, every VMI waiting for it shows the bytes copied of the total in its
Ready condition (`Pulling`), rewritten every few seconds, and the log says it less often.
"""

from __future__ import annotations

import functools
import logging

import attrs
import trio

from vmid.api.quantity import rounded
from vmid.errors import StorageError, VmidError
from vmid.host import registry
from vmid.host.storage import ImageStore, StoredImage
from vmid.plan.model import ImageOverlay
from vmid.runtime.status import Status

log = logging.getLogger(__name__)

BACKOFF_MAX = 300.0
#: How long a failure shows as ErrImagePull before the wait shows as ImagePullBackOff (kubelet
#: shows the back-off at the pod's next sync).
ERROR_SHOWN = 1.0
ERR_IMAGE_PULL = "ErrImagePull"
IMAGE_PULL_BACKOFF = "ImagePullBackOff"
#: The reasons a VMI waiting for its image shows (its VM shows them as printableStatus).
REASONS = (ERR_IMAGE_PULL, IMAGE_PULL_BACKOFF)
#: The Ready condition's reason while the image is copied (kubelet's event reason); the VMI's
#: own reason stays empty then (Pending, as a pod pulling is ContainerCreating).
PULLING = "Pulling"
#: How often the log says how far a pull is (the VMIs' conditions say it more often).
LOG_PROGRESS_SECONDS = 10.0


@attrs.define
class _Attempt:
    """One pull of an image, awaited by every VMI that needs it."""

    done: trio.Event = attrs.field(factory=trio.Event)
    image: StoredImage | None = None
    error: str = ""
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: How long the pull took, once done.
    seconds: float = 0.0
    #: The VMIs waiting for it now, and the last progress shown to them (done, total).
    waiting: list[Status] = attrs.field(factory=list)
    progress: str = ""
    logged: float = float("-inf")


@attrs.define(kw_only=True)
class PullSettings:
    """What vmid.yaml says about pulls (replaced on reload)."""

    skopeo: registry.Skopeo
    maxDiskSize: int
    backoff: float


class Puller:
    """Images for the VMIs being prepared: from the store, or pulled (`pulls` in the nursery)."""

    def __init__(self, nursery: trio.Nursery, store: ImageStore, settings: PullSettings) -> None:
        self._nursery = nursery
        self._store = store
        self.settings = settings
        self._pulls: dict[tuple[str, str | None], _Attempt] = {}

    def __repr__(self) -> str:
        return f"<Puller pulls={len(self._pulls)}>"

    def pulling(self) -> set[str]:
        """The references being pulled now (garbage collection keeps their images)."""
        return {ref for ref, _ in self._pulls}

    def close(self) -> None:
        """Cancel every pull (the daemon is stopping: its VMIs are, so nothing awaits them)."""
        for attempt in self._pulls.values():
            attempt.scope.cancel()

    async def image(self, item: ImageOverlay, status: Status) -> StoredImage:
        """The stored image `item` backs onto, pulled as its policy says (an imported image is
        never pulled over); waits (Pending) while pulls fail. Raises StorageError when the
        policy is Never and the image is absent."""
        try:
            get, path = self._store.get_locked, item.diskPath
            image: StoredImage | None = await trio.to_thread.run_sync(get, item.image, path)
        except StorageError as exc:
            if item.pullPolicy == "Never":
                raise StorageError(
                    f'Container image "{item.image}" is not present with pull policy of '
                    f"Never: add it with `vmid image pull {item.image}` or "
                    f"`vmid image import {item.image} FILE`"
                ) from exc
            image = None
        # An image imported by hand is what the administrator wants under that name, whatever
        # the policy (as `ctr image import`, minus kubelet's Always pulling over it offline).
        if image is not None and (image.local or item.pullPolicy != "Always"):
            message = f'Container image "{item.image}" already present on machine'
            status.event("Normal", "Pulled", message)
            return image
        delay = self.settings.backoff
        started = trio.current_time()
        while True:
            status.event("Normal", "Pulling", f'Pulling image "{item.image}"')
            attempt = await self._shared(item, status)
            if attempt.image is not None:
                waited = trio.current_time() - started
                _pulled(status, item, attempt.image, attempt.seconds, waited)
                return attempt.image
            await _back_off(status, item, attempt.error, delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _shared(self, item: ImageOverlay, status: Status) -> _Attempt:
        key = (item.image, item.diskPath)
        attempt = self._pulls.get(key)
        if attempt is None:
            attempt = self._pulls[key] = _Attempt()
            self._nursery.start_soon(self._pull, key, attempt, name=f"pull {item.image}")
        elif attempt.progress:  # joined midway: shown at once, not at the next report
            _show(status, PULLING, attempt.progress, reason="")
        attempt.waiting.append(status)
        try:
            await attempt.done.wait()
        finally:
            attempt.waiting.remove(status)
        return attempt

    def _progress(self, ref: str, attempt: _Attempt, started: float, done: int, total: int) -> None:
        """Show how far a pull is to the VMIs waiting for it; in the log, now and then."""
        copied = min(done, total) if total else done
        rate = copied / max(trio.current_time() - started, 1e-3)
        share = f"{rounded(copied)} of {rounded(total)} ({copied * 100 // total}%)" if total else ""
        attempt.progress = (
            f'Pulling image "{ref}": {share or rounded(copied)}, {rounded(int(rate))}/s'
        )
        for status in attempt.waiting:
            _show(status, PULLING, attempt.progress, reason="")
        if trio.current_time() - attempt.logged >= LOG_PROGRESS_SECONDS:
            attempt.logged = trio.current_time()
            log.info("image %s: %s copied so far", ref, share or rounded(copied))

    async def _pull(self, key: tuple[str, str | None], attempt: _Attempt) -> None:
        ref, disk_path = key
        settings = self.settings
        log.info("pulling image %s", ref)
        started = trio.current_time()
        attempt.error = "the pull was cancelled: vmid is stopping"  # unless it ends otherwise
        try:
            with attempt.scope:
                image = await registry.pull(
                    self._store,
                    settings.skopeo,
                    ref,
                    disk_path,
                    max_size=settings.maxDiskSize,
                    on_progress=functools.partial(self._progress, ref, attempt, started),
                    tidy=self._nursery,
                )
                attempt.image = image
                attempt.seconds = seconds = trio.current_time() - started
                log.info("pulled image %s: %s in %.1f s", ref, image.digest, seconds)
        except (VmidError, OSError) as exc:
            attempt.error = str(exc)
            log.warning("pulling image %s failed: %s", ref, exc)
        except Exception as exc:  # a bug in one pull must not end the daemon
            log.exception("pulling image %s: internal error", ref)
            attempt.error = f"internal error in vmid: {exc!r}"
        finally:
            del self._pulls[key]
            attempt.done.set()


def _show(status: Status, condition: str, message: str, reason: str | None = None) -> None:
    """The Ready condition (and status.reason: `condition`'s, unless `reason` is given)."""
    status.reason = condition if reason is None else reason
    status.condition("Ready", False, condition, message)
    status.write()


async def _back_off(status: Status, item: ImageOverlay, error: str, delay: float) -> None:
    message = f'Failed to pull image "{item.image}": {error}'
    status.event("Warning", "Failed", message)
    _show(status, ERR_IMAGE_PULL, message)
    await trio.sleep(min(ERROR_SHOWN, delay))
    status.event("Normal", "BackOff", f'Back-off pulling image "{item.image}"')
    _show(status, IMAGE_PULL_BACKOFF, f'Back-off pulling image "{item.image}": {error}')
    await trio.sleep(max(0.0, delay - ERROR_SHOWN))


def _pulled(
    status: Status, item: ImageOverlay, image: StoredImage, seconds: float, waited: float
) -> None:
    """kubelet's `Pulled` event (its pull's time, and this VMI's wait), with the digest."""
    status.event(
        "Normal",
        "Pulled",
        f'Successfully pulled image "{item.image}" in {seconds:.3f}s ({waited:.3f}s including '
        f"waiting). Image size: {image.virtualSize} bytes. Digest: {image.digest}",
    )
    ready = status.conditions.get("Ready")
    if status.reason in REASONS or (ready is not None and ready.reason in (*REASONS, PULLING)):
        status.reason = ""
        status.conditions.pop("Ready", None)
    status.write()
