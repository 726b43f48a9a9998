"""Image garbage collection on a small filesystem of its own (a tmpfs store): kubelet's
thresholds, least recently used first, never an image in use, an imported one or a young one."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmid.cli import main
from vmid.config import ImageGC, Paths, load_config
from vmid.errors import ConfigError
from vmid.host import imagegc, pidlock
from vmid.host.storage import SOURCE_COPY, ImageStore, StoredImage

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed"),
    pytest.mark.timeout(60),
]

MIB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    """A store alone on a 40 MiB tmpfs."""
    root = tmp_path / "root/var/lib/vmid/images"
    root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", root], check=True)
    try:
        yield ImageStore(root, "qemu-img")
    finally:
        subprocess.run(["umount", "-l", root], check=True)


async def pulled(store: ImageStore, ref: str, age: float, size: int = 4 * MIB) -> StoredImage:
    """An image as a pull stores it (not pinned), stored and last used `age` seconds ago."""
    data = os.urandom(size)  # not sparse: it takes its size on the tmpfs
    digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
    with store.staging() as staging:
        (staging / SOURCE_COPY).write_bytes(data)
        image = await store.commit(staging, ref, digest)
    return aged(image, age)


def aged(image: StoredImage, age: float) -> StoredImage:
    then = time.time() - age
    os.utime(image.path.parent / "image.json", (then, then))
    os.utime(image.path.parent, (then, then))
    return image


def stored(store: ImageStore) -> set[str]:
    return {image.ref for image in store.list()}


def percent(store: ImageStore) -> int:
    capacity, available = imagegc.usage(store)
    return 100 - available * 100 // capacity


async def test_unused_images_go_least_recently_used_first_never_one_in_use(
    store: ImageStore, tmp_path: Path
) -> None:
    by_ref = await pulled(store, "docker.io/example/by-ref:1", 600)  # a VMI's spec names it
    by_digest = await pulled(store, "docker.io/example/by-digest:1", 500)  # a VMI started on it
    source = tmp_path / "imported.raw"
    source.write_bytes(os.urandom(4 * MIB))
    aged(await store.add("docker.io/example/imported:1", source), 400)  # pinned
    await pulled(store, "docker.io/example/old:1", 300)
    await pulled(store, "docker.io/example/older:1", 350)
    await pulled(store, "docker.io/example/young:1", 10)  # stored after minimumAge: kept
    in_use = {by_ref.ref, str(by_digest.digest)}
    assert percent(store) >= 60
    # Down to 20 %: more than every image there is; all the collectable ones go, no other.
    policy = ImageGC(highThresholdPercent=50, lowThresholdPercent=20, minimumAgeSeconds=60)
    done = imagegc.collect(store, policy, lambda: in_use)
    assert [c.refs for c in done.removed] == [
        ("docker.io/example/older:1",),
        ("docker.io/example/old:1",),
    ]
    assert done.freed < done.amountToFree  # young, in use and pinned images left
    left = {
        "docker.io/example/by-ref:1",
        "docker.io/example/by-digest:1",
        "docker.io/example/imported:1",
        "docker.io/example/young:1",
    }
    assert stored(store) == left
    assert len(list((store.root / "sha256").iterdir())) == 4  # the disks went with their tags
    assert by_ref.path.read_bytes()  # still readable


async def test_collection_stops_at_the_low_threshold(store: ImageStore) -> None:
    first = await pulled(store, "docker.io/example/a:1", 300)
    await pulled(store, "docker.io/example/b:1", 200)
    await pulled(store, "docker.io/example/c:1", 100)
    store.used(first)  # a VMI started on it now: the least recently used is b
    under = ImageGC(highThresholdPercent=percent(store) + 1, lowThresholdPercent=0)
    assert imagegc.collect(store, under, set).removed == ()  # under the high threshold
    # Just above the low threshold: one image frees enough.
    low = percent(store) - 1
    policy = ImageGC(highThresholdPercent=low, lowThresholdPercent=low, minimumAgeSeconds=0)
    done = imagegc.collect(store, policy, set)
    assert [c.refs for c in done.removed] == [("docker.io/example/b:1",)]
    assert stored(store) == {"docker.io/example/a:1", "docker.io/example/c:1"}
    assert percent(store) <= low


async def test_a_record_a_crash_cut_short_is_a_disk_no_reference_names(store: ImageStore) -> None:
    """Found in review: a content directory whose image.json a crash left empty (written, not
    yet synced) made collection raise, ending the daemon at every start (a restart loop)."""
    image = await pulled(store, "docker.io/example/a:1", 300)
    store.remove("docker.io/example/a:1", keep=frozenset({image.digest or ""}))  # content kept
    (image.path.parent / "image.json").write_text("")
    aged(image, 300)
    policy = ImageGC(highThresholdPercent=0, lowThresholdPercent=0, minimumAgeSeconds=0)
    done = imagegc.collect(store, policy, set)
    assert [(c.refs, c.digest) for c in done.removed] == [((), None)]
    assert not image.path.parent.exists()


async def test_nothing_is_collected_before_what_is_in_use_is_known(store: ImageStore) -> None:
    await pulled(store, "docker.io/example/a:1", 300)
    policy = ImageGC(highThresholdPercent=0, lowThresholdPercent=0, minimumAgeSeconds=0)
    assert imagegc.collect(store, policy, lambda: None).removed == ()
    assert imagegc.prune(store, lambda: None) == []
    assert stored(store) == {"docker.io/example/a:1"}


async def test_image_prune_removes_every_unused_image_and_no_other(
    store: ImageStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await pulled(store, "docker.io/example/a:1", 0)  # young: prune, by hand, ignores the age
    await pulled(store, "docker.io/example/b:1", 100)
    source = tmp_path / "imported.raw"
    source.write_bytes(os.urandom(MIB))
    await store.add("docker.io/example/imported:1", source)
    (tmp_path / "empty.yaml").write_text("")
    root = ["--root", str(tmp_path / "root"), "--config", str(tmp_path / "empty.yaml")]
    # Without a running daemon (after a reboot: no statuses) what is in use is not known.
    assert main(["image", "prune", *root]) == 1
    assert "vmid is not running: which images its VMIs use is not known" in capsys.readouterr().err
    assert len(stored(store)) == 3
    lock = Paths(tmp_path / "root").daemon_pid
    lock.parent.mkdir(parents=True)
    held = pidlock.hold(lock)  # a daemon runs (with no VMI)
    try:
        assert main(["image", "prune", *root]) == 0
    finally:
        os.close(held)
    out = capsys.readouterr().out
    assert "removed docker.io/example/b:1 (sha256:" in out
    assert "removed docker.io/example/a:1 (sha256:" in out
    assert "freed 8Mi" in out
    assert stored(store) == {"docker.io/example/imported:1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("imageGC: {lowThresholdPercent: 90}\n", "lowThresholdPercent (90) and highThreshold"),
        ("imageGC: {highThresholdPercent: 101}\n", "must be percents with low <= high"),
        ("imageGC: {minimumAgeSeconds: -1}\n", "minimumAgeSeconds must not be negative"),
        ("imageGC: {periodSeconds: 0}\n", "periodSeconds must be above 0"),
        ("imageGC: {highThreshold: 80}\n", "highThreshold"),
    ],
)
def test_bad_image_gc_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "vmid.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "vmid.yaml", required=True)
