"""containerDisks pulled from a real registry (Debian's docker-registry, in a network namespace
of the test's own) with skopeo: the CLI, the store's checks, and the daemon's pulls."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import trio

from tests.daemon import Daemon, fake_config, manifest, running_daemon
from tests.registry import (
    HOST,
    INSECURE_CONF,
    Layers,
    Member,
    Registry,
    containerdisk,
    layer_bytes,
    multiarch,
    raw_disk,
    registry,
)
from vmid.errors import PullError
from vmid.host import registry as pulling
from vmid.host.registry import extract_disk
from vmid.host.storage import ImageStore

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Registry]:
    with registry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """vmid's root, whose registries.conf lets skopeo reach the test registry over HTTP."""
    root = tmp_path / "root"
    (root / "etc/containers").mkdir(parents=True)
    (root / "etc/containers/registries.conf").write_text(INSECURE_CONF)
    (root / "etc/vmid").mkdir(parents=True)
    (root / "etc/vmid/vmid.yaml").write_text("")
    return root


def push(server: Registry, tmp_path: Path, ref: str, layers: Layers) -> str:
    layout = containerdisk(tmp_path / "layouts" / ref.replace("/", "_").replace(":", "_"), layers)
    return server.push(layout, ref)


def vmid(server: Registry, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return server.run(sys.executable, "-m", "vmid", *args, "--root", str(root), check=False)


def content(root: Path, digest: str) -> Path:
    return root / "var/lib/vmid/images/sha256" / digest.partition(":")[2] / "disk.img"


# --- vmid image pull / list / rm


@pytest.mark.parametrize("how", ["gzip", "zstd", "none"])
def test_pull_stores_the_disk_once_per_digest(
    server: Registry, root: Path, tmp_path: Path, how: str
) -> None:
    disk = raw_disk(4 << 20, b"first")
    layout = containerdisk(tmp_path / "layout", [[("disk/disk.img", disk)]], how)
    digest = server.push(layout, "kubevirt/disk:1")
    server.push(layout, "kubevirt/disk:same")  # another tag, the same image
    for tag in ("1", "same", "1"):
        done = vmid(server, root, "image", "pull", f"{HOST}/kubevirt/disk:{tag}")
        assert done.returncode == 0, done.stderr
        assert f"pulled {HOST}/kubevirt/disk:{tag} ({digest}, 4Mi)" in done.stdout
    stored = content(root, digest)
    assert stored.read_bytes() == disk
    assert stat.S_IMODE(stored.stat().st_mode) == 0o400
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert len(list(stored.parent.parent.iterdir())) == 1  # one copy for two tags
    rows = vmid(server, root, "image", "list").stdout.splitlines()
    assert [r.split()[:4] for r in rows[1:]] == [
        [f"{HOST}/kubevirt/disk:{t}", digest[7:19], "4Mi", "<none>"] for t in ("1", "same")
    ]
    assert vmid(server, root, "image", "rm", f"{HOST}/kubevirt/disk:1").returncode == 0
    assert stored.exists()  # still named by the other tag
    assert vmid(server, root, "image", "rm", f"{HOST}/kubevirt/disk:same").returncode == 0
    assert not stored.parent.exists()


def test_a_multi_arch_index_resolves_to_linux_amd64(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    images = {
        "arm64": [[("disk/disk.img", raw_disk(1 << 20, b"arm64"))]],
        "amd64": [[("disk/disk.img", raw_disk(1 << 20, b"amd64"))]],
    }
    digest = server.push(multiarch(tmp_path / "layout", images), "multi/disk:1")
    done = vmid(server, root, "image", "pull", f"{HOST}/multi/disk:1")
    assert done.returncode == 0, done.stderr
    assert content(root, digest).read_bytes().startswith(b"amd64")  # stored under the index's


def test_a_missing_image_quotes_the_registry(server: Registry, root: Path) -> None:
    done = vmid(server, root, "image", "pull", f"{HOST}/nope/disk:1")
    assert done.returncode == 1
    assert "manifest unknown" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([[("etc/motd", b"hello")]], "holds no disk file under /disk/: not a containerDisk"),
        (
            [[("disk/a.img", raw_disk()), ("disk/b.img", raw_disk())]],
            "more than one file in /disk/ (disk/a.img, disk/b.img): only one disk is allowed",
        ),
        (
            [[("disk/a.img", raw_disk())], [("disk/b.img", raw_disk())]],
            "only one disk is allowed",
        ),
        ([[("disk/disk.img", ("symlink", "/etc/shadow"))]], "is not a regular file"),
        (
            [[("etc/shadow", b"secret"), ("disk/disk.img", ("hardlink", "etc/shadow"))]],
            "is not a regular file",
        ),
    ],
)
def test_images_that_are_no_containerdisk_are_refused(
    server: Registry, root: Path, tmp_path: Path, layers: list[list[Member]], message: str
) -> None:
    push(server, tmp_path, "bad/disk:1", layers)
    done = vmid(server, root, "image", "pull", f"{HOST}/bad/disk:1")
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert vmid(server, root, "image", "list").stdout.splitlines()[1:] == []
    assert not [
        p for p in (root / "var/lib/vmid/images").iterdir() if p.name not in ("sha256", ".lock")
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("backing_file", "a qcow2 image with a backing file is not accepted"),
        ("data_file", "an external data file"),
    ],
)
def test_a_qcow2_naming_another_file_is_refused(
    server: Registry, root: Path, tmp_path: Path, option: str, message: str
) -> None:
    # The file named is the test's own: qemu-img create writes a data file it is given.
    other = tmp_path / "other.raw"
    other.write_bytes(bytes(1 << 20))
    top = tmp_path / "top.qcow2"
    extra = ",backing_fmt=raw" if option == "backing_file" else ",data_file_raw=on"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"{option}={other}{extra}"]
    subprocess.run([*create, str(top), "1M"], check=True)
    push(server, tmp_path, "bad/other:1", [[("disk/disk.qcow2", top.read_bytes())]])
    done = vmid(server, root, "image", "pull", f"{HOST}/bad/other:1")
    assert done.returncode == 1
    assert message in done.stderr


def test_a_qcow2_disk_is_stored_raw_and_path_picks_the_file(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "2M"], check=True)
    layers = [[("disk/other.img", raw_disk()), ("images/fedora.qcow2", disk.read_bytes())]]
    digest = push(server, tmp_path, "path/disk:1", layers)
    ref = f"{HOST}/path/disk:1"
    done = vmid(server, root, "image", "pull", ref, "--path", "/images/fedora.qcow2")
    assert done.returncode == 0, done.stderr
    [stored] = (root / "var/lib/vmid/images/sha256").iterdir()
    assert stored.name.startswith(digest[7:])
    assert (stored / "disk.img").read_bytes() == b"\0" * (2 << 20)  # converted to raw


@pytest.mark.parametrize("how", ["garbled", "truncated"])
def test_a_blob_the_registry_corrupted_is_refused(
    server: Registry, root: Path, tmp_path: Path, how: str
) -> None:
    layer = raw_disk(1 << 20, b"good")
    push(server, tmp_path, "corrupt/disk:1", [[("disk/disk.img", layer)]])
    for blob in (server.directory / "data/docker/registry/v2/blobs").rglob("data"):
        data = blob.read_bytes()
        if data.startswith(b"\x1f\x8b"):  # the layer: same size, other bytes; or half of it
            blob.write_bytes(data[:-16] + bytes(16) if how == "garbled" else data[: len(data) // 2])
    done = vmid(server, root, "image", "pull", f"{HOST}/corrupt/disk:1")
    assert done.returncode == 1
    assert "a layer the registry sent does not match its digest (corrupt, or cut short)" in (
        done.stderr
    )
    assert "skopeo: writing blob: happened during read: Digest did not match" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((root / "var/lib/vmid/images").rglob("disk.img"))


# --- vmid's own checks on what skopeo copied (a skopeo that let a bad blob through)


def copied(tmp_path: Path, layers: Layers, how: str = "gzip") -> tuple[Path, str]:
    """A directory as skopeo's `dir:` leaves it, and its manifest's digest."""
    layout = containerdisk(tmp_path / "layout", layers, how)
    directory = tmp_path / "copied"
    directory.mkdir()
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    for blob in (layout / "blobs/sha256").iterdir():
        (directory / blob.name).write_bytes(blob.read_bytes())
    (directory / "manifest.json").write_bytes((directory / digest[7:]).read_bytes())
    return directory, digest


@pytest.mark.parametrize("how", ["garbled", "truncated"])
def test_vmid_checks_every_layer_it_reads_against_its_digest(tmp_path: Path, how: str) -> None:
    directory, digest = copied(tmp_path, [[("disk/disk.img", raw_disk())]])
    manifest_data = json.loads((directory / "manifest.json").read_text())
    layer = directory / manifest_data["layers"][0]["digest"][7:]
    data = layer.read_bytes()
    layer.write_bytes(data[:-8] + bytes(8) if how == "garbled" else data[: len(data) // 2])
    with pytest.raises(PullError, match="does not match its digest: the registry sent other"):
        extract_disk(directory, digest, None, tmp_path / "disk", 1 << 30)
    assert not (tmp_path / "disk").exists()  # refused before anything was decompressed


class _Substituting:
    """A skopeo that writes the layer the registry sent (another disk) to a temporary file,
    then puts the layer the manifest names under its digest's name as another file: the
    follower, reading the first as it is written, must not take its disk."""

    def __init__(self, good: Path, sent: Path) -> None:
        self._good, self._sent = good, sent

    async def raw_manifest(self, ref: str, staging: Path) -> bytes:
        return (self._good / "manifest.json").read_bytes()

    async def copy(self, source: str, target: Path, bars: bool) -> None:
        await trio.to_thread.run_sync(self._copy, target)

    def _copy(self, target: Path) -> None:
        target.mkdir()
        manifest = json.loads((self._good / "manifest.json").read_text())
        sent = json.loads((self._sent / "manifest.json").read_text())["layers"][0]["digest"]
        temporary = target / "dir-put-blob1"
        temporary.write_bytes((self._sent / sent[7:]).read_bytes())
        deadline = time.monotonic() + 30
        while not [fd for fd in Path("/proc/self/fd").iterdir() if _names(fd, temporary)]:
            assert time.monotonic() < deadline, "the follower never opened the layer"
            time.sleep(0.01)
        blobs = [manifest["layers"][0]["digest"][7:], manifest["config"]["digest"][7:]]
        for name in (*blobs, "manifest.json", "version"):
            (target / name).write_bytes((self._good / name).read_bytes())
        temporary.unlink()


def _names(fd: Path, path: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.readlink(fd) == str(path)
    return False


async def test_a_layer_read_as_it_is_written_counts_only_as_the_file_skopeo_checked(
    tmp_path: Path,
) -> None:
    # Plain tar layers: the same size, so only the file read tells them apart.
    good, _ = copied(tmp_path / "good", [[("disk/disk.img", raw_disk(1 << 20, b"good"))]], "none")
    (good / "version").write_text("Directory Transport Version: 1.1\n")
    sent, _ = copied(tmp_path / "sent", [[("disk/disk.img", raw_disk(1 << 20, b"evil"))]], "none")
    store = ImageStore(tmp_path / "images", "qemu-img")
    fake = _Substituting(good, sent)
    image = await pulling.pull(store, fake, "r.example/a:1", max_size=1 << 30)  # type: ignore[arg-type]
    assert image.path.read_bytes() == raw_disk(1 << 20, b"good")


def test_a_disk_larger_than_allowed_is_refused(tmp_path: Path) -> None:
    directory, digest = copied(tmp_path, [[("disk/disk.img", raw_disk(2 << 20))]])
    with pytest.raises(PullError, match="more than the 1048576 allowed"):
        extract_disk(directory, digest, None, tmp_path / "disk", 1 << 20)


def test_a_layer_holding_more_than_a_containerdisk_may_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pulling, "OTHER_FILES_BYTES", 1 << 20)
    layers = [[("var/zeros", bytes(4 << 20)), ("disk/disk.img", raw_disk())]]
    directory, digest = copied(tmp_path, layers)
    with pytest.raises(PullError, match="more data than a containerDisk may"):
        extract_disk(directory, digest, None, tmp_path / "disk", 1 << 20)


def test_member_names_never_become_paths(tmp_path: Path) -> None:
    escape = tmp_path / "escaped"
    layers = [[(f"../../../../../..{escape}", b"x"), ("disk/../../x", b"y")]]
    layers[0].append(("disk/disk.img", raw_disk()))
    directory, digest = copied(tmp_path, layers)
    extract_disk(directory, digest, None, tmp_path / "disk", 1 << 20)
    assert (tmp_path / "disk").read_bytes() == raw_disk()
    assert not escape.exists()
    assert layer_bytes(layers[0])  # the archive did hold those names


# --- the daemon


def disk_vmi(name: str, image: str, policy: str | None = None) -> str:
    extra = f", imagePullPolicy: {policy}" if policy else ""
    return manifest(name).replace(
        "devices: {autoattachPodInterface: false}",
        "devices:\n      autoattachPodInterface: false\n      disks: [{name: root}]\n"
        f"  volumes: [{{name: root, containerDisk: {{image: {image}{extra}}}}}]",
    )


def image_id(daemon: Daemon, name: str) -> str:
    data = daemon.status(name)
    assert data is not None
    [volume] = data["status"]["volumeStatus"]
    assert volume["name"] == "root"
    return str(volume["imageID"])


def reason(daemon: Daemon, name: str) -> str | None:
    data = daemon.status(name)
    return data["status"].get("reason") if data else None


def events(daemon: Daemon, name: str) -> list[tuple[str, str]]:
    result = daemon.vmid("events", "-o", "json", name)
    assert result.returncode == 0, result.stderr
    return [(e["reason"], e["message"]) for e in json.loads(result.stdout)["items"]]


def pulling_daemon(
    server: Registry, root: Path, backoff: float = 10
) -> AbstractContextManager[Daemon]:
    """A daemon (fake QEMU) in the registry's network namespace, with `root`'s files."""
    config = fake_config(f"images: {{pullBackoffSeconds: {backoff}}}\n")
    return running_daemon(root, config, prefix=server.prefix)


SEED = "kubevirt/fedora-cloud-container-disk-demo"


def test_a_vmi_is_pending_while_its_image_is_pulled_then_runs(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    digest = push(server, tmp_path, f"{SEED}:latest", [[("disk/disk.img", raw_disk())]])
    with pulling_daemon(server, root) as daemon:
        daemon.drop("a.yaml", disk_vmi("vm-a", f"{HOST}/{SEED}"))
        daemon.wait_phase("vm-a", "Running")
        assert image_id(daemon, "vm-a") == f"{HOST}/{SEED}@{digest}"
        reasons = events(daemon, "vm-a")
        assert ("Pulling", f'Pulling image "{HOST}/{SEED}:latest"') in reasons
        [pulled] = [m for r, m in reasons if r == "Pulled"]
        assert pulled.startswith(f'Successfully pulled image "{HOST}/{SEED}:latest" in ')
        assert digest in pulled
        listed = daemon.vmid("image", "list").stdout.splitlines()[1].split()
        assert listed[3] == "default/vm-a"  # IN USE
        refused = daemon.vmid("image", "rm", f"{HOST}/{SEED}")
        assert refused.returncode == 1
        assert "is in use by default/vm-a: remove those VMIs first" in refused.stderr


def test_a_tag_moved_is_followed_by_always_not_by_if_not_present(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    ref = f"{HOST}/moving/disk:v1"
    first = push(server, tmp_path, "moving/disk:v1", [[("disk/disk.img", raw_disk(1 << 20, b"1"))]])
    with pulling_daemon(server, root) as daemon:
        daemon.drop("a.yaml", disk_vmi("vm-a", ref, "Always"))
        daemon.wait_phase("vm-a", "Running")
        layers = [[("disk/disk.img", raw_disk(1 << 20, b"2"))]]
        layout = containerdisk(tmp_path / "second", layers)
        second = server.push(layout, "moving/disk:v1")
        daemon.drop("b.yaml", disk_vmi("vm-b", ref, "IfNotPresent"))
        daemon.drop("c.yaml", disk_vmi("vm-c", ref, "Always"))
        for name in ("vm-b", "vm-c"):
            daemon.wait_phase(name, "Running")
        assert image_id(daemon, "vm-a").endswith(first)  # a running VM keeps its disk
        assert image_id(daemon, "vm-b").endswith(first)  # present: not pulled again
        assert image_id(daemon, "vm-c").endswith(second)  # re-resolved at its start
        assert content(root, first).read_bytes().startswith(b"1")  # vm-a's disk, unchanged
        assert content(root, second).read_bytes().startswith(b"2")


def test_a_registry_down_then_up_backs_off_then_runs(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    push(server, tmp_path, "later/disk:1", [[("disk/disk.img", raw_disk())]])
    server.stop()
    with pulling_daemon(server, root, backoff=2) as daemon:
        daemon.drop("a.yaml", disk_vmi("vm-a", f"{HOST}/later/disk:1"))
        daemon.wait_for("ErrImagePull", lambda: reason(daemon, "vm-a") == "ErrImagePull")
        data = daemon.status("vm-a")
        assert data is not None
        assert data["status"]["phase"] == "Pending"
        [ready] = [c for c in data["status"]["conditions"] if c["type"] == "Ready"]
        assert ready["reason"] == "ErrImagePull"
        assert f'Failed to pull image "{HOST}/later/disk:1": ' in ready["message"]
        assert "connection refused" in ready["message"]  # skopeo's words
        daemon.wait_for("ImagePullBackOff", lambda: reason(daemon, "vm-a") == "ImagePullBackOff")
        daemon.wait_for("a second failure", lambda: daemon.log_text().count("failed:") >= 2)
        server.start()
        daemon.wait_phase("vm-a", "Running", timeout=30)
        assert daemon.reason("vm-a") == ""
        reasons = [r for r, _ in events(daemon, "vm-a")]
        assert {"Failed", "BackOff", "Pulled"} <= set(reasons)


def throttle(server: Registry, rate: str | None) -> None:
    """Slow the registry's loopback (in its namespace) to `rate`, or let it run free (None)."""
    if rate is None:
        server.run("tc", "qdisc", "del", "dev", "lo", "root")
    else:
        limit = ["tbf", "rate", rate, "burst", "256kb", "latency", "1s"]
        server.run("tc", "qdisc", "add", "dev", "lo", "root", *limit)


def ready(daemon: Daemon, name: str) -> dict[str, str]:
    data = daemon.status(name)
    found = (
        [c for c in data["status"].get("conditions", []) if c["type"] == "Ready"] if data else []
    )
    return found[0] if found else {}


def test_a_pull_shows_progress_and_a_registry_killed_mid_pull_leaves_nothing_behind(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    disk = os.urandom(32 << 20)  # incompressible: 32 MiB on the wire
    digest = push(server, tmp_path, "big/disk:1", [[("disk/disk.img", disk)]])
    throttle(server, "40mbit")  # 5 MB/s: about 7 s for the image
    ref = f"{HOST}/big/disk:1"
    with pulling_daemon(server, root, backoff=2) as daemon:
        daemon.drop("a.yaml", disk_vmi("vm-a", ref))
        progress = re.compile(rf'Pulling image "{ref}": [1-9][0-9.]*Mi of 32Mi \([0-9]+%\), ')
        daemon.wait_for(
            "progress", lambda: bool(progress.match(ready(daemon, "vm-a").get("message", "")))
        )
        assert ready(daemon, "vm-a")["reason"] == "Pulling"
        described = daemon.vmid("describe", "vm-a").stdout
        assert re.search(rf'Ready +False +Pulling +Pulling image "{ref}": .* of 32Mi', described)
        assert re.search(
            rf"image {ref}: [0-9.]+Mi of 32Mi \([0-9]+%\) copied so far", daemon.log_text()
        )
        assert server.process is not None
        server.process.kill()  # kill -9, mid-copy
        server.process.wait()
        daemon.wait_for("ErrImagePull", lambda: reason(daemon, "vm-a") == "ErrImagePull")
        message = ready(daemon, "vm-a")["message"]
        assert message.startswith(f'Failed to pull image "{ref}": '), message
        # The registry gone mid-layer (or, if it went between two requests, refusing them).
        broken = ("ended in the middle of a layer", "connection reset", "connection refused")
        assert any(words in message for words in broken), message
        assert "internal error" not in message
        images = root / "var/lib/vmid/images"
        assert not list(images.rglob("disk.img"))  # nothing half-copied is stored
        assert not [p for p in images.iterdir() if p.name.startswith(".staging")]
        daemon.wait_for("ImagePullBackOff", lambda: reason(daemon, "vm-a") == "ImagePullBackOff")
        throttle(server, None)
        server.start()
        daemon.wait_phase("vm-a", "Running", timeout=60)
        assert content(root, digest).read_bytes() == disk
        assert ready(daemon, "vm-a").get("reason") != "Pulling"
        [pulled] = [m for r, m in events(daemon, "vm-a") if r == "Pulled"]
        kubelet = rf'Successfully pulled image "{re.escape(ref)}" in [0-9.]+s \([0-9.]+s including '
        assert re.match(
            kubelet + rf"waiting\). Image size: {len(disk)} bytes. Digest: {digest}$", pulled
        )


def test_ten_vmis_on_one_new_image_make_one_pull(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    push(server, tmp_path, "shared/disk:1", [[("disk/disk.img", raw_disk(16 << 20))]])
    with pulling_daemon(server, root) as daemon:
        for i in range(10):
            daemon.drop(f"vm-{i}.yaml", disk_vmi(f"vm-{i}", f"{HOST}/shared/disk:1"))
        for i in range(10):
            daemon.wait_phase(f"vm-{i}", "Running", timeout=60)
        assert daemon.log_text().count("pulling image") == 1
        assert len({image_id(daemon, f"vm-{i}") for i in range(10)}) == 1


def test_the_daemon_stops_at_once_while_a_registry_never_answers(
    server: Registry, root: Path
) -> None:
    silent = subprocess.Popen(
        [
            *server.prefix,
            sys.executable,
            "-c",
            "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 5001)); "
            "s.listen(); time.sleep(600)",
        ]
    )
    try:
        with pulling_daemon(server, root) as daemon:
            daemon.drop("a.yaml", disk_vmi("vm-a", "127.0.0.1:5001/silent/disk:1"))
            daemon.wait_for("the pull", lambda: "pulling image" in daemon.log_text())
            started = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            assert daemon.process.wait(timeout=30) == 0
            assert time.monotonic() - started < 10  # skopeo's own deadline is 120 s
    finally:
        silent.kill()
        silent.wait()


def test_an_imported_latest_image_runs_without_a_registry(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(raw_disk())
    with running_daemon(tmp_path / "root", fake_config()) as daemon:  # no registry, no network
        assert daemon.vmid("image", "import", SEED, str(image)).returncode == 0
        daemon.drop("a.yaml", disk_vmi("vm-a", SEED))  # :latest, so Always
        daemon.wait_phase("vm-a", "Running")
        assert image_id(daemon, "vm-a").startswith(f"docker.io/{SEED}@sha256:")
        assert "pulling image" not in daemon.log_text()


#: User `vmid`, password `secret` (bcrypt, as docker-registry's htpasswd wants it).
HTPASSWD = "vmid:$2b$12$eBnwdEny5unPtnGDJXhjJeebGIR6wkLJeVk64ITZmr9Qqsu6NaHLO"


def test_a_private_registry_needs_the_credentials_of_auth_json(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    server.stop()
    server.start(htpasswd=HTPASSWD)
    layout = containerdisk(tmp_path / "layout", [[("disk/disk.img", raw_disk())]])
    digest = server.push(layout, "private/disk:1", creds="vmid:secret")
    refused = vmid(server, root, "image", "pull", f"{HOST}/private/disk:1")
    assert refused.returncode == 1
    assert "authentication required" in refused.stderr or "unauthorized" in refused.stderr
    token = base64.b64encode(b"vmid:secret").decode()
    auth = {"auths": {HOST: {"auth": token}}}
    (root / "etc/vmid/auth.json").write_text(json.dumps(auth))  # images.authFile's default
    done = vmid(server, root, "image", "pull", f"{HOST}/private/disk:1")
    assert done.returncode == 0, done.stderr
    assert digest in done.stdout


MIRROR_CONF = f"""[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "{HOST}"
insecure = true
"""


def test_the_seed_manifest_runs_unchanged_from_a_mirror_of_docker_io(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    digest = push(server, tmp_path, f"{SEED}:latest", [[("disk/disk.img", raw_disk())]])
    (root / "etc/containers/registries.conf").write_text(MIRROR_CONF)
    with pulling_daemon(server, root) as daemon:
        seed = Path(__file__).parent.parent / "conf/instances/testvmi.yaml"
        daemon.drop("testvmi.yaml", seed.read_text())
        daemon.wait_phase("testvmi-nocloud", "Running")
        data = daemon.status("testvmi-nocloud")
        assert data is not None
        [volume] = [v for v in data["status"]["volumeStatus"] if v["name"] == "containerdisk"]
        assert volume["imageID"] == f"docker.io/{SEED}@{digest}"


@pytest.mark.parametrize(
    "digest", ["sha256:../../../../etc/shadow", "md5:d41d8cd98f00b204e9800998ecf8427e", 7]
)
def test_a_manifest_naming_a_blob_outside_the_copy_is_refused(
    tmp_path: Path, digest: object
) -> None:
    directory, _ = copied(tmp_path, [[("disk/disk.img", raw_disk())]])
    manifest_data = json.loads((directory / "manifest.json").read_text())
    manifest_data["layers"][0]["digest"] = digest
    raw = json.dumps(manifest_data).encode()
    (directory / "manifest.json").write_bytes(raw)
    with pytest.raises(PullError, match="not a sha256 digest"):
        extract_disk(directory, pulling.digest_of(raw), None, tmp_path / "disk", 1 << 20)


HALTED_VM = """apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm-halted}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        memory: {guest: 64Mi}
        devices:
          autoattachPodInterface: false
          disks: [{name: root}]
      volumes: [{name: root, containerDisk: {image: IMAGE}}]
"""


def test_image_gc_removes_unused_images_and_never_one_in_use(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    images = root / "var/lib/vmid/images"
    images.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", images], check=True)
    try:
        digests = {
            name: push(server, tmp_path, f"gc/{name}:1", [[("disk/disk.img", os.urandom(2 << 20))]])
            for name in ("running", "template", "old", "older")
        }
        # Collect all it can, every second: whatever is kept is kept for being in use.
        gc = "imageGC: {highThresholdPercent: 1, lowThresholdPercent: 1, minimumAgeSeconds: 0, "
        config = fake_config(f"images: {{pullBackoffSeconds: 10}}\n{gc}periodSeconds: 1}}\n")
        with running_daemon(root, config, prefix=server.prefix) as daemon:
            daemon.drop("vm.yaml", HALTED_VM.replace("IMAGE", f"{HOST}/gc/template:1"))
            daemon.drop("a.yaml", disk_vmi("vm-a", f"{HOST}/gc/running:1"))  # pulled meanwhile
            daemon.wait_phase("vm-a", "Running")
            for name in ("template", "older", "old"):
                done = vmid(server, root, "image", "pull", f"{HOST}/gc/{name}:1")
                assert done.returncode == 0, done.stderr
            lines = [
                f"removed image {digests[n]} ({HOST}/gc/{n}:1) to free" for n in ("older", "old")
            ]
            daemon.wait_for(
                "old, older collected", lambda: all(x in daemon.log_text() for x in lines)
            )
            listed = [row.split()[0] for row in daemon.vmid("image", "list").stdout.splitlines()]
            assert listed[1:] == [f"{HOST}/gc/running:1", f"{HOST}/gc/template:1"]
            assert content(root, digests["running"]).is_file()
            assert content(root, digests["template"]).is_file()
            assert not content(root, digests["old"]).parent.exists()
            assert "is over the high threshold" in daemon.log_text()
            assert daemon.phase("vm-a") == "Running"
            pruned = daemon.vmid("image", "prune")  # by hand: the same images are in use
            assert pruned.returncode == 0, pruned.stderr
            assert pruned.stdout == "freed 0\n"
            assert content(root, digests["template"]).is_file()
    finally:
        subprocess.run(["umount", "-l", images], check=True)


@pytest.mark.parametrize("form", ["posix", "gnu"])
def test_a_sparse_disk_member_is_put_together(tmp_path: Path, form: str) -> None:
    # tar --sparse stores only the data of a sparse file: its pieces are placed back.
    (tmp_path / "disk").mkdir()
    with (tmp_path / "disk/disk.img").open("wb") as disk:
        for offset, data in ((0, b"head"), (8 << 20, b"middle"), (16 << 20, b"tail")):
            disk.seek(offset)
            disk.write(data)
    tar = ["tar", "--sparse", f"--format={form}", "-C", str(tmp_path), "-cf", "-", "disk/disk.img"]
    layer = subprocess.run(tar, capture_output=True, check=True).stdout
    directory = tmp_path / "copied"
    directory.mkdir()
    (directory / pulling.digest_of(layer)[7:]).write_bytes(layer)
    entry = {"digest": pulling.digest_of(layer), "size": len(layer)}
    raw = json.dumps({"schemaVersion": 2, "layers": [entry]}).encode()
    (directory / "manifest.json").write_bytes(raw)
    extract_disk(directory, pulling.digest_of(raw), None, tmp_path / "out", 1 << 30)
    assert (tmp_path / "out").read_bytes() == (tmp_path / "disk/disk.img").read_bytes()


MOVED_DURING_COPY = """
import sys, subprocess, time
from pathlib import Path
import trio
from vmid.config import Images, Paths
from vmid.host import registry
from vmid.host.storage import ImageStore

root, ref, second = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
paths = Paths(root)
inspect = registry.Skopeo.raw_manifest

async def moved_first(self, name, home):
    # The copy by name has the first image whole: the tag moves before skopeo resolves it.
    if name == ref:
        while not (home / "image/manifest.json").exists():
            await trio.sleep(0.01)
        push = ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{second}", f"docker://{ref}"]
        subprocess.run(push, check=True)
    return await inspect(self, name, home)

registry.Skopeo.raw_manifest = moved_first
store = ImageStore(paths.images, "qemu-img")
pull = registry.pull(store, registry.skopeo_for(paths, Images()), ref, max_size=1 << 30)
image = trio.run(lambda: pull)
print(image.digest, image.path.read_bytes()[:6].decode())
"""


def test_a_tag_moved_while_copied_by_name_is_copied_again_by_digest(
    server: Registry, root: Path, tmp_path: Path
) -> None:
    push(server, tmp_path, "moving/disk:1", [[("disk/disk.img", raw_disk(1 << 20, b"first"))]])
    second = containerdisk(tmp_path / "second", [[("disk/disk.img", raw_disk(1 << 20, b"second"))]])
    ref = f"{HOST}/moving/disk:1"
    done = server.run(sys.executable, "-c", MOVED_DURING_COPY, str(root), ref, str(second))
    digest, start = done.stdout.split()
    assert start == "second"  # what the tag names once resolved, not what was copied first
    inspected = server.run("skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    assert digest == pulling.digest_of(inspected.stdout.encode())


class _ManifestOnly:
    """skopeo as `pull` sees it, for a name already stored: one manifest, no copy needed."""

    async def raw_manifest(self, ref: str, staging: Path) -> bytes:
        return b'{"schemaVersion": 2, "layers": []}'

    async def copy(self, source: str, target: Path, bars: bool) -> None:
        raise AssertionError("nothing to copy: the digest is stored")


async def test_a_store_that_cannot_tag_is_an_error_of_its_own_never_an_exception_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a full disk while tagging a digest already stored came out of the
    pull's nursery as an ExceptionGroup, which a DataVolume import let end the daemon."""
    store = ImageStore(tmp_path / "images", "qemu-img")

    async def full(ref: str, digest: str, disk_path: str | None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "tag_stored", full)
    monkeypatch.setattr(store, "named", lambda ref: True)
    with pytest.raises(OSError, match="No space left on device"):
        await pulling.pull(store, _ManifestOnly(), "r.example/a:1", max_size=1 << 20)  # type: ignore[arg-type]
