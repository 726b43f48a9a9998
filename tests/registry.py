"""A real OCI registry (Debian's `docker-registry`) on loopback in a network namespace of its
own, and KubeVirt containerDisk images built as OCI layouts and pushed there with skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PORT = 5000
HOST = f"127.0.0.1:{PORT}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
#: registries.conf letting skopeo reach the test registry over plain HTTP.
INSECURE_CONF = f'[[registry]]\nlocation = "{HOST}"\ninsecure = true\n'

#: A tar member: its name and its bytes, or ("symlink"|"hardlink", target).
Member = tuple[str, bytes | tuple[str, str]]
#: An image's layers, each a list of members.
Layers = Sequence[Sequence[Member]]


class Registry:
    """A registry process in a network namespace; `prefix` runs a command in that namespace."""

    def __init__(self, directory: Path, holder: subprocess.Popen[bytes] | None) -> None:
        """`holder`: a process in the registry's network namespace (None: this one's)."""
        self.directory = directory
        self._holder = holder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def prefix(self) -> tuple[str, ...]:
        if self._holder is None:
            return ()
        return ("nsenter", f"--net=/proc/{self._holder.pid}/ns/net", "--")

    def start(self, htpasswd: str | None = None) -> None:
        """Start (or restart) the registry; return once it answers. `htpasswd`: a line
        `user:bcrypt-hash` the registry then asks for (basic auth)."""
        config = self.directory / "config.yml"
        auth = ""
        if htpasswd is not None:
            (self.directory / "htpasswd").write_text(htpasswd + "\n")
            auth = f"auth: {{htpasswd: {{realm: vmid, path: {self.directory / 'htpasswd'}}}}}\n"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.directory / 'data'}}}, "
            "delete: {enabled: true}}\n"
            f"http: {{addr: '{HOST}'}}\n" + auth
        )
        with (self.directory / "registry.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, "docker-registry", "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60  # a machine under load takes its time
        while self.run("curl", "-s", f"http://{HOST}/v2/", check=False).returncode != 0:
            assert time.monotonic() < deadline, "the registry did not start"
            assert self.process.poll() is None, "the registry ended"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, check=check, timeout=120
        )

    def push(self, layout: Path, ref: str, creds: str | None = None) -> str:
        """Push an OCI layout (all its images) to `HOST/ref`; the digest the tag then names."""
        index = json.loads((layout / "index.json").read_text())
        many = ["--all"] if index["manifests"][0]["mediaType"] == OCI_INDEX else []
        target = f"docker://{HOST}/{ref}"
        auth = [f"--dest-creds={creds}"] if creds else []
        copy = ["skopeo", "copy", "-q", *many, *auth, "--dest-tls-verify=false"]
        self.run(*copy, f"oci:{layout}", target)
        auth = [f"--creds={creds}"] if creds else []
        out = self.run("skopeo", "inspect", *auth, "--tls-verify=false", "--raw", target).stdout
        return "sha256:" + hashlib.sha256(out.encode()).hexdigest()

    def blob_path(self, digest: str) -> Path:
        hexa = digest.split(":", 1)[1]
        return self.directory / "data/docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


@contextmanager
def registry(directory: Path) -> Iterator[Registry]:
    """A running registry with its data in `directory`, in a network namespace of its own."""
    directory.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep 3600"],
        stdin=subprocess.DEVNULL,
    )
    server = Registry(directory, holder)
    try:
        deadline = time.monotonic() + 10
        while server.run("ip", "-o", "link", "show", "up", "lo", check=False).stdout == "":
            assert time.monotonic() < deadline, "no loopback in the namespace"
            time.sleep(0.05)
        server.start()
        yield server
    finally:
        server.stop()
        holder.kill()
        holder.wait()


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs/sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def layer_bytes(members: Sequence[Member]) -> bytes:
    """An uncompressed tar of `members` (directories for their parents)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o444
            if isinstance(content, tuple):
                kind, target = content
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = target
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if how == "zstd":
        return subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    return data


def containerdisk(layout: Path, layers: Layers, how: str = "gzip") -> Path:
    """Write an OCI layout holding one image whose layers hold `layers` (as KubeVirt's
    containerDisks: `[("disk/disk.img", bytes)]`), compressed `how`."""
    return multiarch(layout, {"": layers}, how)


def multiarch(layout: Path, images: Mapping[str, Layers], how: str = "gzip") -> Path:
    """An OCI layout whose index holds an image per architecture (`""`: one image, no
    platform in the index)."""
    shutil.rmtree(layout, ignore_errors=True)
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for arch, layers in images.items():
        entry = _image(layout, layers, how, arch or "amd64")
        if arch:
            entry["platform"] = {"architecture": arch, "os": "linux"}
        entries.append(entry)
    if len(entries) > 1:  # skopeo's oci: transport takes one image: here, an index of several
        inner = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        entries = [{"mediaType": OCI_INDEX, **_blob(layout, json.dumps(inner).encode())}]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def _image(layout: Path, layers: Layers, how: str, arch: str) -> dict[str, Any]:
    blobs = []
    diff_ids = []
    for members in layers:
        raw = layer_bytes(members)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        suffix = {"gzip": "+gzip", "zstd": "+zstd"}.get(how, "")
        blobs.append({"mediaType": OCI_LAYER + suffix, **_blob(layout, compress(raw, how))})
    config = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **_blob(layout, json.dumps(config).encode())},
        "layers": blobs,
    }
    return {"mediaType": OCI_MANIFEST, **_blob(layout, json.dumps(manifest).encode())}


def raw_disk(size: int = 1 << 20, fill: bytes = b"vmid") -> bytes:
    """A raw disk of `size` bytes starting with `fill` (to tell images apart)."""
    return fill + b"\0" * (size - len(fill))


def demo(argv: Sequence[str]) -> None:
    """`python -m tests.registry ROOT IMAGE FILE -- DAEMON...`, in a new network namespace:
    serve FILE as the containerDisk IMAGE (pushed to a registry on loopback, under ROOT/registry),
    then become DAEMON (`make run`: its registries.conf mirrors docker.io to that registry)."""
    root, image, disk = Path(argv[0]), argv[1], Path(argv[2])
    daemon = list(argv[argv.index("--") + 1 :])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    directory = root / "registry"
    directory.mkdir(parents=True, exist_ok=True)
    server = Registry(directory, None)
    server.start()  # stops with Ctrl+C, as the daemon: one process group
    layout = containerdisk(directory / "layout", [[("disk/disk.qcow2", disk.read_bytes())]])
    digest = server.push(layout, image.removeprefix("docker.io/"))
    print(f"registry on {HOST}: {image} is {digest}", flush=True)
    os.execvp(daemon[0], daemon)


if __name__ == "__main__":
    demo(sys.argv[1:])
