"""`vmid image`: the containerDisk image store (import a file, pull from a registry, list the
images and what uses them, remove one)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path

from vmid.api.quantity import rounded as _size
from vmid.cli import common, show
from vmid.cli.common import EXIT_ERROR, EXIT_OK, Commands
from vmid.errors import ConfigError, RequestError, StateUnreadable
from vmid.host import pidlock
from vmid.paths import Paths
from vmid.runtime import status


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    # The global flags here too: `vmid image --root DIR list`, as after `list` (-n means nothing).
    flags = common.flags_for(flags, "root", "config")
    image = commands.add_parser(
        "image",
        parents=[flags],
        help="the containerDisk image store",
        description="The local store of containerDisk images (raw files by digest).",
        epilog="examples:\n"
        "  vmid image pull quay.io/containerdisks/fedora:40\n"
        "  vmid image import my/disk:1 ./disk.qcow2   # stored raw\n"
        "  vmid image list                            # REF DIGEST SIZE IN USE AGE\n"
        "  vmid image rm my/disk:1                    # refused while a VMI uses it\n"
        "  vmid image prune                           # every image no VMI or VM uses",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    image_import = image_commands.add_parser(
        "import", parents=[flags], help="add a raw or qcow2 file as image REF"
    )
    image_import.add_argument("ref", metavar="REF", help="the image's name, as manifests say it")
    image_import.add_argument("file", metavar="FILE", type=Path, help="a raw or qcow2 file")
    common.explain(
        image_import,
        "Put FILE (raw or qcow2) in the image store as REF, stored raw: a manifest's "
        "containerDisk naming REF then uses it, no registry asked.",
        "vmid image import my/disk:1 ./disk.qcow2\nvmid image import my/disk:2 ./disk.raw",
    )
    image_import.set_defaults(run=_image_import)
    image_pull = image_commands.add_parser(
        "pull", parents=[flags], help="pull image REF from its registry with skopeo"
    )
    image_pull.add_argument("ref", metavar="REF", help="the image, as manifests say it")
    image_pull.add_argument(
        "--path", help="the disk file in the image (containerDisk.path); default: /disk/'s one"
    )
    common.explain(
        image_pull,
        "Pull containerDisk REF from its registry with skopeo (vmid.yaml's images: auth file, "
        "policy, largest disk) and store its disk raw, as the daemon pulls it for a VMI.",
        "vmid image pull quay.io/containerdisks/fedora:40\n"
        "vmid image pull registry.example/disk:1 --path /disk/root.qcow2",
    )
    image_pull.set_defaults(run=_image_pull)
    image_list = image_commands.add_parser("list", parents=[flags], help="list stored images")
    common.explain(
        image_list,
        "List the stored images: REF, DIGEST, SIZE (the disk's, a quantity), IN USE (the VMIs "
        "using it) and AGE.",
        "vmid image list",
    )
    image_list.set_defaults(run=_image_list)
    image_rm = image_commands.add_parser(
        "rm", parents=[flags], help="remove image REF (refused while a VMI uses it)"
    )
    image_rm.add_argument("ref", metavar="REF", help="the image to remove")
    common.explain(
        image_rm,
        "Remove image REF from the store; refused while a VMI uses it.",
        "vmid image rm my/disk:1",
    )
    image_rm.set_defaults(run=_image_rm)
    image_prune = image_commands.add_parser(
        "prune",
        parents=[flags],
        help="remove every image no VMI or VirtualMachine uses (imported ones are kept)",
    )
    common.explain(
        image_prune,
        "Remove every image no VMI (not ended) and no VirtualMachine's template uses, whatever "
        "the disk usage (as crictl rmi --prune); imported images are kept (vmid image rm "
        "removes them).",
        "vmid image prune",
    )
    image_prune.set_defaults(run=_image_prune)


def _image_import(args: argparse.Namespace) -> int:
    import trio

    from vmid.host.storage import ImageStore

    config, paths = common.setup(args)
    store = ImageStore(paths.images, config.qemuImg)
    stored = trio.run(store.add, args.ref, args.file)
    print(f"imported {stored.ref} ({stored.digest}, {_size(stored.virtualSize)})")
    return EXIT_OK


def _image_pull(args: argparse.Namespace) -> int:
    import trio

    from vmid.api import imageref
    from vmid.host import registry
    from vmid.host.storage import ImageStore

    config, paths = common.setup(args)
    try:
        ref = imageref.normalize(args.ref)
    except imageref.ImageRefError as exc:
        raise ConfigError(str(exc)) from exc
    pull = functools.partial(
        registry.pull,
        ImageStore(paths.images, config.qemuImg),
        registry.skopeo_for(paths, config.images),
        ref,
        args.path,
        max_size=config.images.maxDiskSize.value(),
        progress=sys.stdout.isatty(),  # skopeo's own progress bars, on the terminal
    )
    stored = trio.run(pull)
    print(f"pulled {stored.ref} ({stored.digest}, {_size(stored.virtualSize)})")
    return EXIT_OK


def _image_list(args: argparse.Namespace) -> int:
    from vmid.host.storage import ImageStore

    config, paths = common.setup(args)
    images = ImageStore(paths.images, config.qemuImg).list()
    users = _image_users(paths)
    rows = [["REF", "DIGEST", "SIZE", "IN USE", "AGE"]]
    for image in images:
        digest = (image.digest or "-").removeprefix("sha256:")[:12]
        using = ",".join(_using(users, image.ref, image.digest)) or "<none>"
        rows.append([image.ref, digest, _size(image.virtualSize), using, show.age(image.created)])
    print(show.aligned(rows))
    return EXIT_OK


def _image_rm(args: argparse.Namespace) -> int:
    from vmid.api import imageref
    from vmid.errors import StorageError
    from vmid.host.storage import ImageStore

    config, paths = common.setup(args)
    store = ImageStore(paths.images, config.qemuImg)
    try:
        image = store.lookup(imageref.normalize(args.ref))
    except (imageref.ImageRefError, StorageError) as exc:
        print(f"vmid: {exc}", file=sys.stderr)
        return EXIT_ERROR
    users = _image_users(paths)
    using = _using(users, image.ref, image.digest)
    if using:
        print(
            f"vmid: image {image.ref} is in use by {', '.join(using)}: remove those VMIs first",
            file=sys.stderr,
        )
        return EXIT_ERROR
    store.remove(image.ref, keep=frozenset(k for k in users if k.startswith("sha256:")))
    print(f"removed {image.ref}")
    return EXIT_OK


def _image_prune(args: argparse.Namespace) -> int:
    from vmid.host import imagegc
    from vmid.host.storage import ImageStore

    config, paths = common.setup(args)
    if not pidlock.running(paths.daemon_pid):
        # Only a running daemon's statuses say what every manifest in the spool uses (after a
        # reboot there are none): pruning without it would remove images VMIs need.
        raise RequestError(
            "vmid is not running: which images its VMIs use is not known, nothing was removed "
            "(start vmid, or remove an image by name: vmid image rm REF)"
        )
    store = ImageStore(paths.images, config.qemuImg)
    removed = imagegc.prune(store, lambda: set(_image_users(paths)) | _templates(paths))
    for content in removed:
        names = ", ".join(content.refs) or "<none>"
        print(f"removed {names} ({content.digest or '-'}, {_size(content.size)})")
    print(f"freed {_size(sum(c.size for c in removed))}")
    return EXIT_OK


def _templates(paths: Paths) -> set[str]:
    """The images every VirtualMachine's template names (a VM started later needs them)."""
    from vmid.api import imageref
    from vmid.runtime import vmstate

    found = set()
    for vm in vmstate.read_vms(paths):
        spec = vm.get("spec", {}).get("template", {}).get("spec", {})
        for volume in spec.get("volumes", []):
            with contextlib.suppress(imageref.ImageRefError, KeyError, TypeError):
                found.add(imageref.normalize(volume["containerDisk"]["image"]))
    return found


def _image_users(paths: Paths) -> dict[str, set[str]]:
    """VMIs not ended, by the digests their volumeStatus names and the images their spec names."""
    from vmid.api import imageref

    try:
        objects = status.read_objects(paths)
    except StateUnreadable:
        return {}
    users: dict[str, set[str]] = {}
    for obj in objects:
        if obj.status.phase is not None and obj.status.phase.final:
            continue
        names = [v.imageID.partition("@")[2] for v in obj.status.volumeStatus]
        for volume in obj.data.get("spec", {}).get("volumes", []):
            with contextlib.suppress(imageref.ImageRefError, KeyError, TypeError):
                names.append(imageref.normalize(volume["containerDisk"]["image"]))
        for name in filter(None, names):
            users.setdefault(name, set()).add(obj.key)
    return users


def _using(users: dict[str, set[str]], ref: str, digest: str | None) -> list[str]:
    return sorted(users.get(ref, set()) | users.get(digest or "", set()))
