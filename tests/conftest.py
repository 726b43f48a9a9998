"""Shared fixtures: a valid base manifest to mutate, and loading helpers."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from vmid.api.load import load_text
from vmid.errors import Problem

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
EXAMPLES = SHARED / "kubevirt-examples"

BASE: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "testvmi"},
    "spec": {
        "domain": {
            "resources": {"requests": {"memory": "128Mi"}},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
        },
        "volumes": [{"name": "root", "containerDisk": {"image": "kubevirt/cirros"}}],
    },
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Tests press Ctrl+C on the commands they start (SIGINT). Run in the background (`make
    test &`, a CI job), the shell hands this session SIGINT ignored, every child inherits that,
    and a Python started so never turns SIGINT into KeyboardInterrupt: restore the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    """Give this session a temporary root of its own that others may pass through (0711).

    Each VM's QEMU runs as a uid of its own and must pass through the tests' directories, but
    pytest makes its shared /tmp/pytest-of-USER 0700 again at every session start: that would
    cut off the QEMUs of every other session running meanwhile.
    """
    if "PYTEST_DEBUG_TEMPROOT" in os.environ or config.option.basetemp is not None:
        return
    root = Path(tempfile.mkdtemp(prefix="vmid-"))
    root.chmod(0o711)
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)
    config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))


def dump(data: Any) -> str:
    """YAML text for a manifest, the way a person would write it (block style)."""
    import io

    yaml = YAML()
    stream = io.StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()


def problems_of(data: Any) -> list[Problem]:
    """The problems vmid reports for a manifest given as plain data."""
    _, problems = load_text("test.yaml", dump(data).encode())
    return problems


@pytest.fixture
def base() -> dict[str, Any]:
    """A fresh deep copy of a minimal valid VMI to modify."""
    return copy.deepcopy(BASE)
