"""`vmid image`: the local containerDisk image store (import a file as an image, list them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmid.cli import common, show
from vmid.cli.common import EXIT_OK, Commands


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    image = commands.add_parser("image", help="the local containerDisk image store")
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    image_import = image_commands.add_parser(
        "import", parents=[flags], help="add a raw or qcow2 file as image REF"
    )
    image_import.add_argument("ref", metavar="REF")
    image_import.add_argument("file", metavar="FILE", type=Path)
    image_import.set_defaults(run=_image_import)
    image_list = image_commands.add_parser("list", parents=[flags], help="list stored images")
    image_list.set_defaults(run=_image_list)


def _image_import(args: argparse.Namespace) -> int:
    import trio

    from vmid.host.storage import ImageStore

    config, paths = common.setup(args)
    store = ImageStore(paths.images, config.qemuImg)
    stored = trio.run(store.add, args.ref, args.file)
    print(f"imported {stored.ref} ({stored.format}, {stored.virtualSize} bytes)")
    return EXIT_OK


def _image_list(args: argparse.Namespace) -> int:
    from vmid.host.storage import ImageStore

    config, paths = common.setup(args)
    images = ImageStore(paths.images, config.qemuImg).list()
    rows = [["REF", "FORMAT", "SIZE"]] + [[i.ref, i.format, str(i.virtualSize)] for i in images]
    print(show.aligned(rows))
    return EXIT_OK
